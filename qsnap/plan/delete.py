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
    """One internal snapshot's data: the tag to delete from each (target, image) of *disks*
    (through QEMU, where the guest runs on them), and from each of *offline*: images the
    running guest does not have open at all (a branch a revert left), which ``qemu-img``
    changes beside it."""

    name: str
    disks: list[tuple[str, str]]
    offline: list[tuple[str, str]] = field(default_factory=list)


def plan_delete_data(snapshots: dict[str, SnapshotDef], plan: MetadataDeletePlan,
                     domain_now: DomainDef, *, active: bool,
                     open_images: set[str] | None = None) -> list[InternalRemoval]:
    """The internal snapshots among ``plan.remove`` and the images that hold them.

    Internal snapshots are removed from every image holding them, as libvirt does. On a
    running guest an image it writes to loses the tag through QEMU; one it does not have
    open at all (*open_images*: every image of its disks' chains; a branch a revert left
    behind) through ``qemu-img``. libvirt refuses both; refusing the second left guests
    reverted around internal and external snapshots with none that could be deleted
    (issue 28). An image the guest reads as a backing file (open read-only) is refused.
    External snapshots are planned by :mod:`qsnap.plan.external_delete`.
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
        offline = []
        for disk in snap.disks:
            if disk.snapshot != "internal":
                continue
            image = recorded.get(disk.name) or ""
            if not active or now.get(disk.name) == image:
                disks.append((disk.name, image))
            elif open_images is not None and image not in open_images:
                offline.append((disk.name, image))
            else:
                raise OperationInvalidError(
                    f"disk image '{image}' for internal snapshot '{name}' is not the same as "
                    "disk image currently used by VM (the running guest reads it as a "
                    "backing image)", snapshot=name, path=image)
        if (disks or offline) and recorded_domain.nvram_takes_tags:
            disks.append((NVRAM_TARGET, recorded_domain.nvram or ""))  # it took the tag too
        removals.append(InternalRemoval(name, disks, offline))
    return removals


def needs_open_images(snapshots: dict[str, SnapshotDef], remove: list[str],
                      domain_now: DomainDef) -> bool:
    """Whether an internal snapshot among *remove* is on an image the running guest's disks
    do not write to (so :func:`plan_delete_data` must know which images it has open)."""
    now = {d.target: d.source for d in domain_now.disks}
    for name in remove:
        snap = snapshots[name]
        if snap.is_external or snap.domain is None:
            continue
        recorded = {d.target: d.source for d in parse_domain_element(snap.domain).disks}
        if any(d.snapshot == "internal" and now.get(d.name) != recorded.get(d.name)
               for d in snap.disks):
            return True
    return False
