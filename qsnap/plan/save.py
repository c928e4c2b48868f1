"""libvirt's rules for save images (virDomainSave, virDomainRestore)."""

from __future__ import annotations

from qsnap.errors import InvalidArgumentError, OperationInvalidError
from qsnap.model.domain import DomainDef, parse_domain, same_uuid


def check_migratable(domain: str, blockers: list[str], what: str) -> None:
    """Saving a guest's memory (a save, a memory snapshot) needs a QEMU that can migrate;
    refused with QEMU's own reasons before anything is touched."""
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
