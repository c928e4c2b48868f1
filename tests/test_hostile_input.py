"""Hostile input, generated: the snapshot XML parser and the CLI's arguments.

Property for the parser: any text either parses into a definition that formats and parses back
to the same text, or raises a :class:`~qsnap.errors.QsnapError` with a message; never another
exception. The XML is drawn both as free text and from a grammar of libvirt's own elements and
attributes with hostile values, so most examples get deep into the parser.

Property for the CLI: any argument list exits 0 or 1 with a one-line ``error: …`` and no
traceback, and when it fails the state directory is byte for byte what it was. Commands that
start QEMU are left out of the vocabulary: their hostile inputs are the QEMU tests' business.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from helpers import tree_picture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qsnap.cli import main
from qsnap.errors import QsnapError, XMLError
from qsnap.model.snapshot import format_snapshot, parse_snapshot

HOSTILE_TEXT = st.sampled_from([
    "", " ", "a", "..", "../../etc/passwd", "/", "/dev/null", "x" * 300, "\u00e9\u4e2d", "-1",
    "0", "99999999999999999999", "yes", "internal", "external", "no", "manual", "running",
    "disk-snapshot", "file", "block", "network", "qcow2", "raw", "&amp;", "<", "]]>", "\t",
    "/tmp/qsnap-hostile.qcow2", "vda", "hda", "nbd", "gluster", "1700000000",
]) | st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)  # XML-legal

TAGS = ["domainsnapshot", "name", "description", "state", "creationTime", "parent", "memory",
        "disks", "disk", "source", "driver", "seclabel", "host", "domain", "uuid", "active",
        "cookie", "inactiveDomain", "revertDisks", "metadata_cache", "max_size", "bogus"]
ATTRS = ["snapshot", "file", "type", "name", "dev", "protocol", "port", "transport", "socket",
         "model", "relabel", "labelskip", "unit", "bogus"]


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;")


@st.composite
def elements(draw: st.DrawFn, depth: int = 0) -> str:
    tag = draw(st.sampled_from(TAGS))
    attrs = draw(st.dictionaries(st.sampled_from(ATTRS), HOSTILE_TEXT, max_size=3))
    attr_text = "".join(f" {k}='{_escape(v)}'" for k, v in attrs.items())
    if depth >= 3 or draw(st.booleans()):
        body = _escape(draw(HOSTILE_TEXT))
    else:
        body = "".join(draw(st.lists(elements(depth + 1), max_size=4)))
    return f"<{tag}{attr_text}>{body}</{tag}>"


@st.composite
def snapshot_documents(draw: st.DrawFn) -> str:
    children = "".join(draw(st.lists(elements(1), max_size=6)))
    return f"<domainsnapshot>{children}</domainsnapshot>"


def _parses_or_explains(text: str, **flags: bool) -> None:
    try:
        snap = parse_snapshot(text, **flags)
    except QsnapError as exc:
        assert str(exc).strip(), "an error without a message"
        return
    again = format_snapshot(snap)
    assert format_snapshot(parse_snapshot(again, **flags)) == again


@settings(max_examples=400, deadline=None)
@given(snapshot_documents(), st.booleans(), st.booleans())
def test_structured_snapshot_xml(text: str, redefine: bool, validate: bool) -> None:
    _parses_or_explains(text, redefine=redefine, validate=validate)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200).map(
    lambda b: b.decode("latin-1")))
def test_free_text_as_snapshot_xml(text: str) -> None:
    _parses_or_explains(text)
    _parses_or_explains(text, redefine=True)


DOMAIN = """<domain type='qemu'><name>dom</name><uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>
<memory>65536</memory><os><type>hvm</type></os><devices><disk type='file' device='disk'>
<driver name='qemu' type='qcow2'/><source file='/nonexistent/qsnap-hostile.qcow2'/>
<target dev='vda' bus='virtio'/></disk></devices></domain>"""

COMMANDS = ["snapshot-list", "snapshot-info", "snapshot-dumpxml", "snapshot-current",
            "snapshot-parent", "snapshot-delete", "snapshot-create", "snapshot-create-as",
            "snapshot-revert", "dumpxml", "domstate", "undefine", "list", "recover", "define",
            "save-image-dumpxml", "bogus"]
WORDS = ["dom", "nope", "s1", "s2", "--current", "--name", "--tree", "--parent", "--roots",
         "--leaves", "--no-leaves", "--metadata", "--children", "--children-only",
         "--redefine", "--disk-only", "--print-xml", "--validate", "--json", "--from",
         "--descendants", "--topological", "--internal", "--external", "--security-info",
         "--memspec", "--diskspec", "file=/tmp/x,snapshot=external", "vda,snapshot=no", "-q",
         "--snapshots-metadata", "--live", "--live-strategy", "background", "..", "a/b", "",
         "/nonexistent.xml", "-", "--", "--help-me"]


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(COMMANDS), st.lists(st.sampled_from(WORDS), max_size=6))
def test_cli_arguments(tmp_path: Path, command: str, words: list[str]) -> None:
    state = tmp_path / "state"
    if not (state / "domains" / "dom" / "domain.xml").exists():  # a success may remove it
        (tmp_path / "dom.xml").write_text(DOMAIN)
        assert main(["--state-dir", str(state), "define", str(tmp_path / "dom.xml")]) == 0
        for leftover in (state / "domains" / "dom" / "snapshots").glob("*.xml"):
            leftover.unlink()
        for name, parent in (("s1", None), ("s2", "s1")):
            xml = (f"<domainsnapshot><name>{name}</name><state>shutoff</state>"
                   f"{f'<parent><name>{parent}</name></parent>' if parent else ''}"
                   "<creationTime>1700000000</creationTime></domainsnapshot>")
            (tmp_path / f"{name}.xml").write_text(xml)
            assert main(["--state-dir", str(state), "snapshot-create", "dom",
                         str(tmp_path / f"{name}.xml"), "--redefine", "--current"]) == 0
    before = tree_picture(state)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["--state-dir", str(state), command, *words])
        except SystemExit as exc:  # argparse's --help
            code = exc.code if isinstance(exc.code, int) else 1
    assert code in (0, 1), (command, words, code, err.getvalue())
    assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue(), \
        (command, words, err.getvalue())
    if code == 1:
        assert err.getvalue().startswith("error: "), (command, words, err.getvalue())
        assert tree_picture(state) == before, (command, words, err.getvalue())


def test_an_external_entity_is_refused_not_dropped(tmp_path: Path) -> None:
    """An entity qsnap does not expand would vanish from the name or description without a
    word; the input is then not what its author meant, so it is an error naming it."""
    secret = tmp_path / "secret"
    secret.write_text("hunter2")
    for body in ("<name>a&xxe;b</name>", "<name>s</name><description>&xxe;</description>"):
        text = (f'<!DOCTYPE domainsnapshot [<!ENTITY xxe SYSTEM "file://{secret}">]>'
                f"<domainsnapshot>{body}</domainsnapshot>")
        with pytest.raises(XMLError, match="entity '&xxe;'"):
            parse_snapshot(text)
    internal = ('<!DOCTYPE d [<!ENTITY who "me">]><domainsnapshot><name>&who;</name>'
                "</domainsnapshot>")
    with pytest.raises(XMLError, match="entity '&who;'"):
        parse_snapshot(internal)
    plain = parse_snapshot("<domainsnapshot><name>a&amp;b&#65;</name></domainsnapshot>")
    assert plain.name == "a&bA"
