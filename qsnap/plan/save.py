"""libvirt's rules for save images (virDomainSave, virDomainRestore)."""

from __future__ import annotations

from qsnap.errors import InvalidArgumentError, NotSupportedError, OperationInvalidError
from qsnap.model import save_image
from qsnap.model.capabilities import StreamSupport
from qsnap.model.domain import DomainDef, parse_domain, same_uuid

#: Whether a save writes the sparse format (QEMU's mapped-ram, multifd, direct I/O) when the
#: QEMU has it and none is asked for. Not on this machine kind: a paused save of a guest with
#: 1 GiB dirty took 0.69 s raw (QEMU into a pipe, written with direct I/O here) against
#: 0.78-0.94 s sparse with 1, 2 or 4 channels (QEMU 10.0, medians of 5, scripts/bench
#: --memory); sparse restores were faster (0.81-0.90 s against 1.29 s), but the guest's
#: pause is the save's, and every libvirt and QEMU reads raw. --parallel-channels alone asks
#: for sparse.
SPARSE_BY_DEFAULT = False


def check_parallel_channels(channels: int | None) -> None:
    """virsh's --parallel-channels N of a save or restore: at least one."""
    if channels is not None and channels < 1:
        raise InvalidArgumentError(f"--parallel-channels must be at least 1, not {channels}")


def choose_image_format(asked: str | None, channels: int | None,
                        support: StreamSupport) -> str:
    """The save-image format of a save or memory snapshot (virsh save --image-format F
    --parallel-channels N), or a clear refusal."""
    check_parallel_channels(channels)
    if asked is None:
        chosen = "sparse" if channels or (support.mapped_ram and SPARSE_BY_DEFAULT) else "raw"
    elif asked not in save_image.FORMATS:
        raise InvalidArgumentError(f"unknown save image format '{asked}' (libvirt's are "
                                   f"{', '.join(save_image.FORMATS)})")
    elif asked not in save_image.WRITTEN_FORMATS:
        raise NotSupportedError(f"qsnap reads '{asked}' save images but writes only "
                                f"{', '.join(save_image.WRITTEN_FORMATS)}")
    else:
        chosen = asked
    if chosen == "sparse" and not support.mapped_ram:
        raise NotSupportedError("the sparse save image format needs QEMU's mapped-ram "
                                "migration (QEMU 9.0 or later); this QEMU has none")
    if channels is not None and chosen != "sparse":
        raise InvalidArgumentError(f"--parallel-channels needs the sparse save image format, "
                                   f"not {chosen}")
    return chosen


def device_blockers(definition: DomainDef) -> list[str]:
    """What in the definition QEMU cannot save though it names no blocker before the stream
    starts: a virtiofs share's vhost-user-fs (QEMU 7.2 names it; QEMU 8.2+ fails in the middle
    of the stream, "pre-save failed: vhost-user-fs-backend", unless asked to carry virtiofsd's
    state elsewhere, which qsnap does not)."""
    return [f"vhost-user-fs (the virtiofs share '{target.get('dir')}') cannot be migrated"
            for share in definition.element.iterfind("devices/filesystem")
            if share.find("driver[@type='virtiofs']") is not None
            and (target := share.find("target")) is not None]


def check_migratable(domain: str, blockers: list[str], what: str) -> None:
    """Saving a guest's memory (a save, a memory snapshot) needs a QEMU that can migrate;
    refused with QEMU's own reasons (and :func:`device_blockers`) before anything is
    touched."""
    if blockers:
        raise OperationInvalidError(f"cannot {what} of domain '{domain}': QEMU cannot save its "
                                    f"state: {'; '.join(blockers)}", domain=domain)


def image_definition(domain: DomainDef, replacement: str | None) -> str:
    """The domain XML a save image carries: the definition, or a replacement (``--xml``)
    that must describe the same domain (name and UUID)."""
    if replacement is None:
        return domain.to_xml(secure=True)
    other = parse_domain(replacement, "--xml")
    if other.name != domain.name or (other.uuid and domain.uuid and
                                     not same_uuid(other.uuid, domain.uuid)):
        raise InvalidArgumentError(f"--xml must describe domain '{domain.name}' with uuid "
                                   f"{domain.uuid}, not '{other.name}' with uuid {other.uuid}",
                                   domain=domain.name)
    return other.to_xml(secure=True)


def check_resumable(domain: DomainDef, image: str, frozen: dict[str, tuple[str, str]], *,
                    managed: bool) -> None:
    """A saved guest resumes writing to the images its save names. If a snapshot has frozen
    one of them since (a disk-only snapshot of the saved, shut-off domain made it the backing
    file of a new overlay), the guest would write into that snapshot's data and into every
    image built on it: refused, naming the disk, the image and the snapshot. *frozen* maps
    each image some snapshot froze to (snapshot, disk)."""
    for disk in domain.disks:
        if disk.source is None or disk.source not in frozen:
            continue
        snapshot, _target = frozen[disk.source]
        way_out = (f"'managedsave-remove {domain.name}' discards it, and 'start' then boots "
                   "the domain afresh" if managed else
                   "remove the save image, or revert to a snapshot instead")
        raise OperationInvalidError(
            f"{'the managed save image' if managed else 'save image'} '{image}' would resume "
            f"domain '{domain.name}' with disk '{disk.target}' on '{disk.source}', which "
            f"snapshot '{snapshot}' has frozen since the save: the guest would write into "
            f"that snapshot's data. Nothing was started; {way_out}",
            domain=domain.name, snapshot=snapshot, path=disk.source)
