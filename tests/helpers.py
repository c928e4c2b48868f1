"""Shared test helpers: the libvirt conformance data, and a picture of a directory tree."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_DEFAULT_CONFORMANCE = REPO.parent / "shared" / "conformance" / "libvirt"


def conformance_dir() -> Path:
    """libvirt's snapshot test data, or a skip that says where it was looked for."""
    path = Path(os.environ.get("QSNAP_CONFORMANCE_DIR", _DEFAULT_CONFORMANCE))
    if not (path / "manifest.tsv").is_file():
        pytest.skip(f"libvirt conformance data not found at {path}: it ships only with the "
                    "qsnap workplace (../shared/conformance/libvirt); set QSNAP_CONFORMANCE_DIR "
                    "to a copy to run these tests")
    return path


@dataclass(frozen=True)
class Case:
    case: str
    input: str
    expected: str | None
    uuid: str | None
    creation_time: int
    flags: frozenset[str]


def manifest_cases(base: Path) -> list[Case]:
    cases = []
    header_seen = False
    for line in (base / "manifest.tsv").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if not header_seen:
            header_seen = True
            continue
        case, inp, exp, uuid, ctime, flags, _notes = line.split("\t")
        cases.append(Case(case, inp, None if exp == "-" else exp, None if uuid == "-" else uuid,
                          int(ctime), frozenset(f for f in flags.split(",") if f != "-")))
    return cases


#: Files a read may refresh without changing anything: the listing cache
#: (qsnap.store.summaries), rebuilt from the snapshot files whenever it disagrees with them.
CACHES = frozenset({"summaries.json", "definition.checked"})


def tree_picture(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under *root* with its mode and content (a link: where it points): equal
    pictures mean nothing changed. Caches (:data:`CACHES`) are left out."""
    picture = {}
    if root.exists():
        for path in sorted(root.rglob("*")):
            if path.name in CACHES or (path.suffix == ".lock" and path.parent.name == "locks"):
                continue  # a lock file holds its last holder's pid and operation, not data
            if path.is_symlink():
                picture[str(path.relative_to(root)) + "@"] = (0, os.readlink(path).encode())
            elif path.is_file():
                picture[str(path.relative_to(root))] = (path.stat().st_mode, path.read_bytes())
            else:
                picture[str(path.relative_to(root)) + "/"] = (path.stat().st_mode, b"")
    return picture


def crash_step_wanted(k: int) -> bool:
    """Whether a kill-at-every-step walk kills at step boundary *k*. scripts/test runs the
    suite on two or three QEMUs side by side and gives each a share of the boundaries of
    every walk, so that together they kill at all of them within CI's time:
    QSNAP_CRASH_STEPS=R/N kills where k % N == R % N, and R may list several residues
    (``3,4/4``: the third and fourth of every four). Unset, a walk kills at every boundary.
    The walk still runs the operation through to its end either way."""
    share = os.environ.get("QSNAP_CRASH_STEPS")
    if not share:
        return True
    parts, total = share.split("/")
    return k % int(total) in {int(p) % int(total) for p in parts.split(",")}


def crash_share() -> float:
    """The fraction of a walk's step boundaries this run kills at (1.0: all of them)."""
    share = os.environ.get("QSNAP_CRASH_STEPS")
    if not share:
        return 1.0
    parts, total = share.split("/")
    return len(parts.split(",")) / int(total)


def walks_every_step() -> bool:
    """Whether this run's walks kill at every step boundary (no QSNAP_CRASH_STEPS share):
    only then must one walk show each of its outcomes (rolled forward and back, ...); a
    share may miss the few boundaries of one, which another suite's share then has."""
    return not os.environ.get("QSNAP_CRASH_STEPS")
