"""The snapshot tree: relations, orders, and what it does with inconsistent metadata."""

from __future__ import annotations

import pytest

from qsnap.errors import CorruptMetadataError, NoSnapshotError
from qsnap.model.tree import SnapshotSummary, SnapshotTree


def tree_of(links: dict[str, str | None], current: str | None = None) -> SnapshotTree:
    return SnapshotTree([SnapshotSummary(n, p, i, "running", False)
                         for i, (n, p) in enumerate(links.items())], current, domain="d")


#   a ── b ── d
#   │    └─── C        (capital: sorting is case-insensitive)
#   └─── c
#   x
LINKS = {"a": None, "b": "a", "c": "a", "d": "b", "C": "b", "x": None}


def test_relations() -> None:
    tree = tree_of(LINKS, current="d")
    assert tree.roots() == ["a", "x"]
    assert tree.children("a") == ["b", "c"]
    assert tree.children("b") == ["C", "d"]
    assert tree.parent("d") == "b" and tree.parent("a") is None
    assert tree.descendants("a") == ["b", "C", "d", "c"]
    assert tree.ancestors("d") == ["b", "a"]
    assert tree.leaves() == ["C", "c", "d", "x"]
    assert tree.is_leaf("x") and not tree.is_leaf("b")
    assert tree.current == "d" and len(tree) == 6 and "C" in tree


def test_topological_order_puts_parents_first() -> None:
    order = tree_of(LINKS).topological()
    assert sorted(order) == sorted(LINKS)
    for name, parent in LINKS.items():
        if parent:
            assert order.index(parent) < order.index(name)


def test_unknown_snapshot_is_named() -> None:
    with pytest.raises(NoSnapshotError, match="domain 'd' has no snapshot named 'zz'"):
        tree_of(LINKS).children("zz")


def test_missing_parent_becomes_root_with_a_problem_noted() -> None:
    tree = tree_of({"a": "gone", "b": "a"}, current="nope")
    assert tree.roots() == ["a"] and tree.parent("a") is None
    assert any("names parent 'gone'" in p for p in tree.problems)
    assert tree.current is None and any("'nope' does not exist" in p for p in tree.problems)


def test_cycle_is_reported() -> None:
    with pytest.raises(CorruptMetadataError, match="form a cycle"):
        tree_of({"r": None, "a": "b", "b": "a"})


def test_deep_chain_does_not_recurse() -> None:
    links = {"s0": None} | {f"s{i}": f"s{i - 1}" for i in range(1, 5000)}
    tree = tree_of(links)
    assert len(tree.descendants("s0")) == 4999 and tree.ancestors("s4999")[-1] == "s0"
