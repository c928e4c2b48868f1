"""libvirt's rules for save images (virDomainSave, virDomainRestore)."""

from __future__ import annotations

from qsnap.errors import InvalidArgumentError
from qsnap.model.domain import DomainDef, parse_domain, same_uuid


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
