"""virsh blockcommit and blockpull on a running guest: which images, which rules, what changes.

Facts in (the domain definition, the disk's chain as QEMU has it open, the snapshots'
metadata), a checked plan out; the engine (:mod:`qsnap.engine.block_jobs`) carries it out.

libvirt's rules, in its words where it has them: the disk must exist; *top* defaults to the
image the guest writes to, which only an ``--active`` commit may take (and ``--active`` only
that one); *base* defaults to the bottom of the chain (``--shallow``: top's backing image)
and must lie below *top*.

qsnap adds one rule libvirt lacks: a commit writes into *base* and leaves the images above it
(up to *top*) invalid, so where a snapshot's metadata still needs one of those images as it
is (the disk state its ``<domain>`` names), the commit is refused with the snapshot's name;
``snapshot-delete`` is the way to merge a snapshot's images. Images a snapshot names only as
an overlay are renamed to *base* in its metadata, as a delete's merge renames them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from qsnap.errors import InvalidArgumentError, OperationInvalidError
from qsnap.model.domain import DomainDef, DomainDisk
from qsnap.model.snapshot import SnapshotDef
from qsnap.plan.external_delete import disk_sources

#: (node name, file name) of each image in a disk's chain, top (the guest's) first.
Chain = list[tuple[str, str]]

_INDEXED = re.compile(r"^(?P<target>[^\[\]]+)\[(?P<index>\d+)\]$")


@dataclass(frozen=True)
class CommitPlan:
    """Commit ``files[top]`` (and the images between) into ``files[base]``.

    ``files``/``nodes`` are the disk's chain top first; *active* when top is the image the
    guest writes to (the guest pivots onto base at the end, or keeps top with
    ``--keep-overlay``). ``renames`` maps each merged-away image to base, for the metadata
    that names them."""

    target: str
    files: tuple[str, ...]
    nodes: tuple[str, ...]
    top: int
    base: int
    base_format: str
    active: bool
    renames: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def top_file(self) -> str:
        return self.files[self.top]

    @property
    def base_file(self) -> str:
        return self.files[self.base]

    @property
    def merged_away(self) -> tuple[str, ...]:
        """The images the commit leaves invalid: top and those between it and base."""
        return self.files[self.top:self.base]


@dataclass(frozen=True)
class PullPlan:
    """Pull the data of the images below the guest's top image, down to (not including)
    ``files[base]`` (the whole chain when base is None), into the top image."""

    target: str
    files: tuple[str, ...]
    nodes: tuple[str, ...]
    base: int | None

    @property
    def base_file(self) -> str | None:
        return None if self.base is None else self.files[self.base]


def find_disk(definition: DomainDef, disk: str) -> DomainDisk:
    """libvirt's disk lookup: a target name or the source path of one disk."""
    found = definition.disk_by_name(disk)
    if found is None:
        raise InvalidArgumentError(f"disk '{disk}' not found in domain")
    return found


def running_chain(disk: DomainDisk, chains: dict[str, Chain]) -> Chain:
    chain = chains.get(disk.target)
    if not chain:
        raise OperationInvalidError(f"disk '{disk.target}' has no medium in the running guest")
    return chain


def _position(chain: Chain, target: str, name: str, option: str) -> int:
    """Where image *name* (a path, or libvirt's ``vda[N]`` index notation) is in *chain*."""
    indexed = _INDEXED.match(name)
    if indexed is not None:
        if indexed["target"] != target:
            raise InvalidArgumentError(f"requested target '{indexed['target']}' does not "
                                       f"match target '{target}'")
        index = int(indexed["index"])
        if index >= len(chain):
            raise InvalidArgumentError(f"could not find image '{name}' in chain for "
                                       f"'{target}'")
        return index
    wanted = os.path.realpath(name)
    for index, (_, path) in enumerate(chain):
        if path == name or os.path.realpath(path) == wanted:
            return index
    raise InvalidArgumentError(f"could not find image '{name}' in chain for '{target}'"
                               if option == "top" else
                               f"could not find base image in chain for '{target}'")


def plan_commit(definition: DomainDef, disk_name: str, chains: dict[str, Chain],
                formats: dict[str, str], snapshots: dict[str, SnapshotDef], *,
                base: str | None = None, top: str | None = None, active: bool = False,
                shallow: bool = False) -> CommitPlan:
    """The commit virsh's ``blockcommit DOM DISK [--base] [--top] [--active] [--shallow]``
    asks for, checked. *formats* gives each image's format (``qemu-img info``)."""
    disk = find_disk(definition, disk_name)
    chain = running_chain(disk, chains)
    target = disk.target
    if len(chain) < 2:
        raise InvalidArgumentError(f"could not find base image in chain for '{target}'")
    top_index = 0 if top is None or top == target else _position(chain, target, top, "top")
    if top_index == 0 and not active:
        raise InvalidArgumentError(f"commit of '{target}' active layer requires active flag")
    if top_index != 0 and active:
        raise InvalidArgumentError(f"active commit requested but '{chain[top_index][1]}' is "
                                   "not active")
    if top_index == len(chain) - 1:
        raise InvalidArgumentError(f"top '{chain[top_index][1]}' in chain for '{target}' has "
                                   "no backing file")
    if base is not None:
        if shallow:
            raise InvalidArgumentError("base and shallow flag are mutually exclusive")
        base_index = _position(chain, target, base, "base")
        if base_index <= top_index:
            raise InvalidArgumentError(f"could not find base image in chain for '{target}'")
    else:
        base_index = top_index + 1 if shallow else len(chain) - 1
    files = tuple(path for _, path in chain)
    plan = CommitPlan(target, files, tuple(node for node, _ in chain), top_index, base_index,
                      formats.get(files[base_index], "qcow2"), top_index == 0)
    _refuse_needed_images(plan, snapshots, definition.name)
    return CommitPlan(**{**plan.__dict__, "renames": {
        path: (plan.base_file, plan.base_format) for path in plan.merged_away}})


def _refuse_needed_images(plan: CommitPlan, snapshots: dict[str, SnapshotDef],
                          domain: str) -> None:
    """A snapshot whose disk state is base or a merged-away image would lose it."""
    changed = {plan.base_file: "is written into", **{
        path: "is left invalid by" for path in plan.merged_away}}
    for name in sorted(snapshots):
        for target, image in disk_sources(snapshots[name]).items():
            if image in changed:
                raise OperationInvalidError(
                    f"image '{image}' {changed[image]} this commit, but snapshot '{name}' "
                    f"needs it as it is (its disk '{target}' state); 'snapshot-delete "
                    f"{domain} {name}' merges a snapshot's images, or 'snapshot-delete "
                    f"{domain} {name} --metadata' forgets the snapshot first")


def plan_pull(definition: DomainDef, disk_name: str, chains: dict[str, Chain], *,
              base: str | None = None) -> PullPlan:
    """What virsh's ``blockpull DOM DISK [--base B]`` asks for, checked: the data of the
    images between the top and *base* is copied into the top image, whose backing file then
    becomes *base* (none without it). Nothing else changes: the images below stay valid."""
    disk = find_disk(definition, disk_name)
    chain = running_chain(disk, chains)
    base_index = None
    if base is not None:
        base_index = _position(chain, disk.target, base, "base")
        if base_index == 0:
            raise InvalidArgumentError(f"could not find base image in chain for "
                                       f"'{disk.target}'")
    return PullPlan(disk.target, tuple(p for _, p in chain), tuple(n for n, _ in chain),
                    base_index)
