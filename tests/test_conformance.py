"""libvirt's own snapshot XML test cases, run through qsnap's parser and formatter.

Each manifest row is parsed with the flags libvirt's test uses, formatted, and compared with
libvirt's expected output: byte for byte, and as trees. Every formatted document must validate
against libvirt's RelaxNG schema, and ``--validate`` must agree with that schema on every case.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import Case, conformance_dir, manifest_cases
from lxml import etree

from qsnap.errors import XMLError
from qsnap.model.snapshot import format_snapshot, parse_snapshot
from qsnap.model.xmltext import canonical, parse_document


def _cases() -> list[Case]:
    try:
        return manifest_cases(conformance_dir())
    except pytest.skip.Exception:
        return []


CASES = _cases()
ACCEPTED = [c for c in CASES if "reject" not in c.flags]
REJECTED = [c for c in CASES if "reject" in c.flags]


@pytest.fixture(scope="module")
def rng() -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(conformance_dir() / "schemas" / "domainsnapshot.rng")))


def _format_case(base: Path, case: Case, validate: bool) -> str:
    snap = parse_snapshot((base / case.input).read_bytes(), redefine="redefine" in case.flags,
                          internal="internal" in case.flags, validate=validate)
    if "running" in case.flags:
        snap.state = "running"
    if case.creation_time:
        snap.creation_time = case.creation_time
        if snap.name is None:
            snap.name = str(case.creation_time)
    return format_snapshot(snap, uuid=case.uuid,
                           active=snap.active if "internal" in case.flags else None)


def test_manifest_has_every_case(conformance: Path) -> None:
    names = {c.input for c in CASES}
    inputs = {f"qemudomainsnapshotxml2xmlin/{p.name}"
              for p in (conformance / "qemudomainsnapshotxml2xmlin").glob("*.xml")}
    assert inputs <= names, f"inputs without a manifest row: {inputs - names}"
    assert len(ACCEPTED) == 19 and len(REJECTED) == 2


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda c: f"{c.case}:{c.input.split('/')[0][-3:]}")
@pytest.mark.parametrize("validate", [False, True], ids=["parse", "validate"])
def test_formats_like_libvirt(conformance: Path, rng: etree.RelaxNG, case: Case,
                              validate: bool) -> None:
    out = _format_case(conformance, case, validate)
    expected = (conformance / case.expected).read_text()
    assert canonical(parse_document(out, "qsnap output")) == \
        canonical(parse_document(expected, "expected")), out
    assert out == expected, "same tree but not libvirt's exact text"
    assert rng.validate(etree.fromstring(out.encode())), rng.error_log


@pytest.mark.parametrize("case", [c for c in ACCEPTED if "redefine" in c.flags],
                         ids=lambda c: c.case)
def test_formatting_is_a_fixed_point(conformance: Path, case: Case) -> None:
    """Stored metadata read back and written again is the same text (the store relies on it).
    Only redefine rows: a create request's read-only fields are dropped on purpose."""
    out = _format_case(conformance, case, validate=False)
    again = parse_snapshot(out, redefine="redefine" in case.flags,
                           internal="internal" in case.flags)
    assert format_snapshot(again, uuid=case.uuid,
                           active=again.active if "internal" in case.flags else None) == out


@pytest.mark.parametrize("case", REJECTED, ids=lambda c: c.case)
def test_invalid_inputs_are_refused(conformance: Path, rng: etree.RelaxNG, case: Case) -> None:
    data = (conformance / case.input).read_bytes()
    assert not rng.validate(etree.fromstring(data))
    with pytest.raises(XMLError) as info:
        parse_snapshot(data, validate=True)
    assert "unsupported" in str(info.value)


# Inputs around the schema's edges: --validate must accept exactly what the RNG accepts.
PROBES = [
    "<domainsnapshot/>",
    "<domainsnapshot><name>a</name><name>b</name></domainsnapshot>",
    "<domainsnapshot><foo/></domainsnapshot>",
    "<domainsnapshot x='1'/>",
    "<domainsnapshot><state>pmsuspended</state></domainsnapshot>",
    "<domainsnapshot><state>bogus</state></domainsnapshot>",
    "<domainsnapshot><state>paused</state></domainsnapshot>",
    "<domainsnapshot><creationTime>abc</creationTime></domainsnapshot>",
    "<domainsnapshot><memory file='/a'/></domainsnapshot>",
    "<domainsnapshot><memory file='a'/></domainsnapshot>",
    "<domainsnapshot><memory/></domainsnapshot>",
    "<domainsnapshot><memory snapshot='external'/></domainsnapshot>",
    "<domainsnapshot><memory snapshot='no' file='/a'/></domainsnapshot>",
    "<domainsnapshot><memory snapshot='manual'/></domainsnapshot>",
    "<domainsnapshot><memory snapshot='internal'/></domainsnapshot>",
    "<domainsnapshot><active>1</active></domainsnapshot>",
    "<domainsnapshot><active>2</active></domainsnapshot>",
    "<domainsnapshot><domain><uuid>nope</uuid></domain></domainsnapshot>",
    "<domainsnapshot><domain><uuid>9d37b878-a7cc-9f9a-b78f-49b3abad25a8</uuid></domain>"
    "</domainsnapshot>",
    "<domainsnapshot><parent><name>p</name></parent></domainsnapshot>",
    "<domainsnapshot><parent/></domainsnapshot>",
    "<domainsnapshot><cookie><a/><b x='1'>t</b></cookie></domainsnapshot>",
    "<domainsnapshot><disks/></domainsnapshot>",
    "<domainsnapshot><disks><disk/></disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda'/></disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='v d' snapshot='no'/></disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='/img/a.qcow2' snapshot='no'/></disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='bogus'/></disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='manual'/></disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' type='file'/></disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='no' type='file'/></disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='internal'><source file='/a'/></disk>"
    "</disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='external' type='block'/></disks>"
    "</domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='external' type='block'><source/></disk>"
    "</disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='external' type='block'>"
    "<source dev='/dev/sdz'/></disk></disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='external' type='dir'/></disks>"
    "</domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='external'><source file='/a'/>"
    "<driver/></disk></disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='external'><source file='rel'/></disk>"
    "</disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='external'><driver type='raw'/></disk>"
    "</disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='external'><driver type='bogus'/></disk>"
    "</disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='external'><driver type='qcow2'>"
    "<metadata_cache><max_size unit='KiB'>4</max_size></metadata_cache></driver></disk></disks>"
    "</domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='external'><source file='/a'>"
    "<seclabel model='dac' relabel='no'/></source></disk></disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='external'><source file='/a'>"
    "<seclabel model='dac'/></source></disk></disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='external'><source file='/a'>"
    "<seclabel relabel='yes'><label>x</label></seclabel></source></disk></disks>"
    "</domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='external'><source file='/a'>"
    "<seclabel labelskip='yes'/></source></disk></disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='external'><snapshotDeleteInProgress/>"
    "</disk></disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='vda' snapshot='no'><snapshotDeleteInProgress/>"
    "</disk></disks></domainsnapshot>",
    "<domainsnapshot><disks><disk name='vdb' snapshot='external' type='network'>"
    "<source protocol='nbd' name='x'><host name='h' port='10809'/></source></disk></disks>"
    "</domainsnapshot>",
    "<domainsnapshot><disks><disk name='vdb' snapshot='external' type='network'>"
    "<source protocol='bogus' name='x'/></disk></disks></domainsnapshot>",
    "<domainsnapshot><revertDisks><disk name='vda' snapshot='external'><source file='/a'/>"
    "</disk></revertDisks></domainsnapshot>",
]


@pytest.mark.parametrize("xml", PROBES)
def test_validate_agrees_with_the_schema(rng: etree.RelaxNG, xml: str) -> None:
    schema_ok = bool(rng.validate(etree.fromstring(xml)))
    try:
        parse_snapshot(xml, validate=True)
        qsnap_ok, message = True, ""
    except XMLError as exc:
        qsnap_ok, message = False, str(exc)
    assert qsnap_ok == schema_ok, f"schema says {schema_ok}, qsnap says {qsnap_ok}: {message}"
