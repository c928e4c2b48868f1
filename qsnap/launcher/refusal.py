"""The one error the launcher gives for what it cannot start: the element, why, and that the
definition keeps it (nothing is dropped from a guest silently)."""

from __future__ import annotations

from lxml import etree

from qsnap.errors import NotSupportedError


def refuse(what: str, why: str) -> NotSupportedError:
    return NotSupportedError(f"{what}: {why}; qsnap keeps it in the definition but cannot start "
                             "it (docs/domain-xml.md lists what starts)")


def refuse_unknown_parts(node: etree._Element, what: str, children: set[str],
                         attributes: frozenset[str] | set[str] = frozenset()) -> None:
    """Refuse, by name, a child element or attribute of a device that the launcher would not
    carry into QEMU (``<alias>`` is libvirt's own bookkeeping, never refused)."""
    for child in node:
        if isinstance(child.tag, str) and child.tag not in children | {"alias"}:
            raise refuse(f"{what}: <{child.tag}>", "not supported by qsnap's launcher")
    for key in node.attrib:
        attribute = key.decode() if isinstance(key, bytes) else str(key)
        if attribute not in attributes | {"type"}:
            raise refuse(f"{what}: attribute {attribute}=", "not supported by qsnap's "
                         "launcher")
