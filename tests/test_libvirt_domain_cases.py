"""libvirt's own domain-XML → command-line cases (libvirt 10.7, QEMU 9.1) as the oracle of
qsnap's launcher, without QEMU: each case is equal, refused by name, or (a defect) another
machine than libvirt's. tests/libvirt_domain_cases.tsv holds the sorted list; a case that
gets worse fails here, and one that gets better asks for the list to be written anew."""

from __future__ import annotations

import collections

import pytest
from libvirt_domain_cases import _RANK, CASES, classify_all, read_baseline


@pytest.fixture(scope="module")
def verdicts() -> dict[str, tuple[str, str]]:
    if not CASES.is_dir():
        pytest.skip(f"libvirt's domain cases are not at {CASES} (../shared/conformance)")
    return {v.name: (v.verdict, v.reason) for v in classify_all()}


def test_every_case_is_equal_or_refused_by_name(verdicts: dict[str, tuple[str, str]]) -> None:
    counts = collections.Counter(verdict for verdict, _ in verdicts.values())
    print(f"\nlibvirt's {len(verdicts)} x86_64 cases: {dict(counts)} "
          f"({100 * counts['equal'] / len(verdicts):.1f} % equal)")
    different = {name: reason for name, (verdict, reason) in verdicts.items()
                 if verdict == "different"}
    known = {name for name, (verdict, _) in read_baseline().items() if verdict == "different"}
    assert set(different) <= known, {n: different[n] for n in set(different) - known}
    assert len(verdicts) == 761


def test_no_case_gets_worse(verdicts: dict[str, tuple[str, str]]) -> None:
    baseline = read_baseline()
    worse = {name: (baseline[name], now) for name, now in verdicts.items()
             if name in baseline and _RANK[now[0]] < _RANK[baseline[name][0]]}
    assert not worse, worse
    better = sorted(name for name, now in verdicts.items()
                    if name in baseline and _RANK[now[0]] > _RANK[baseline[name][0]])
    assert not better, ("better than the committed list: write it anew with `python "
                        f"tests/libvirt_domain_cases.py --write`: {better}")
    assert set(verdicts) == set(baseline)


def test_refusals_name_what_they_refuse(verdicts: dict[str, tuple[str, str]]) -> None:
    for name, (verdict, reason) in verdicts.items():
        if verdict == "refused":
            assert "<" in reason or "disk '" in reason, (name, reason)
