"""Deleting external snapshots: which images merge into which, what else goes, what is renamed.

An external snapshot froze each of its disks in a *state image* (the file its ``<domain>``
names; it became the backing file of a new overlay). Deleting the snapshot means nobody needs
that frozen moment any more, so, as virsh's manual says, "changes from this snapshot will be
merged into the children":

- a state image that nothing still needs is removed, with the images built on it that nothing
  needs either (libvirt's leaf case: a branch left behind by a revert);
- a state image that exactly one needed image is built on takes that image's data (block
  commit of the image above into it) and its place: whatever named the image above (the
  domain's disk, other snapshots' ``<domain>``) now names the state image, and the chain is one
  shorter. Runs of such images collapse in one commit;
- a state image that two needed images are built on (two branches still in use) cannot be
  merged into either without changing the other: refused, as libvirt refuses it.

"Needed" means named as a disk by the domain definition or by a remaining snapshot's
``<domain>``, or in the backing chain of such an image. This covers everything libvirt's
rules cover (current snapshot, the one child on the active chain, leaves off it) and more: a
snapshot off the running guest's chain is merged with ``qemu-img`` while the guest runs, and
``--children`` works on external subtrees (libvirt refuses both), since the graph shows exactly
which images each merge touches.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

from qsnap.errors import NotSupportedError, OperationInvalidError
from qsnap.model.domain import DomainDef, parse_domain_element, renamed_images
from qsnap.model.image_graph import ImageGraph
from qsnap.model.snapshot import DiskSource, SnapshotDef


@dataclass(frozen=True)
class Merge:
    """Commit *top* (and the images *between* it and *base*) into *base*, which takes top's
    place. ``live``: top is in the running guest's chain for disk *target* (QEMU block-commit;
    ``active``: top is the image the guest writes to). ``rebase`` lists images built on top
    that must afterwards name base as their backing file (QEMU rewrites the one in its own
    chain itself)."""

    target: str
    top: str
    base: str
    base_format: str
    between: tuple[str, ...] = ()
    live: bool = False
    active: bool = False
    rebase: tuple[str, ...] = ()

    @property
    def merged_away(self) -> tuple[str, ...]:
        return (*self.between, self.top)


@dataclass(frozen=True)
class ExternalDeletePlan:
    merges: tuple[Merge, ...] = ()
    remove_files: tuple[str, ...] = ()
    renames: dict[str, tuple[str, str]] = field(default_factory=dict)


def disk_sources(snap: SnapshotDef) -> dict[str, str]:
    """target → image of the disks named by a snapshot's ``<domain>``."""
    if snap.domain is None:
        return {}
    return {d.target: d.source for d in parse_domain_element(snap.domain).disks if d.source}


def snapshot_images(snapshots: dict[str, SnapshotDef], names: list[str]) -> list[str]:
    """Every image snapshots *names* name: their ``<domain>``'s disks and their overlays."""
    found: list[str] = []
    for name in names:
        found.extend(disk_sources(snapshots[name]).values())
        found.extend(d.source.path for d in snapshots[name].disks if d.source.path)
    return found


def _state_images(snap: SnapshotDef) -> dict[str, str]:
    """target → the image an external snapshot froze for each of its external disks."""
    if snap.domain is None:
        raise NotSupportedError(
            f"snapshot '{snap.name}' records no domain definition, so qsnap cannot tell which "
            "images hold it; a metadata-only delete removes only its metadata",
            snapshot=snap.name)
    sources = disk_sources(snap)
    result = {}
    for disk in snap.disks:
        if disk.snapshot != "external":
            continue
        if disk.name not in sources:
            raise OperationInvalidError(f"snapshot '{snap.name}' has disk '{disk.name}', which "
                                        "its domain definition does not describe",
                                        snapshot=snap.name)
        result[disk.name] = sources[disk.name]
    return result


def frozen_images(snapshots: dict[str, SnapshotDef]) -> dict[str, tuple[str, str]]:
    """Every image an external snapshot froze (a snapshot's data, which must never be
    written again), with the snapshot and disk that froze it."""
    frozen: dict[str, tuple[str, str]] = {}
    for name, snap in sorted(snapshots.items()):
        if snap.domain is None or not snap.is_external:
            continue
        with contextlib.suppress(OperationInvalidError):
            for target, image in _state_images(snap).items():
                frozen.setdefault(image, (name, target))
    return frozen


def plan_external_delete(snapshots: dict[str, SnapshotDef], remove: list[str],
                         definition: DomainDef, graph: ImageGraph,
                         running: dict[str, list[str]] | None) -> ExternalDeletePlan:
    """What deleting the external snapshots among *remove* does to the images.

    *snapshots* are all the domain's snapshots; *graph* knows every image they and the
    definition name, with backing chains; *running* is the running guest's chain per disk
    (top first), None when the guest is stopped.
    """
    removed = set(remove)
    # Images whose content must stay as it is: the guest's disks and the state images of the
    # remaining external snapshots. Other images the remaining snapshots name (an image that
    # holds an internal snapshot, a disk left out of a snapshot) must stay, but may take data.
    frozen = {d.source for d in definition.disks if d.source}
    keep_refs = set(frozen)
    for name, snap in snapshots.items():
        if name not in removed:
            keep_refs.update(disk_sources(snap).values())
            if snap.domain is not None:
                frozen.update(_state_images(snap).values())
    for path in sorted(p for p in keep_refs | set(snapshot_images(snapshots, remove))
                       if p in graph):
        loop = graph.loop(path)
        if loop is not None:
            raise OperationInvalidError(
                f"the backing chain of image '{path}' loops ({' → '.join(loop)}), so no "
                "image on it can be read; mend it by hand ('qemu-img rebase -u -b BACKING'); "
                "qsnap removes or merges nothing")
    required = graph.closure(p for p in keep_refs if p in graph)
    unknown = sorted((required | keep_refs) - set(graph.images))

    candidates: dict[str, tuple[str, str]] = {}  # state image -> (snapshot, target)
    garbage_roots: set[str] = set()
    for name in remove:
        snap = snapshots[name]
        for target, image in _state_images(snap).items():
            if image not in graph:
                raise OperationInvalidError(
                    f"image '{image}' of snapshot '{name}' (disk '{target}') does not exist, so "
                    "its data cannot be merged; a metadata-only delete removes only the "
                    "metadata", snapshot=name, path=image)
            if image not in frozen:
                candidates.setdefault(image, (name, target))
            overlay = next((d.source.path for d in snap.disks
                            if d.name == target and d.source.path), None)
            if overlay is not None and overlay in graph:
                garbage_roots.add(overlay)
                if overlay in required:
                    _refuse_moved_overlay(name, target, image, overlay, graph)

    merges: list[Merge] = []
    merged: set[str] = set()
    garbage: set[str] = set()
    renames: dict[str, tuple[str, str]] = {}
    for image in sorted(candidates, key=lambda p: (len(graph.chain(p)), p)):
        if image in merged:
            continue
        target = candidates[image][1]
        if image not in required:
            garbage.add(image)
            garbage.update(d for d in graph.descendants(image) if d not in required)
            continue
        run = [image]
        while True:
            above = [c for c in graph.children(run[-1]) if c in required]
            if len(above) != 1:
                raise _branches_refusal(candidates[run[-1]][0], run[-1], target, above)
            if above[0] in candidates and above[0] not in merged:
                run.append(above[0])
                continue
            top = above[0]
            break
        merge = _merge(target, run, top, graph, required, running, removed)
        merges.append(merge)
        merged.update(run)
        merged.add(top)
        for path in merge.merged_away:
            renames[path] = (image, graph[image].format)
        garbage.update(d for d in graph.descendants(image)
                       if d not in required and d not in merge.rebase)
    for root in garbage_roots:
        if root not in required and root not in merged:
            garbage.add(root)
            garbage.update(d for d in graph.descendants(root) if d not in required)

    if unknown and (merges or garbage - merged):
        raise _unknown_chain_refusal(unknown[0], graph, definition, snapshots, removed)
    memory_kept = {s.memory_file for n, s in snapshots.items() if n not in removed}
    memory = [snapshots[n].memory_file for n in remove
              if snapshots[n].memory == "external" and snapshots[n].memory_file
              and snapshots[n].memory_file not in memory_kept]
    removals = sorted(garbage - merged) + [p for m in merges for p in m.merged_away]
    return ExternalDeletePlan(tuple(merges), tuple(removals + [m for m in memory if m]),
                              renames)


def _merge(target: str, run: list[str], top: str, graph: ImageGraph, required: set[str],
           running: dict[str, list[str]] | None, removed: set[str]) -> Merge:
    base = run[0]
    for path in (*run[1:], top):
        doomed = sorted(graph[path].tags - removed)
        if doomed:
            names = ", ".join(f"'{t}'" for t in doomed)
            raise OperationInvalidError(
                f"image '{path}' holds internal snapshot {names}, which merging it into "
                f"'{base}' would destroy; delete {'it' if len(doomed) == 1 else 'them'} first, "
                "or delete only the metadata", path=path)
    chain = (running or {}).get(target, [])
    live = top in chain
    return Merge(target=target, top=top, base=base, base_format=graph[base].format,
                 between=tuple(run[1:]), live=live, active=live and chain[0] == top,
                 rebase=tuple(c for c in graph.children(top) if c in required))


def _refuse_moved_overlay(name: str, target: str, image: str, overlay: str,
                          graph: ImageGraph) -> None:
    """The snapshot's overlay, which the tree still needs, must still stand on the image the
    snapshot froze (or, after a block pull, on an image below it, or on nothing). One rebased
    by hand onto some other file no longer says which images hold the data from before the
    snapshot: the frozen image would read as unneeded and be removed, though it may be the
    only copy of everything before the snapshot. Refuse, as for a missing file."""
    backing = graph[overlay].backing
    if backing is None or backing in graph.chain(image):
        return
    raise OperationInvalidError(
        f"image '{overlay}' (the overlay of snapshot '{name}', disk '{target}') no longer "
        f"stands on '{image}', the image the snapshot froze, but on '{backing}' (rebased by "
        f"hand?); qsnap cannot tell what still needs '{image}', so it removes or merges "
        f"nothing. Rebase it back ('qemu-img rebase -u -b {image} {overlay}'), or delete "
        "only the metadata", snapshot=name, path=overlay)


def _unknown_chain_refusal(missing: str, graph: ImageGraph, definition: DomainDef,
                           snapshots: dict[str, SnapshotDef],
                           removed: set[str]) -> OperationInvalidError:
    """A needed image is gone (removed by hand): whatever it was built on is unknown, so any
    image this delete would remove or merge might be the one it needs. Refuse, naming it and
    who needs it, rather than guess (guessing "unneeded" once lost a base image)."""
    users = [f"image '{p}'" for p in graph.children(missing)]
    if any(d.source == missing for d in definition.disks):
        users.append("the domain definition")
    users += [f"snapshot '{n}'" for n, s in sorted(snapshots.items())
              if n not in removed and missing in disk_sources(s).values()]
    return OperationInvalidError(
        f"image '{missing}' does not exist, but {', '.join(users) or 'a snapshot'} still needs "
        "it; qsnap cannot tell which images it was built on, so it removes or merges none. "
        "Put the file back, or delete only the metadata", path=missing)


def _branches_refusal(owner: str, image: str, target: str,
                      above: list[str]) -> OperationInvalidError:
    users = ", ".join(f"'{p}'" for p in above)
    return OperationInvalidError(
        f"deletion of external disk snapshot with multiple children snapshots not supported: "
        f"image '{image}' of snapshot '{owner}' (disk '{target}') is the base of {len(above)} "
        f"images still in use ({users}); merging it into one would change what the others "
        "read", snapshot=owner, path=image)



def renamed_snapshot(snap: SnapshotDef, renames: dict[str, tuple[str, str]]) -> SnapshotDef | None:
    """*snap* with every image in *renames* replaced in its ``<domain>`` and its ``<disks>``;
    None when it names none of them."""
    if not renames:
        return None
    domain = renamed_images(snap.domain, renames) if snap.domain is not None else None
    disks = []
    changed = domain is not None
    for disk in snap.disks:
        path = disk.source.path
        if path in renames:
            new_path, fmt = renames[path]
            source = DiskSource(file=new_path) if disk.source.file else DiskSource(dev=new_path)
            disk = replace(disk, source=source, driver_type=fmt)
            changed = True
        disks.append(disk)
    if not changed:
        return None
    return snap.copy(domain=domain if domain is not None else snap.domain, disks=disks)


def renamed_definition(definition: DomainDef,
                       renames: dict[str, tuple[str, str]]) -> DomainDef | None:
    element = renamed_images(definition.element, renames) if renames else None
    return parse_domain_element(element) if element is not None else None
