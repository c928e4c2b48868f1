"""Choosing the accelerator: the domain's ``type`` (libvirt: ``kvm`` or ``qemu`` = TCG), unless
``$QSNAP_ACCEL`` (``kvm`` or ``tcg``) overrides it."""

from __future__ import annotations

import os

from qsnap.errors import InvalidArgumentError, OperationInvalidError


def choose_accel(domain_type: str | None) -> str:
    override = os.environ.get("QSNAP_ACCEL")
    if override:
        if override not in ("kvm", "tcg"):
            raise InvalidArgumentError(f"QSNAP_ACCEL must be 'kvm' or 'tcg', not '{override}'")
        accel = override
    else:
        accel = "kvm" if domain_type == "kvm" else "tcg"
    if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise OperationInvalidError("KVM was asked for (domain type 'kvm' or QSNAP_ACCEL=kvm) "
                                    "but /dev/kvm is not usable here; use type='qemu' or "
                                    "QSNAP_ACCEL=tcg")
    return accel
