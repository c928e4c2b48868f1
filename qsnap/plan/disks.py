"""Aligning a snapshot's ``<disks>`` with the domain's disks (virDomainSnapshotAlignDisks).

After alignment a snapshot lists every domain disk exactly once, in domain order, under its target
name, with an explicit snapshot mode; external disks without a ``<source>`` get libvirt's default
overlay name. The only fact from outside is which disk sources are regular files, passed in as a
set so this stays pure.
"""

from __future__ import annotations

from collections.abc import Collection

from qsnap.errors import InvalidArgumentError, NotSupportedError
from qsnap.model.domain import DomainDef
from qsnap.model.snapshot import DiskSource, SnapshotDef, SnapshotDisk


def default_overlay_path(source: str, snapshot_name: str) -> str:
    """The original path without its extension, then ``.<snapshot name>`` (libvirt's rule)."""
    slash, dot = source.rfind("/"), source.rfind(".")
    stem = source[:dot] if dot > slash else source
    return f"{stem}.{snapshot_name}"


def align_disks(snap: SnapshotDef, domain: DomainDef, default_location: str, *,
                uniform_internal: bool, regular_files: Collection[str]) -> list[SnapshotDisk]:
    """Return *snap*'s disks aligned to *domain* (see the module docstring).

    *uniform_internal* with an internal default means every disk must take part in the internal
    snapshot, because QEMU's internal snapshots cannot leave a qcow2 disk out.
    """
    if len(snap.disks) > len(domain.disks):
        raise InvalidArgumentError("too many disk snapshot requests for domain")
    require_match = uniform_internal and default_location == "internal"
    requested: dict[str, SnapshotDisk] = {}
    for disk in snap.disks:
        domain_disk = domain.disk_by_name(disk.name)
        if domain_disk is None:
            raise InvalidArgumentError(f"no disk named '{disk.name}'", snapshot=snap.name)
        if domain_disk.target in requested:
            raise InvalidArgumentError(f"disk '{disk.name}' specified twice")
        location = disk.snapshot
        if location is None:
            if domain_disk.snapshot is not None and (
                    not require_match or domain_disk.snapshot == "no"):
                location = domain_disk.snapshot
            else:
                location = default_location
        elif require_match and location != default_location and not (
                location == "no" and domain_disk.snapshot == "no"):
            raise InvalidArgumentError(
                f"disk '{disk.name}' must use snapshot mode '{default_location}'")
        if disk.source.path and location != "external":
            raise InvalidArgumentError(
                f"file '{disk.source.path}' for disk '{disk.name}' requires use of external "
                "snapshot mode")
        requested[domain_disk.target] = SnapshotDisk(
            name=domain_disk.target, snapshot=location, type=disk.type, source=disk.source,
            driver_type=disk.driver_type, metadata_cache_max_size=disk.metadata_cache_max_size,
            delete_in_progress=disk.delete_in_progress)

    aligned: list[SnapshotDisk] = []
    for domain_disk in domain.disks:
        if domain_disk.target in requested:
            aligned.append(requested[domain_disk.target])
            continue
        # An empty drive (a CD-ROM without media) has nothing to snapshot.
        location = "no" if domain_disk.is_empty else domain_disk.snapshot or default_location
        aligned.append(SnapshotDisk(name=domain_disk.target, snapshot=location))

    _assign_external_names(aligned, domain, snap.name or "", regular_files)
    return aligned


def _assign_external_names(disks: list[SnapshotDisk], domain: DomainDef, snapshot_name: str,
                           regular_files: Collection[str]) -> None:
    for index, disk in enumerate(disks):
        if disk.snapshot != "external" or disk.source.path:
            continue
        if disk.type != "file":
            raise NotSupportedError(f"cannot generate external snapshot name for disk "
                                    f"'{disk.name}' on a '{disk.type}' device")
        source = domain.disks[index].source
        if source is None:
            raise NotSupportedError(f"cannot generate external snapshot name for disk "
                                    f"'{disk.name}' without source")
        if source not in regular_files:
            raise NotSupportedError(f"source for disk '{disk.name}' is not a regular file; "
                                    "refusing to generate external snapshot name")
        path = default_overlay_path(source, snapshot_name)
        for other in disks[:index]:
            if other.source.path == path:
                raise NotSupportedError(f"cannot generate external snapshot name for disk "
                                        f"'{disk.name}': collision with disk '{other.name}'")
        disk.source = DiskSource(file=path, seclabels=disk.source.seclabels)
