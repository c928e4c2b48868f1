"""Reading XML safely and writing it the way libvirt writes it.

libvirt formats its XML by hand: two-space indentation, attributes in single quotes, ``<>&'"``
escaped everywhere, empty elements closed as ``<x/>``. Writing the same text (not just the
same tree) means qsnap's snapshot files diff cleanly against libvirt's and its test data
compare exactly.
lxml's own serializer uses double quotes, so the layout is done here; lxml still does the parsing.
"""

from __future__ import annotations

from collections.abc import Iterable

from lxml import etree

from qsnap.errors import XMLError

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;"}
_ATTR_ESCAPES = {**_ESCAPES, "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}

# No network access, no entity expansion, no DTDs: the XML comes from users and files on disk.
_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True,
    remove_pis=True, huge_tree=False,
)


_TEXT_TABLE = str.maketrans(_ESCAPES)
_ATTR_TABLE = str.maketrans(_ATTR_ESCAPES)


def escape_text(value: str) -> str:
    """Escape character data the way libvirt's virBufferEscapeString does."""
    return value.translate(_TEXT_TABLE)


def escape_attr(value: str) -> str:
    """Escape an attribute value for single quotes; newlines and tabs survive a round trip."""
    return value.translate(_ATTR_TABLE)


def parse_document(text: str | bytes, what: str) -> etree._Element:
    """Parse *text* and return its root element, or raise :class:`XMLError` naming *what*."""
    if isinstance(text, str):
        text = text.encode("utf-8")
    if not text.strip():
        raise XMLError(f"{what} is empty")
    try:
        root = etree.fromstring(text, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise XMLError(f"{what} is not well-formed XML: {exc}") from None
    if root is None:
        raise XMLError(f"{what} has no root element")
    for entity in root.iter(etree.Entity):
        # Left unexpanded, it would vanish from the text silently: the input is then not
        # what its author meant, so it is refused (libxml2 expands none for libvirt either).
        raise XMLError(f"{what} uses the entity '{entity.text}' (line {entity.sourceline}); "
                       "qsnap reads no DTD and expands no entities but XML's own "
                       "(&amp; &lt; &gt; &apos; &quot; and character references)")
    return root


def local_name(element: etree._Element) -> str:
    """The element's tag without a namespace."""
    return etree.QName(element).localname


def has_text(element: etree._Element) -> bool:
    return bool(element.text and element.text.strip())


def _needs_lxml(element: etree._Element, nsmap: dict[str | None, str],
                parent_nsmap: dict[str | None, str]) -> bool:
    """True for subtrees that hand layout cannot reproduce: namespaces or mixed content.
    *nsmap* is the element's own (lxml builds a new dict each time it is asked)."""
    if isinstance(element.tag, str) and element.tag.startswith("{"):
        return True
    if nsmap != parent_nsmap:
        return True
    return len(element) > 0 and has_text(element)


def _element_lines(element: etree._Element, level: int,
                   parent_nsmap: dict[str | None, str]) -> Iterable[str]:
    pad = "  " * level
    if not isinstance(element.tag, str):  # comments and processing instructions are dropped
        return
    nsmap = element.nsmap
    if _needs_lxml(element, nsmap, parent_nsmap):
        # libvirt also hands foreign-namespace metadata to libxml2, which writes double quotes.
        clone = etree.fromstring(etree.tostring(element, with_tail=False))
        for node in clone.iter():
            if node is not clone and node.tail is not None and not node.tail.strip():
                node.tail = None
            if len(node) and node.text is not None and not node.text.strip():
                node.text = None
        yield pad + etree.tostring(clone, encoding="unicode", with_tail=False)
        return
    attrs = "".join(f" {k!s}='{escape_attr(str(v))}'" for k, v in element.attrib.items())
    tag = element.tag
    children = [c for c in element if isinstance(c.tag, str)]
    if children:
        yield f"{pad}<{tag}{attrs}>"
        for child in children:
            yield from _element_lines(child, level + 1, nsmap)
        yield f"{pad}</{tag}>"
    elif element.text:
        yield f"{pad}<{tag}{attrs}>{escape_text(element.text)}</{tag}>"
    else:
        yield f"{pad}<{tag}{attrs}/>"


def format_element(element: etree._Element, level: int = 0) -> str:
    """Format *element* and its subtree libvirt-style, *level* steps in, ending in a newline."""
    parent = element.getparent()
    parent_nsmap = parent.nsmap if parent is not None else {}
    return "".join(line + "\n" for line in _element_lines(element, level, parent_nsmap))


def strip_blank_text(element: etree._Element) -> etree._Element:
    """Drop whitespace-only text between elements (in place), so trees compare by content."""
    for node in element.iter():
        if len(node) and node.text is not None and not node.text.strip():
            node.text = None
        if node.tail is not None and not node.tail.strip():
            node.tail = None
    return element


def canonical(element: etree._Element) -> bytes:
    """C14N of a copy without blank text: equal for trees that differ only in layout and quoting."""
    clone = strip_blank_text(etree.fromstring(etree.tostring(element, with_tail=False)))
    return etree.tostring(clone, method="c14n")
