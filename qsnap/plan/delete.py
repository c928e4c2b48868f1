"""Which metadata a delete removes, who inherits the children, and what becomes current."""

from __future__ import annotations

from dataclasses import dataclass, field

from qsnap.errors import NotSupportedError, OperationInvalidError
from qsnap.model.domain import NVRAM_TARGET, DomainDef, parse_domain_element
from qsnap.model.snapshot import SnapshotDef
from qsnap.model.tree import SnapshotTree
from qsnap.plan.flags import DeleteFlags


@dataclass(frozen=True)
class MetadataDeletePlan:
    """The outcome of deleting snapshot metadata.

    ``remove`` lists the snapshots whose metadata goes (children before parents);
    ``reparent`` maps each surviving child of a removed snapshot to its new parent;
    ``current`` is the new current snapshot when the old one is removed (``None``: no current),
    and ``current_changes`` says whether it changes at all.
    """

    target: str
    remove: list[str]
    reparent: dict[str, str | None] = field(default_factory=dict)
    current: str | None = None
    current_changes: bool = False


def plan_delete_metadata(tree: SnapshotTree, name: str, flags: DeleteFlags) -> MetadataDeletePlan:
    """libvirt's metadata rules: children move up to the deleted snapshot's parent; with
    ``children``/``children_only`` the subtree goes; a removed current passes to the nearest
    surviving ancestor (the snapshot itself with ``children_only``, else its parent)."""
    flags.check()
    tree.get(name)
    parent = tree.parent(name)
    subtree = tree.descendants(name) if (flags.children or flags.children_only) else []
    remove = list(reversed(subtree))
    if not flags.children_only:
        remove.append(name)
    reparent: dict[str, str | None] = {}
    if not (flags.children or flags.children_only):
        reparent = {child: parent for child in tree.children(name)}
    removed = set(remove)
    if tree.current is not None and tree.current in removed:
        new_current = name if flags.children_only else parent
        return MetadataDeletePlan(name, remove, reparent, new_current, True)
    return MetadataDeletePlan(name, remove, reparent)


def plan_drop_unreadable(name: str, parents: dict[str, str | None],
                         current: str | None) -> MetadataDeletePlan:
    """``--metadata`` delete of snapshot *name* whose own file cannot be read (*parents*:
    every other snapshot's parent). Its parent is unknown, so its children become roots;
    a current *name* leaves no current snapshot."""
    children = sorted(child for child, parent in parents.items() if parent == name)
    return MetadataDeletePlan(name, [name], dict.fromkeys(children), None, current == name)


@dataclass(frozen=True)
class InternalRemoval:
    """One internal snapshot's data: the tag to delete from each (target, image)."""

    name: str
    disks: list[tuple[str, str]]


def plan_delete_data(snapshots: dict[str, SnapshotDef], plan: MetadataDeletePlan,
                     domain_now: DomainDef, *, active: bool) -> list[InternalRemoval]:
    """The internal snapshots among ``plan.remove`` and the images that hold them.

    Internal snapshots are removed from every image holding them, as libvirt does; a running
    guest must be using exactly those images. External snapshots are planned by
    :mod:`qsnap.plan.external_delete`.
    """
    removals = []
    for name in plan.remove:
        snap = snapshots[name]
        if snap.is_external:
            continue
        if snap.domain is None:
            raise NotSupportedError(
                f"snapshot '{name}' records no domain definition, so qsnap cannot tell which "
                "images hold it; a metadata-only delete removes only its metadata",
                snapshot=name)
        recorded_domain = parse_domain_element(snap.domain)
        recorded = {d.target: d.source for d in recorded_domain.disks}
        now = {d.target: d.source for d in domain_now.disks}
        disks = []
        for disk in snap.disks:
            if disk.snapshot != "internal":
                continue
            image = recorded.get(disk.name) or ""
            if active and now.get(disk.name) != image:
                raise OperationInvalidError(
                    f"disk image '{image}' for internal snapshot '{name}' is not the same as "
                    "disk image currently used by VM")
            disks.append((disk.name, image))
        if disks and recorded_domain.nvram_takes_tags:
            disks.append((NVRAM_TARGET, recorded_domain.nvram or ""))  # it took the tag too
        removals.append(InternalRemoval(name, disks))
    return removals
