"""One domain's metadata folder: its definition, one XML file per snapshot, the current marker.

Layout (``STATE`` is the state directory)::

    STATE/domains/NAME/domain.xml           the domain definition
    STATE/domains/NAME/snapshots/SNAP.xml   one file per snapshot, in libvirt's metadata format
    STATE/domains/NAME/current              the current snapshot's name (absent: none)
    STATE/domains/NAME/journal.json         only while a multi-file change is being applied
    STATE/domains/NAME/summaries.json       a cache for listings (see qsnap.store.summaries)
    STATE/domains/NAME/VARS.fd              a UEFI guest's NVRAM (where define puts it)
    STATE/domains/NAME/nvram/SNAP           the NVRAM as external snapshot SNAP found it
    STATE/domains/NAME/tpm/SNAP             an emulated TPM's permanent state as SNAP found it

Snapshot files are exactly what libvirt keeps in ``/var/lib/libvirt/qemu/snapshot/NAME/``
(including ``<active>1</active>`` on the current one), so a tree can move between the two. The
``current`` file is the authority qsnap reads: finding the current snapshot costs one small read
instead of a scan, which keeps creating a snapshot as fast with 10,000 siblings as with none.
Every method assumes the caller holds the domain's lock.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from qsnap.errors import CorruptMetadataError, NoDomainError, NoSnapshotError, QsnapError
from qsnap.store.atomic import (
    TEMP_PREFIX,
    atomic_write,
    make_dirs,
    remove_durably,
    remove_temp_files,
)
from qsnap.store.journal import JOURNAL_NAME, Batch, apply_covered, commit, replay
from qsnap.store.summaries import (
    checked_definition,
    file_identity,
    load_summaries,
    note_checked_definition,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see qsnap.lazy)
if TYPE_CHECKING:
    from qsnap.model.domain import DomainDef
    from qsnap.model.snapshot import SnapshotDef
    from qsnap.model.tree import SnapshotTree

# The model (lxml, and the tree's dataclasses) is imported by the methods that use it, not
# here: commands that only read names or the current snapshot start without it (lxml alone
# costs 20 ms of a command that otherwise takes 40).

DEFINITION = "domain.xml"
SNAPSHOTS = "snapshots"
CURRENT = "current"
#: Present while a running domain has been undefined: virsh keeps such a domain, transient,
#: until its guest stops; then it is gone.
TRANSIENT = "transient"
#: How to start an attached QEMU again (its own command line), written by ``attach``.
LAUNCH = "launch.json"
#: What snapshots keep of a guest's state outside its disks, each in a folder of copies by
#: snapshot name: the UEFI NVRAM (external snapshots), an emulated TPM's permanent state.
NVRAM_COPIES = "nvram"
TPM_COPIES = "tpm"
KEPT_STATES = (NVRAM_COPIES, TPM_COPIES)
SUFFIX = ".xml"


class _Keep:
    """Sentinel: leave the current snapshot as it is."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()


class DomainFolder:
    """Reads and changes one domain's metadata (see the module docstring)."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self.snapshots_dir = path / SNAPSHOTS

    # -- recovery ---------------------------------------------------------------------------

    def needs_recovery(self) -> bool:
        """Whether :meth:`recover` has anything to do: one listing of this small folder, so
        callers on an event loop can skip a worker-thread trip in the usual case."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return False
        return any(n == JOURNAL_NAME or n.startswith(TEMP_PREFIX) for n in names)

    def recover(self) -> list[str]:
        """Finish or clean up what a crashed writer left; return a line per thing recovered."""
        done: list[str] = []
        if not self.path.is_dir():
            return done
        if replay(self.path):
            done.append(f"domain '{self.name}': finished a metadata change interrupted by a crash")
        # Temporary files live in the domain folder itself (see journal._apply), never among
        # the snapshots, so this sweep does not grow with the number of snapshots.
        for temp in remove_temp_files(self.path):
            done.append(f"domain '{self.name}': removed unfinished write {temp.name}")
        return done

    # -- the definition ---------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.path / DEFINITION).is_file()

    @property
    def transient(self) -> bool:
        return (self.path / TRANSIENT).exists()

    def set_transient(self, transient: bool) -> None:
        """Mark the domain transient (undefined while it runs) or persistent again."""
        if transient:
            atomic_write(self.path / TRANSIENT, b"")
        else:
            remove_durably(self.path / TRANSIENT)

    def read_launch(self) -> bytes | None:
        """The attached QEMU's recorded command line (opaque here), or None for a domain
        qsnap starts from its definition."""
        try:
            return (self.path / LAUNCH).read_bytes()
        except FileNotFoundError:
            return None

    def write_launch(self, data: bytes | None) -> None:
        if data is None:
            remove_durably(self.path / LAUNCH)
        else:
            atomic_write(self.path / LAUNCH, data)

    @property
    def managed_save(self) -> Path:
        """Where ``managedsave`` keeps the domain's memory image until the next ``start``."""
        return self.path / "managed.save"

    @cached_property
    def definition(self) -> DomainDef:
        path = self.path / DEFINITION
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            raise NoDomainError(f"domain '{self.name}' is not defined",
                                domain=self.name) from None
        from qsnap.model.domain import parse_domain

        try:
            return parse_domain(text, f"domain definition '{path}'")
        except QsnapError as exc:
            raise CorruptMetadataError(f"domain definition file '{path}' is corrupt: {exc}") \
                from None

    def check_definition(self) -> None:
        """Raise as :attr:`definition` would for a missing or corrupt definition, parsing it
        only when it is not the very file that parsed before (see
        :func:`~qsnap.store.summaries.checked_definition`)."""
        try:
            identity = file_identity(self.path / DEFINITION)
        except FileNotFoundError:
            identity = None  # .definition says so, with the domain's name
        if identity is not None and identity == checked_definition(self.path):
            return
        _ = self.definition
        if identity is not None:
            note_checked_definition(self.path, identity)

    def write_definition(self, domain: DomainDef) -> None:
        from qsnap.model.xmltext import format_element

        make_dirs(self.snapshots_dir)
        batch = Batch()
        batch.write(DEFINITION, format_element(domain.element).encode("utf-8"))
        commit(self.path, batch)
        self._changed(batch)

    # -- state outside the disks (NVRAM, TPM), kept with snapshots ---------------------------

    def kept_copy(self, kind: str, snapshot: str) -> Path:
        """Where snapshot *snapshot* keeps its copy of *kind* (one of :data:`KEPT_STATES`)."""
        return self.path / kind / snapshot

    def keep_state(self, kind: str, snapshot: str, source: str | Path) -> None:
        """Keep the file *source* as snapshot *snapshot* found it (replacing an older copy of
        that name), so a revert restores it too."""
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            return  # never started: its first start makes it
        folder = self.path / kind
        make_dirs(folder)
        atomic_write(folder / snapshot, data, temp_dir=folder)

    def restore_state(self, kind: str, snapshot: str, target: str | Path) -> bool:
        """Put snapshot *snapshot*'s copy of *kind* back as *target*; False if it kept none."""
        try:
            data = self.kept_copy(kind, snapshot).read_bytes()
        except FileNotFoundError:
            return False
        atomic_write(Path(target), data)
        return True

    def copy_kept(self, snapshot: str, to: str) -> None:
        """Keep *snapshot*'s copies for snapshot *to* as well (a clone)."""
        for kind in KEPT_STATES:
            copy = self.kept_copy(kind, snapshot)
            if copy.exists():
                self.keep_state(kind, to, copy)

    def drop_kept(self, snapshot: str) -> None:
        for kind in KEPT_STATES:
            copy = self.kept_copy(kind, snapshot)
            if copy.exists():
                remove_durably(copy)

    # -- snapshots --------------------------------------------------------------------------

    def _relative(self, snapshot: str) -> str:
        return f"{SNAPSHOTS}/{snapshot}{SUFFIX}"

    def has_snapshot(self, name: str) -> bool:
        return (self.snapshots_dir / f"{name}{SUFFIX}").is_file()

    def snapshot_names(self) -> list[str]:
        if not self.snapshots_dir.is_dir():
            return []
        return [entry.name[:-len(SUFFIX)] for entry in self.snapshots_dir.iterdir()
                if entry.name.endswith(SUFFIX) and not entry.name.startswith(TEMP_PREFIX)]

    def read_snapshot(self, name: str) -> SnapshotDef:
        path = self.snapshots_dir / f"{name}{SUFFIX}"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NoSnapshotError(f"domain '{self.name}' has no snapshot named '{name}'",
                                  domain=self.name, snapshot=name) \
                from None
        from qsnap.model.snapshot import parse_snapshot

        way_out = (f"; fix the file, or delete just this snapshot's metadata (a "
                   f"metadata-only delete: 'snapshot-delete {self.name} {name} --metadata'; no "
                   "image is touched)")
        try:
            snap = parse_snapshot(data, redefine=True, internal=True,
                                  what=f"snapshot metadata file '{path}'")
        except QsnapError as exc:
            raise CorruptMetadataError(f"snapshot metadata file '{path}' is corrupt: {exc}"
                                       f"{way_out}") from None
        if snap.name != name:
            raise CorruptMetadataError(f"snapshot metadata file '{path}' is corrupt: it "
                                       f"describes snapshot '{snap.name}', not '{name}'"
                                       f"{way_out}")
        return snap

    def read_current(self) -> str | None:
        try:
            text = (self.path / CURRENT).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        name = text[:-1] if text.endswith("\n") else text  # a name may end in a newline
        return name or None

    def lazy_tree(self) -> LazyTree:
        """A :class:`~qsnap.model.tree.TreeView` that reads only the files it is asked about."""
        return LazyTree(self)

    def load_tree(self) -> SnapshotTree:
        """Every snapshot's summary (from the cache where the file is unchanged), as a tree."""
        from qsnap.model.tree import SnapshotSummary, SnapshotTree

        summaries = load_summaries(self.path, self.snapshots_dir, SUFFIX,
                                   lambda n: SnapshotSummary.of(self.read_snapshot(n)))
        return SnapshotTree(summaries, self.read_current(), domain=self.name)

    def _format(self, snap: SnapshotDef, current: bool) -> bytes:
        from qsnap.model.snapshot import format_snapshot

        return format_snapshot(snap, uuid=self.definition.uuid, active=current).encode("utf-8")

    def save(self, *, put: Sequence[SnapshotDef] = (), drop: Sequence[str] = (),
             current: str | _Keep | None = KEEP, definition: DomainDef | None = None,
             renamed: tuple[str, str] | None = None) -> None:
        """Store *put*, remove *drop*, set the current snapshot and (if given) a new domain
        definition, all in one atomic change (see :meth:`plan_save`). *renamed* (old, new):
        a snapshot renamed, whose kept copies (NVRAM, TPM) move with it in the same change."""
        batch = self.plan_save(put=put, drop=drop, current=current, definition=definition)
        if renamed is not None:
            old, new = renamed
            for kind in KEPT_STATES:
                if self.kept_copy(kind, old).exists():
                    batch.move(f"{kind}/{old}", f"{kind}/{new}")
        commit(self.path, batch)
        self._changed(batch)

    def apply_covered(self, batch: Batch) -> None:
        """Apply a batch from :meth:`plan_save` whose every byte a durable record already holds
        (see :func:`qsnap.store.journal.apply_covered`): no journal of its own."""
        apply_covered(self.path, batch)
        self._changed(batch)

    def _changed(self, batch: Batch) -> None:
        if DEFINITION in batch.writes:
            self.__dict__.pop("definition", None)
        # A removed snapshot's kept copies go with it (one a crash leaves behind is never
        # used: only a new snapshot of that name would, and it replaces it first).
        for relative in batch.removals:
            if relative.startswith(f"{SNAPSHOTS}/") and relative.endswith(SUFFIX):
                self.drop_kept(relative[len(SNAPSHOTS) + 1:-len(SUFFIX)])

    def snapshot_file(self, snap: SnapshotDef, *, current: bool) -> tuple[str, bytes]:
        """Where in a batch *snap* is stored, and its bytes there."""
        assert snap.name is not None
        return self._relative(snap.name), self._format(snap, current)

    def plan_save(self, *, put: Sequence[SnapshotDef] = (), drop: Sequence[str] = (),
                  current: str | _Keep | None = KEEP, definition: DomainDef | None = None
                  ) -> Batch:
        """The file changes that store *put*, remove *drop*, set the current snapshot and (if
        given) a new domain definition, as things stand now.

        When the current snapshot changes, the old and new current files are rewritten too, so
        their ``<active>`` markers agree with the ``current`` file as libvirt expects.
        """
        old = self.read_current()
        new = old if isinstance(current, _Keep) else current
        if new is not None and new in drop:
            raise ValueError(f"snapshot '{new}' cannot be both dropped and current")
        batch = Batch()
        written = set()
        for snap in put:
            batch.write(*self.snapshot_file(snap, current=snap.name == new))
            written.add(snap.name)
        if new != old:
            if old is not None and old not in written and old not in drop \
                    and self.has_snapshot(old):
                batch.write(self._relative(old), self._format(self.read_snapshot(old), False))
            if new is not None and new not in written:
                batch.write(self._relative(new), self._format(self.read_snapshot(new), True))
            if new is None:
                batch.remove(CURRENT)
            else:
                batch.write(CURRENT, f"{new}\n".encode())
        for name in drop:
            batch.remove(self._relative(name))
        if definition is not None:
            from qsnap.model.xmltext import format_element

            batch.write(DEFINITION, format_element(definition.element).encode("utf-8"))
        return batch


class LazyTree:
    """Membership, ancestry and current of a domain's snapshots, read file by file on demand.

    Follows the same rules as :class:`~qsnap.model.tree.SnapshotTree`: a missing parent ends the
    ancestry as a root would; a parent loop (only possible in hand-edited files) is an error.
    """

    def __init__(self, folder: DomainFolder) -> None:
        self._folder = folder
        self.current = folder.read_current()

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._folder.has_snapshot(name)

    def ancestors(self, name: str) -> list[str]:
        result: list[str] = []
        parent = self._folder.read_snapshot(name).parent
        while parent is not None and self._folder.has_snapshot(parent):
            if parent in result or parent == name:
                raise CorruptMetadataError(
                    f"snapshot metadata of domain '{self._folder.name}' is inconsistent: the "
                    f"parents of '{name}' form a cycle")
            result.append(parent)
            parent = self._folder.read_snapshot(parent).parent
        return result
