"""Selecting snapshots for ``snapshot-list`` with libvirt's filter semantics."""

from __future__ import annotations

from qsnap.errors import NoSnapshotError
from qsnap.model.tree import SnapshotSummary, SnapshotTree, name_key
from qsnap.plan.flags import ListFilter


def _group(selected: tuple[bool, ...], matches: tuple[bool, ...]) -> bool:
    """One filter group: no flag or every flag set means no filtering; otherwise any match."""
    if not any(selected) or all(selected):
        return True
    return any(s and m for s, m in zip(selected, matches, strict=True))


def _keep(tree: SnapshotTree, snap: SnapshotSummary, flt: ListFilter) -> bool:
    leaf = tree.is_leaf(snap.name)
    if not _group((flt.leaves, flt.no_leaves), (leaf, not leaf)):
        return False
    # Every snapshot qsnap lists has metadata, so --no-metadata alone lists nothing.
    if not _group((flt.metadata, flt.no_metadata), (True, False)):
        return False
    inactive = snap.state == "shutoff"
    disk_only = snap.state == "disk-snapshot"
    if not _group((flt.inactive, flt.active, flt.disk_only),
                  (inactive, not inactive and not disk_only, disk_only)):
        return False
    return _group((flt.internal, flt.external), (not snap.external, snap.external))


def select_snapshots(tree: SnapshotTree, flt: ListFilter) -> list[SnapshotSummary]:
    """The snapshots *flt* selects, sorted by name, or parents first with ``topological``.

    A starting point (``start`` or ``from_current``) limits the list to its children, or to all
    its descendants with ``descendants``; the starting point itself is not listed.
    """
    start = flt.start
    if flt.from_current:
        if tree.current is None:
            raise NoSnapshotError(f"domain '{tree.domain}' has no current snapshot",
                                  domain=tree.domain)
        start = tree.current
    if start is not None:
        names = tree.descendants(start) if flt.descendants else tree.children(start)
    elif flt.roots:
        names = tree.roots()
    else:
        names = [s.name for s in tree]
    if flt.topological:
        order = {n: i for i, n in enumerate(tree.topological())}
        names = sorted(names, key=order.__getitem__)
    else:
        names = sorted(names, key=name_key)
    return [tree.get(n) for n in names if _keep(tree, tree.get(n), flt)]
