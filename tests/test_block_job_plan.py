"""The rules of blockcommit and blockpull (qsnap.plan.block_jobs), without QEMU: libvirt's
checks in its words, the defaults of --top/--base/--shallow, and the refusal to commit into
or out of an image a snapshot still needs."""

from __future__ import annotations

import pytest

from qsnap.errors import InvalidArgumentError, OperationInvalidError
from qsnap.model.domain import parse_domain
from qsnap.model.snapshot import parse_snapshot
from qsnap.plan.block_jobs import plan_commit, plan_pull

DOMAIN = parse_domain("""<domain type='qemu'><name>g</name><memory>131072</memory>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='/i/top'/><target dev='vda' bus='virtio'/></disk></devices></domain>""")
#: vda: /i/top <- /i/mid <- /i/base, as QEMU reports it (top first).
CHAINS = {"vda": [("n-top", "/i/top"), ("n-mid", "/i/mid"), ("n-base", "/i/base")]}
FORMATS = {"/i/mid": "qcow2", "/i/base": "raw"}


def commit(**options: object) -> object:
    return plan_commit(DOMAIN, "vda", CHAINS, FORMATS, {}, **options)  # type: ignore[arg-type]


def test_defaults_and_positions() -> None:
    plan = commit(active=True)
    assert (plan.top_file, plan.base_file, plan.base_format, plan.active) == \
        ("/i/top", "/i/base", "raw", True)
    assert plan.merged_away == ("/i/top", "/i/mid")
    assert plan.renames == {"/i/top": ("/i/base", "raw"), "/i/mid": ("/i/base", "raw")}
    shallow = commit(active=True, shallow=True)
    assert shallow.base_file == "/i/mid" and shallow.merged_away == ("/i/top",)
    below = commit(top="/i/mid")
    assert (below.top, below.base, below.active) == (1, 2, False)
    assert commit(top="vda[1]", base="vda[2]").merged_away == ("/i/mid",)
    assert plan_commit(DOMAIN, "/i/top", CHAINS, FORMATS, {}, active=True).target == "vda"


@pytest.mark.parametrize(("options", "message"), [
    ({}, "commit of 'vda' active layer requires active flag"),
    ({"top": "/i/mid", "active": True}, "active commit requested but '/i/mid' is not active"),
    ({"top": "/i/base"}, "top '/i/base' in chain for 'vda' has no backing file"),
    ({"top": "/i/mid", "base": "/i/top"}, "could not find base image in chain for 'vda'"),
    ({"active": True, "base": "/i/elsewhere"},
     "could not find base image in chain for 'vda'"),
    ({"top": "/i/nowhere"}, "could not find image '/i/nowhere' in chain for 'vda'"),
    ({"top": "vdb[1]"}, "requested target 'vdb' does not match target 'vda'"),
    ({"active": True, "base": "/i/mid", "shallow": True},
     "base and shallow flag are mutually exclusive"),
])
def test_libvirt_refusals(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        commit(**options)
    assert str(refused.value) == message


def test_a_disk_that_is_not_there_or_has_nothing_below() -> None:
    with pytest.raises(InvalidArgumentError, match="disk 'vdz' not found in domain"):
        plan_commit(DOMAIN, "vdz", CHAINS, FORMATS, {}, active=True)
    with pytest.raises(InvalidArgumentError, match="could not find base image in chain"):
        plan_commit(DOMAIN, "vda", {"vda": [("n", "/i/top")]}, {}, {}, active=True)


def _snapshot(name: str, state_image: str, overlay: str) -> object:
    return parse_snapshot(f"""<domainsnapshot><name>{name}</name><state>disk-snapshot</state>
<creationTime>1</creationTime>
<memory snapshot='no'/><disks><disk name='vda' snapshot='external' type='file'>
<driver type='qcow2'/><source file='{overlay}'/></disk></disks>
<domain type='qemu'><name>g</name><memory>131072</memory><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='{state_image}'/><target dev='vda' bus='virtio'/></disk></devices></domain>
</domainsnapshot>""", redefine=True)


def test_images_a_snapshot_needs_are_not_merged_away_or_into() -> None:
    into = {"s1": _snapshot("s1", "/i/base", "/i/mid")}
    with pytest.raises(OperationInvalidError, match="image '/i/base' is written into this "
                       "commit, but snapshot 's1' needs it as it is"):
        plan_commit(DOMAIN, "vda", CHAINS, FORMATS, into, active=True)  # type: ignore[arg-type]
    away = {"s2": _snapshot("s2", "/i/mid", "/i/top")}
    with pytest.raises(OperationInvalidError, match="image '/i/mid' is left invalid by"):
        plan_commit(DOMAIN, "vda", CHAINS, FORMATS, away, active=True)  # type: ignore[arg-type]
    # Where mid is only a snapshot's overlay (s3 froze base), committing the top into it
    # leaves every snapshot's disk state as it was.
    shallow = plan_commit(DOMAIN, "vda", CHAINS, FORMATS, {"s3": _snapshot(
        "s3", "/i/base", "/i/mid")}, active=True, shallow=True)  # type: ignore[arg-type]
    assert shallow.base_file == "/i/mid"


def test_pull() -> None:
    assert plan_pull(DOMAIN, "vda", CHAINS).base is None
    assert plan_pull(DOMAIN, "vda", CHAINS, base="/i/mid").base_file == "/i/mid"
    with pytest.raises(InvalidArgumentError, match="could not find base image"):
        plan_pull(DOMAIN, "vda", CHAINS, base="/i/top")
