"""The flags of each snapshot operation, and libvirt's rules about which go together."""

from __future__ import annotations

from dataclasses import dataclass

from qsnap.errors import InvalidArgumentError


def _exclusive(pairs: list[tuple[str, bool, str, bool]]) -> None:
    for first, a, second, b in pairs:
        if a and b:
            raise InvalidArgumentError(f"--{first} and --{second} are mutually exclusive")


@dataclass(frozen=True)
class CreateFlags:
    """virDomainSnapshotCreateFlags, by name."""

    redefine: bool = False
    current: bool = False
    no_metadata: bool = False
    halt: bool = False
    disk_only: bool = False
    reuse_external: bool = False
    quiesce: bool = False
    atomic: bool = False
    live: bool = False
    validate: bool = False
    #: qsnap's own: a snapshot of the disks of a guest whose QEMU crashed is wanted anyway
    #: (``--crash-consistent``); see :func:`qsnap.plan.disk_snapshot.check_not_crashed`.
    crash_consistent: bool = False

    def check(self) -> CreateFlags:
        """The flags themselves: they were checked when made (kept for callers of earlier
        releases, which checked them by hand)."""
        return self

    def __post_init__(self) -> None:
        """Refuse combinations libvirt refuses, before anything is read or changed."""
        if self.current and not self.redefine:
            raise InvalidArgumentError("--current requires --redefine")
        _exclusive([("redefine", self.redefine, "no-metadata", self.no_metadata),
                    ("redefine", self.redefine, "halt", self.halt),
                    ("redefine", self.redefine, "live", self.live)])
        if self.quiesce and not self.disk_only:
            raise InvalidArgumentError("--quiesce requires --disk-only")


@dataclass(frozen=True)
class DeleteFlags:
    """virDomainSnapshotDeleteFlags, by name."""

    children: bool = False
    children_only: bool = False
    metadata_only: bool = False

    def check(self) -> DeleteFlags:
        """The flags themselves: they were checked when made (kept for callers of earlier
        releases, which checked them by hand)."""
        return self

    def __post_init__(self) -> None:
        _exclusive([("children", self.children, "children-only", self.children_only)])


@dataclass(frozen=True)
class RevertFlags:
    """virDomainSnapshotRevertFlags, by name."""

    running: bool = False
    paused: bool = False
    force: bool = False
    reset_nvram: bool = False

    def check(self) -> RevertFlags:
        """The flags themselves: they were checked when made (kept for callers of earlier
        releases, which checked them by hand)."""
        return self

    def __post_init__(self) -> None:
        _exclusive([("running", self.running, "paused", self.paused)])


@dataclass(frozen=True)
class ListFilter:
    """virDomainSnapshotListFlags plus the starting point of ``--from``/``--current``.

    Flags come in groups (leaves, metadata, status, location); inside a group they are ORed, the
    groups are ANDed, and a group with none or all of its flags set does not filter.
    """

    roots: bool = False
    leaves: bool = False
    no_leaves: bool = False
    metadata: bool = False
    no_metadata: bool = False
    inactive: bool = False
    active: bool = False
    disk_only: bool = False
    internal: bool = False
    external: bool = False
    topological: bool = False
    start: str | None = None
    from_current: bool = False
    descendants: bool = False

    def check(self) -> ListFilter:
        """The flags themselves: they were checked when made (kept for callers of earlier
        releases, which checked them by hand)."""
        return self

    def __post_init__(self) -> None:
        starting = self.start is not None or self.from_current
        _exclusive([("from", self.start is not None, "current", self.from_current),
                    ("roots", self.roots, "from", self.start is not None),
                    ("roots", self.roots, "current", self.from_current)])
        if self.descendants and not starting:
            raise InvalidArgumentError("--descendants requires either --from or --current")
