"""Rules for snapshot and domain names.

Both become file or folder names in the state directory, so besides libvirt's rules (no ``/``,
no leading ``.``) a name must fit in one path component and can never step out of its folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from qsnap.errors import InvalidArgumentError

#: Bytes a single file name may take on Linux file systems.
NAME_MAX = 255
#: Bytes a whole path may take in one system call (PATH_MAX, with its NUL).
PATH_MAX = 4096
#: Room kept for the ``.xml`` suffix of metadata files.
_SUFFIX = len(".xml")


def _check(kind: str, name: str | None) -> str:
    if name is None or name == "":
        raise InvalidArgumentError(f"invalid {kind} name '': a name can't be empty")
    if "\0" in name:
        raise InvalidArgumentError(f"invalid {kind} name {name!r}: name can't contain NUL")
    if "/" in name:
        raise InvalidArgumentError(f"invalid {kind} name '{name}': name can't contain '/'")
    if name.startswith("."):
        raise InvalidArgumentError(f"invalid {kind} name '{name}': name can't start with '.'")
    if len(name.encode("utf-8")) + _SUFFIX > NAME_MAX:
        raise InvalidArgumentError(
            f"invalid {kind} name '{name[:40]}...': name is longer than "
            f"{NAME_MAX - _SUFFIX} bytes, too long for a file name")
    return name


def check_snapshot_name(name: str | None) -> str:
    """Return *name* if it can name a snapshot; otherwise raise a clear error.

    libvirt refuses ``/`` and a leading ``.`` (which also covers ``.`` and ``..``); qsnap adds
    empty names, NUL and names too long to be a file name.
    """
    return _check("snapshot", name)


def check_domain_name(name: str | None) -> str:
    """Return *name* if it can name a domain folder; otherwise raise a clear error."""
    return _check("domain", name)


def default_snapshot_name(creation_time: int) -> str:
    """libvirt's default: the creation time in seconds, as a decimal string."""
    return str(creation_time)


def check_new_file_path(what: str, path: str, hint: str = "") -> str:
    """Return *path* if a file can be created under that name; else a clear error naming
    *what* it is for. Checked before anything is recorded or written: a name the file system
    refuses would otherwise fail half-way through an operation (issue 15: a snapshot name of
    251 bytes made a default overlay name of over 255, and ``qemu-img create`` failed after
    the intent record was written)."""
    encoded = path.encode("utf-8", errors="surrogateescape")
    if len(encoded) >= PATH_MAX:
        raise InvalidArgumentError(f"{what} '{path[:60]}...' is a path of {len(encoded)} bytes; "
                                   f"the limit is {PATH_MAX - 1}", path=path)
    for part in encoded.split(b"/"):
        if len(part) > NAME_MAX:
            name = part.decode("utf-8", errors="replace")
            raise InvalidArgumentError(
                f"{what} '{path[:60]}...': its name '{name[:40]}...' is {len(part)} bytes, "
                f"longer than the {NAME_MAX} a file name may have{hint}", path=path)
    return path


def absolute_file(what: str, path: str | os.PathLike[str]) -> Path:
    """*path* as a :class:`Path` if it is absolute; else a clear error naming *what* it is.

    One rule for every file argument of the API (a save image, a memory file, an overlay in
    snapshot XML): an embedder's working directory is not a meaningful place to resolve a
    name against, and libvirt refuses relative paths inside its XML. The command line makes
    its own file operands absolute first, as virsh's client library does for save/restore."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        raise InvalidArgumentError(f"{what} path '{text}' must be absolute", path=text)
    return Path(text)
