"""Checks on a request to take a new snapshot that need no QEMU: its name and flags."""

from __future__ import annotations

from qsnap.errors import AlreadyExistsError
from qsnap.model.names import check_snapshot_name
from qsnap.model.snapshot import SnapshotDef
from qsnap.plan.flags import CreateFlags


def check_create_request(snap: SnapshotDef, flags: CreateFlags, domain: str,
                         name_taken: bool) -> None:
    """Refuse a bad name, or one already used (libvirt checks this only when metadata is kept,
    since ``--no-metadata`` snapshots never enter the list)."""
    if snap.name is None:
        return  # the creation time names it, and creation times of one domain never repeat
    if not flags.no_metadata:
        check_snapshot_name(snap.name)
        if name_taken:
            raise AlreadyExistsError(f"domain '{domain}' already has a snapshot named "
                                     f"'{snap.name}'", domain=domain, snapshot=snap.name)
