# Shared set-up for scripts/demo and scripts/test; source it, don't run it.
# Creates the virtualenv (default .venv in the repository, or $QSNAP_VENV), installs qsnap with its
# test tools into it, and installs Debian's QEMU packages where they are missing and we can.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${QSNAP_VENV:-$repo/.venv}

install_debian_packages() {
    # Usage: install_debian_packages COMMAND PACKAGE [COMMAND PACKAGE]...
    # Installs each PACKAGE whose COMMAND (a command, or the path of a file it installs) is
    # missing, where we are root (or have sudo) and apt.
    local missing=()
    while [ $# -ge 2 ]; do
        command -v "$1" >/dev/null 2>&1 || [ -e "$1" ] || missing+=("$2")
        shift 2
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
            echo "setup: ${missing[*]} missing and not root; install them by hand" >&2
            return 0
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: ${missing[*]} missing and no apt-get here; install them by hand" >&2
        return 0
    fi
    echo "setup: installing ${missing[*]} from Debian" >&2
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

install_qemu() {
    # OVMF with QEMU's firmware descriptors, for UEFI guests (<os firmware='efi'>); swtpm for
    # emulated TPMs (<tpm><backend type='emulator'>); the compressors of libvirt's compressed
    # save-image formats (gzip, bzip2 and xz are Debian's own).
    install_debian_packages qemu-system-x86_64 qemu-system-x86 qemu-img qemu-utils \
        /usr/share/qemu/firmware/60-edk2-x86_64.json ovmf swtpm swtpm swtpm_setup swtpm-tools \
        zstd zstd lzop lzop xz xz-utils bzip2 bzip2
}

second_qemu_root=${QSNAP_QEMU10_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/qsnap/qemu-10}
second_libvirt_root=${QSNAP_LIBVIRT11_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/qsnap/libvirt-11}
# The bench and the tests find them by these names (scripts/bench_qemu.py, libvirt_daemon.py).
export QSNAP_QEMU10_DIR=$second_qemu_root QSNAP_LIBVIRT11_DIR=$second_libvirt_root

unpack_from_backports() {
    # Usage: unpack_from_backports FOLDER PACKAGE...
    # Downloads PACKAGEs from Debian's bookworm-backports and unpacks them into FOLDER/root,
    # without touching the system's packages or apt sources (a private apt state folder);
    # FOLDER appears whole or not at all.
    local folder=$1 work deb
    shift
    work=$(mktemp -d)
    mkdir -p "$work/state/lists/partial" "$work/cache/archives/partial" "$work/debs"
    echo "deb http://deb.debian.org/debian bookworm-backports main" > "$work/sources.list"
    local apt=(apt-get -qq -o "Dir::State=$work/state" -o "Dir::Cache=$work/cache"
               -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
               -o Dir::State::status=/var/lib/dpkg/status -o APT::Sandbox::User=root)
    "${apt[@]}" update >/dev/null
    (cd "$work/debs" && "${apt[@]}" download "$@" >/dev/null)
    rm -rf "$folder.new"
    mkdir -p "$folder.new/bin"
    for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$folder.new/root"; done
    rm -rf "$work"
}

can_unpack() {
    command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 && return 0
    echo "setup: no apt-get/dpkg here; $1 not installed, $2" >&2
    return 1
}

install_second_qemu() {
    # Where the system's QEMU is older than 10 (Debian 12 has 7.2), unpack QEMU 10 from Debian's
    # bookworm-backports into $second_qemu_root, beside the system's, and write wrappers in its
    # bin/ that give the unpacked binaries their own modules and firmware folders. The test
    # suite runs its QEMU tests once per QEMU (tests/conftest.py, QSNAP_QEMU_BIN).
    local version
    version=$(qemu-system-x86_64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p')
    [ -n "$version" ] && [ "$version" -ge 10 ] && return 0
    [ -x "$second_qemu_root/bin/qemu-system-x86_64" ] && return 0
    can_unpack "QEMU 10" "its test run is skipped" || return 0
    echo "setup: unpacking QEMU 10 from bookworm-backports into $second_qemu_root" >&2
    unpack_from_backports "$second_qemu_root" qemu-system-x86 qemu-system-common \
        qemu-system-data qemu-system-gui qemu-system-modules-opengl qemu-system-modules-spice \
        qemu-utils
    local root="$second_qemu_root/root" tool
    # Its modules from its own folder (a 7.2 module makes it abort); its own firmware blobs
    # first, then the system's SeaBIOS, which its data package links to.
    cat > "$second_qemu_root.new/bin/qemu-system-x86_64" <<WRAPPER
#!/bin/sh
QEMU_MODULE_DIR=$root/usr/lib/x86_64-linux-gnu/qemu exec $root/usr/bin/qemu-system-x86_64 \\
    -L $root/usr/share/qemu -L /usr/share/seabios "\$@"
WRAPPER
    for tool in qemu-img qemu-io qemu-nbd; do
        cat > "$second_qemu_root.new/bin/$tool" <<WRAPPER
#!/bin/sh
QEMU_MODULE_DIR=$root/usr/lib/x86_64-linux-gnu/qemu exec $root/usr/bin/$tool "\$@"
WRAPPER
    done
    chmod +x "$second_qemu_root.new"/bin/*
    rm -rf "$second_qemu_root"
    mv "$second_qemu_root.new" "$second_qemu_root"
}

third_qemu_root=${QSNAP_QEMU11_DIR:-/var/cache/qsnap/qemu-11}
export QSNAP_QEMU11_DIR=$third_qemu_root

install_third_qemu() {
    # The newest QEMU there is (Debian unstable's; 11.1.3 on 2026-12-07), for the third suite:
    # its glibc is newer than Debian 12's, so it runs in a debootstrap tree of its own, through
    # chroot wrappers in $third_qemu_root/bin with /tmp, /root, /run, /proc, /sys and /dev
    # bound in (every path the tests hand QEMU lies under /tmp or /root). Needs root (chroot,
    # mount); elsewhere the third suite is not run, and scripts/test says so.
    [ "$(id -u)" -eq 0 ] || { echo "setup: not root: no QEMU 11 tree (chroot needs root)" >&2; return 0; }
    local tree="$third_qemu_root/root" tool mount
    if [ ! -x "$tree/usr/bin/qemu-system-x86_64" ]; then
        install_debian_packages debootstrap debootstrap
        command -v debootstrap >/dev/null 2>&1 || { echo "setup: no debootstrap: no QEMU 11" >&2; return 0; }
        echo "setup: debootstrap of Debian unstable with QEMU into $tree (about a minute)" >&2
        rm -rf "$third_qemu_root.new"
        mkdir -p "$third_qemu_root.new"
        if ! debootstrap --variant=minbase --include=qemu-system-x86,qemu-utils,ovmf sid \
                "$third_qemu_root.new/root" http://deb.debian.org/debian >"$third_qemu_root.log" 2>&1; then
            echo "setup: debootstrap failed (see $third_qemu_root.log): no QEMU 11" >&2
            rm -rf "$third_qemu_root.new"
            return 0
        fi
        rm -rf "$third_qemu_root"
        mv "$third_qemu_root.new" "$third_qemu_root"
    fi
    # /tmp is shared with the tree, not only bound into it: a file system a test mounts under
    # /tmp later (a small tmpfs to fill up) must be what the chrooted QEMU sees there too.
    mountpoint -q /tmp || mount --bind /tmp /tmp
    mount --make-shared /tmp
    if mountpoint -q "$tree/tmp" && [ "$(findmnt -no PROPAGATION "$tree/tmp")" != shared ]; then
        umount -l "$tree/tmp"
    fi
    for mount in tmp root run proc sys dev; do
        mountpoint -q "$tree/$mount" && continue
        mkdir -p "$tree/$mount"
        case $mount in sys|dev) mount --rbind "/$mount" "$tree/$mount" ;;
                       *) mount --bind "/$mount" "$tree/$mount" ;; esac
    done
    mkdir -p "$third_qemu_root/bin"
    for tool in qemu-system-x86_64 qemu-img qemu-io qemu-nbd; do
        # The caller's working folder goes along (attached QEMUs start in theirs).
        cat > "$third_qemu_root/bin/$tool" <<WRAPPER
#!/bin/sh
exec /usr/sbin/chroot $tree /bin/sh -c 'cd "\$1" 2>/dev/null || cd /; shift; exec /usr/bin/$tool "\$@"' $tool "\$PWD" "\$@"
WRAPPER
        chmod +x "$third_qemu_root/bin/$tool"
    done
}

install_second_libvirt() {
    # Where the system's libvirt is older than 11.2 (Debian 12 has 9.0), unpack libvirt 11.3
    # from bookworm-backports into $second_libvirt_root: the reference for the save-image
    # formats libvirt 11.2 added (sparse, --parallel-channels), on QEMU 10. It never replaces
    # the system's libvirt: scripts/libvirt_daemon.py runs it in a mount namespace of its own.
    local version
    version=$(virsh --version 2>/dev/null || true)
    case "$version" in [0-9].*|10.*|11.[01].*|"") ;; *) return 0 ;; esac
    [ -x "$second_libvirt_root/root/usr/sbin/libvirtd" ] && return 0
    can_unpack "libvirt 11.3" "its comparisons fail" || return 0
    echo "setup: unpacking libvirt 11.3 from bookworm-backports into $second_libvirt_root" >&2
    unpack_from_backports "$second_libvirt_root" libvirt0 libvirt-common libvirt-clients \
        libvirt-daemon libvirt-daemon-common libvirt-daemon-log libvirt-daemon-driver-qemu
    local root="$second_libvirt_root/root"
    cat > "$second_libvirt_root.new/bin/virsh" <<WRAPPER
#!/bin/sh
LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu exec $root/usr/bin/virsh "\$@"
WRAPPER
    chmod +x "$second_libvirt_root.new/bin/virsh"
    rm -rf "$second_libvirt_root"
    mv "$second_libvirt_root.new" "$second_libvirt_root"
}

setup_venv() {
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    # "compat" editable mode puts the checkout on sys.path with a plain .pth line; the default
    # mode installs an import hook whose own imports cost every Python start in the venv
    # 13 ms here (python -c pass: 24 ms against 11), a qsnap command's start included.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --config-settings editable_mode=compat -e "$repo[test]"
    # An editable install leaves qsnap uncompiled, and where PYTHONDONTWRITEBYTECODE is set
    # Python never caches its bytecode: every qsnap command would compile the package again
    # (120 ms instead of 80 for a short command, measured here).
    "$venv/bin/python" -m compileall -q "$repo/qsnap" >/dev/null
}

if [ "${QSNAP_SKIP_SETUP:-}" = 1 ]; then
    return 0  # the caller (the test suite) already runs inside a prepared environment
fi
install_qemu
setup_venv
export PATH="$venv/bin:$PATH"
