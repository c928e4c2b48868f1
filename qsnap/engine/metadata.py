"""Operations on snapshot metadata alone: redefine (and snapshot-edit's clone and rename), set
current, and delete ``--metadata``. No image is touched, so none keeps an intent record:
each is one journaled change of the domain's folder (:meth:`DomainFolder.save`), which a
crash leaves whole or not at all. They run in a worker thread under the domain's lock.
"""

from __future__ import annotations

from qsnap.engine.create import regular_disk_files
from qsnap.engine.reader import load_tree, resolve, snapshot_xml
from qsnap.errors import CorruptMetadataError, InvalidArgumentError, NotSupportedError
from qsnap.logs import logger
from qsnap.model.snapshot import SnapshotDef
from qsnap.plan.delete import MetadataDeletePlan, plan_delete_metadata, plan_drop_unreadable
from qsnap.plan.flags import CreateFlags, DeleteFlags
from qsnap.plan.redefine import check_unchanged, names_its_data, plan_redefine, plan_rename
from qsnap.store import KEEP, DomainFolder

log = logger("qsnap")


def redefine(folder: DomainFolder, snap: SnapshotDef, flags: CreateFlags, *,
             edited_from: str | None, expected: str | None, rename: bool) -> str:
    """Store *snap* (see :meth:`qsnap.Engine.redefine`); its name."""
    if rename and edited_from is None:
        raise InvalidArgumentError("a rename needs the name of the snapshot it renames")
    tree = folder.lazy_tree()
    if edited_from is not None and expected is not None:
        stored = (snapshot_xml(folder, snapshot=edited_from, secure=True)
                  if edited_from in tree else None)
        check_unchanged(edited_from, expected, stored)
    regular = regular_disk_files(folder.definition, snap)
    if rename and edited_from is not None and snap.name != edited_from:
        old = folder.read_snapshot(edited_from)
        children = [folder.read_snapshot(c.name) for c in folder.load_tree()
                    if c.parent == edited_from]
        moved = plan_rename(snap, folder.definition, tree, old, children, flags, regular)
        folder.save(put=[moved.snapshot, *moved.children], drop=[moved.old],
                    current=moved.snapshot.name if moved.make_current else KEEP,
                    renamed=(moved.old, moved.snapshot.name or ""))
        return moved.snapshot.name or ""
    existing = (folder.read_snapshot(snap.name)
                if snap.name is not None and snap.name in tree else None)
    plan = plan_redefine(snap, folder.definition, tree, existing, flags, regular_files=regular)
    if edited_from is not None and snap.name != edited_from:  # a clone
        if names_its_data(folder.read_snapshot(edited_from)):
            raise NotSupportedError(
                f"snapshot '{edited_from}' is internal: a copy under another name would name "
                f"a tag '{snap.name}' its disk images do not hold", snapshot=edited_from)
        folder.copy_kept(edited_from, plan.snapshot.name or "")
    folder.save(put=[plan.snapshot], current=plan.snapshot.name if plan.make_current else KEEP)
    return plan.snapshot.name or ""


def set_current(folder: DomainFolder, snapshot: str) -> None:
    folder.save(current=resolve(folder, snapshot))


def plan_delete(folder: DomainFolder, name: str, flags: DeleteFlags
                ) -> tuple[MetadataDeletePlan, dict[str, SnapshotDef]]:
    """What a delete of *name* removes from the tree, and its children as they are stored
    afterwards (under their new parent)."""
    plan = plan_delete_metadata(load_tree(folder), name, flags)
    moved = {child: folder.read_snapshot(child).copy(parent=parent)
             for child, parent in plan.reparent.items()}
    return plan, moved


def delete_metadata_only(folder: DomainFolder, name: str,
                         flags: DeleteFlags) -> MetadataDeletePlan:
    """``snapshot-delete --metadata``: only qsnap's metadata goes."""
    if not (flags.children or flags.children_only):
        unreadable = _drop_unreadable(folder, name)
        if unreadable is not None:
            return unreadable
    plan, moved = plan_delete(folder, name, flags)
    folder.save(put=list(moved.values()), drop=plan.remove,
                current=plan.current if plan.current_changes else KEEP)
    return plan


def _drop_unreadable(folder: DomainFolder, name: str) -> MetadataDeletePlan | None:
    """The metadata delete of a snapshot whose own file cannot be read (edited into
    garbage): the way out the error message names. Its file goes; its children, whose new
    parent would be its unreadable parent, become roots; it stops being current. None when
    the file reads fine (the ordinary path then applies)."""
    try:
        folder.read_snapshot(name)
        return None
    except CorruptMetadataError as exc:
        log.warning("%s; removing it, as asked", exc)
    others = {n: folder.read_snapshot(n) for n in folder.snapshot_names() if n != name}
    plan = plan_drop_unreadable(name, {n: s.parent for n, s in others.items()},
                                folder.read_current())
    folder.save(put=[others[child].copy(parent=None) for child in plan.reparent],
                drop=plan.remove, current=plan.current if plan.current_changes else KEEP)
    return plan
