"""Write the guests virt-install makes for today's common OS variants into
``fixtures/virt-install/`` (one ``NAME.xml`` each), as users get them.

Run by hand when the set changes (root, with Debian's ``virtinst``): it starts libvirt's
QEMU driver (``scripts/libvirt_daemon.py``; UEFI needs a real driver, the test driver refuses
it) and runs ``virt-install --print-xml`` for each OS variant, with and without ``--boot
uefi``, and each of ``--graphics spice``, ``vnc`` and ``none``. Debian 12's osinfo-db (2022)
does not know debian12, ubuntu24.04 or fedora40: set ``OSINFO_SYSTEM_DIR`` to a newer
osinfo-db's ``usr/share/osinfo`` (Debian unstable's ``osinfo-db`` package, unpacked).
``--network user``: virt-install's default is libvirt's ``default`` network, which needs
libvirt's network driver (qsnap refuses ``<interface type='network'>`` by name and says to
write type='user', 'ethernet' or 'bridge'). The disk paths are placeholders
(``/var/lib/qsnap-guests/NAME.qcow2``) that tests replace.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import libvirt_daemon

OS_VARIANTS = ("debian12", "ubuntu24.04", "fedora40", "centos-stream9", "win10", "win11",
               "generic")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "virt-install"


def print_xml(name: str, variant: str, uefi: bool, graphics: str,
              extra: tuple[str, ...] = ()) -> str:
    argv = ["virt-install", "--connect", libvirt_daemon.URI, "--print-xml", "--name", name,
            "--osinfo", variant, "--memory", "1024", "--vcpus", "2", "--import",
            "--disk", f"path=/var/lib/qsnap-guests/{name}.qcow2,format=qcow2,size=1",
            "--graphics", graphics, "--network", "user", "--noautoconsole"]
    if uefi:
        argv += ["--boot", "uefi"]
    argv += extra
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


def main() -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    Path("/var/lib/qsnap-guests").mkdir(exist_ok=True)  # virt-install wants the disk's folder
    version = subprocess.run(["virt-install", "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    with libvirt_daemon.libvirt_running():
        for variant in OS_VARIANTS:
            for uefi in (False, True):
                for graphics in ("spice", "vnc", "none"):
                    name = f"{variant}-{'uefi' if uefi else 'bios'}-{graphics}"
                    xml = print_xml(name, variant, uefi, graphics)
                    (FIXTURES / f"{name}.xml").write_text(
                        f"<!-- virt-install {version} with print-xml (scripts/"
                        f"virt_install_guests.py) -->\n{xml}")
                    print(name)
        # The demo's guest: as a user without KVM asks for it (TCG and a named CPU).
        demo = FIXTURES.parent / "demo" / "win11-virt-install.xml"
        xml = print_xml("win11", "win11", True, "spice",
                        ("--virt-type", "qemu", "--cpu", "qemu64"))
        demo.write_text(f"<!-- virt-install {version} with print-xml, virt-type qemu and cpu "
                        f"qemu64 (scripts/virt_install_guests.py) -->\n{xml}")
    subprocess.run(["virsh", "-c", libvirt_daemon.URI, "pool-destroy", "qsnap-guests"],
                   capture_output=True, check=False)


if __name__ == "__main__":
    main()
