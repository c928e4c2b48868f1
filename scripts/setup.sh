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
    # OVMF with QEMU's firmware descriptors, for UEFI guests (<os firmware='efi'>).
    install_debian_packages qemu-system-x86_64 qemu-system-x86 qemu-img qemu-utils \
        /usr/share/qemu/firmware/60-edk2-x86_64.json ovmf
}

setup_venv() {
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$repo[test]"
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
