"""Redefining snapshot metadata (``snapshot-create --redefine``): libvirt's checks, then the result.

Redefinition touches no image. It adds a snapshot's metadata, or replaces an existing snapshot's,
and may make it current. The rules are libvirt's (virDomainSnapshotRedefinePrep and
virDomainSnapshotRedefineValidate); qsnap also checks the UUID of a bare ``<domain><uuid>``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from qsnap.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotSupportedError,
    OperationInvalidError,
)
from qsnap.model.domain import DomainDef, parse_domain_element, same_uuid
from qsnap.model.names import check_snapshot_name
from qsnap.model.snapshot import SnapshotDef
from qsnap.model.tree import TreeView
from qsnap.plan.disks import align_disks
from qsnap.plan.flags import CreateFlags

_ONLINE = ("running", "paused")


@dataclass(frozen=True)
class RedefinePlan:
    """The snapshot to store, and whether it becomes the domain's current snapshot."""

    snapshot: SnapshotDef
    make_current: bool
    replaces: bool


def _check_parent(snap: SnapshotDef, tree: TreeView) -> None:
    name, parent = snap.name, snap.parent
    if parent is None:
        return
    if parent == name:
        raise InvalidArgumentError(f"cannot set moment {name} as its own parent")
    if parent not in tree:
        raise InvalidArgumentError(f"parent {parent} for moment {name} not found")
    if name in tree and name in tree.ancestors(parent):
        raise InvalidArgumentError(f"parent {parent} would create cycle to {name}")


def _check_replacement(snap: SnapshotDef, existing: SnapshotDef) -> None:
    if (existing.state in _ONLINE) != (snap.state in _ONLINE):
        raise InvalidArgumentError(
            f"cannot change between online and offline snapshot state in snapshot {snap.name}")
    if (existing.state == "disk-snapshot") != (snap.state == "disk-snapshot"):
        raise InvalidArgumentError(
            f"cannot change between disk only and full system in snapshot {snap.name}")


def plan_redefine(snap: SnapshotDef, domain: DomainDef, tree: TreeView,
                  existing: SnapshotDef | None, flags: CreateFlags,
                  regular_files: Collection[str] = ()) -> RedefinePlan:
    """Check a redefinition of *snap* for *domain* and return what to store.

    *snap* was parsed in redefine mode; *existing* is the stored snapshot of the same name, if
    any; *regular_files* lists the domain's disk sources that are regular files (needed only to
    name overlays that the XML leaves unnamed).
    """
    check_snapshot_name(snap.name)
    if flags.disk_only and snap.state != "disk-snapshot":
        raise InvalidArgumentError(
            f"disk-only flag for snapshot {snap.name} requires disk-snapshot state")
    if snap.uuid is not None and domain.uuid is not None and \
            not same_uuid(snap.uuid, domain.uuid):
        raise InvalidArgumentError(
            f"definition for snapshot {snap.name} must use uuid {domain.uuid}")
    _check_parent(snap, tree)

    result = snap.copy(active=None)
    if existing is not None:
        _check_replacement(snap, existing)
        if result.domain is None and existing.domain is not None:
            result.domain = existing.domain
            result.domain_uuid = None

    if result.domain is not None:
        snapshot_domain = parse_domain_element(result.domain, f"the <domain> of snapshot "
                                                              f"'{snap.name}'")
        location = "external" if (snap.state == "disk-snapshot" or snap.is_external) \
            else "internal"
        result.disks = align_disks(result, snapshot_domain, location, uniform_internal=True,
                                   regular_files=regular_files)

    was_current = existing is not None and tree.current == snap.name
    return RedefinePlan(snapshot=result, make_current=flags.current or was_current,
                        replaces=existing is not None)


def check_unchanged(name: str, expected: str, stored: str | None) -> None:
    """An edit (snapshot-edit) of snapshot *name* started from its XML *expected*; *stored*
    is its XML now (None: it is gone). The editor held no lock, so anything may have
    happened meanwhile: a snapshot deleted while the editor was open came back, naming an
    overlay its delete had merged away (issue 28). Such a redefine is refused."""
    if stored is None:
        raise OperationInvalidError(f"snapshot '{name}' was deleted while it was being edited; "
                                    "nothing was changed", snapshot=name)
    if stored != expected:
        raise OperationInvalidError(f"snapshot '{name}' changed while it was being edited (by "
                                    "another command); nothing was changed: edit it again",
                                    snapshot=name)


def names_its_data(snap: SnapshotDef) -> bool:
    """Whether *snap*'s data is found by its name: an internal snapshot's tag in its qcow2
    images is the snapshot's name (and a tag cannot be renamed)."""
    return snap.memory == "internal" or any(d.snapshot == "internal" for d in snap.disks)


@dataclass(frozen=True)
class RenamePlan:
    """A snapshot stored under a new name (with the edits made to it), its children
    re-parented to it, the old name gone; current if the old one was."""

    snapshot: SnapshotDef
    children: list[SnapshotDef]
    old: str
    make_current: bool


def plan_rename(snap: SnapshotDef, domain: DomainDef, tree: TreeView, old: SnapshotDef,
                children: list[SnapshotDef], flags: CreateFlags,
                regular_files: Collection[str] = ()) -> RenamePlan:
    """Check renaming snapshot *old* into *snap* (snapshot-edit --rename; the engine's
    rename_snapshot), with *children* its children."""
    assert old.name is not None
    check_snapshot_name(snap.name)
    if snap.name in tree:
        raise AlreadyExistsError(f"snapshot '{snap.name}' already exists", snapshot=snap.name)
    if names_its_data(old):
        raise NotSupportedError(
            f"snapshot '{old.name}' is internal: its data is the tag '{old.name}' inside its "
            "disk images, which qcow2 cannot rename, so the snapshot cannot be renamed",
            snapshot=old.name)
    if snap.parent == old.name:
        raise InvalidArgumentError(f"snapshot '{snap.name}' cannot have its own old name "
                                   f"'{old.name}' as its parent", snapshot=snap.name)
    plan = plan_redefine(snap, domain, tree, old, flags, regular_files)
    return RenamePlan(plan.snapshot, [c.copy(parent=snap.name) for c in children], old.name,
                      flags.current or tree.current == old.name)
