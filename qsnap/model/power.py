"""How a guest is rebooted (virsh reboot --mode)."""

from enum import StrEnum


class RebootMode(StrEnum):
    #: The guest agent reboots the guest (returns at once).
    AGENT = "agent"
    #: The ACPI power button, then a reset once the guest has shut down (libvirt's "fake
    #: reboot", here without a daemon: the call waits for it).
    ACPI = "acpi"
    #: A reset of the machine at once (virsh reset).
    RESET = "reset"
