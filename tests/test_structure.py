"""The package's shape, as issue 30 asked for it: no import cycle inside qsnap (counting the
imports inside functions and those for type checkers), and no function in engine/ over 60
lines (an operation's steps are named functions, not one long body)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "qsnap"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Each module's qsnap modules, by every import statement in it (a package counts as
    its __init__; ``from pkg import name`` as pkg.name where that is a module)."""

    def resolve(name: str) -> str:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                if target.startswith("qsnap."):
                    found = resolve(target)
                    if found != name and found in modules:
                        graph[name].add(found)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        trail.append(node)
        for after in sorted(graph[node]):
            if state.get(after) == 1:
                return [*trail[trail.index(after):], after]
            if after not in state and (found := visit(after)):
                return found
        state[node] = 2
        trail.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycle() -> None:
    assert _cycle(_imports(_modules())) is None


def test_the_cycle_finder_finds_one() -> None:
    """The check above can fail: a made-up graph with a cycle is reported."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_no_function_in_the_engine_is_over_60_lines() -> None:
    long = [f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in (PACKAGE / "engine").rglob("*.py")
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno is not None and node.end_lineno - node.lineno + 1 > 60]
    assert long == []


#: Modules every layer may use: no qsnap imports of their own beyond errors.
UTILITIES = {"errors", "lazy", "logs", "faults", "procfs", "timeouts", "children", "progress"}

#: What each layer may import besides the utilities (docs/architecture.md draws it): data
#: flows one way, model -> plan -> monitor / store / images / launcher -> engine -> cli.
LAYERS = {
    "model": set(),
    "plan": {"model"},
    "monitor": {"model"},
    "store": {"model"},
    "images": {"model"},
    "launcher": {"model", "plan", "monitor", "images"},
    "engine": {"model", "plan", "monitor", "store", "images", "launcher"},
    "cli": {"engine", "model", "plan", "store"},
}


def test_each_layer_imports_only_the_layers_below_it() -> None:
    def layer(module: str) -> str:
        return module.split(".")[1] if "." in module else "qsnap"

    wrong = sorted(f"{source} -> {target}"
                   for source, targets in _imports(_modules()).items()
                   for target in targets
                   if layer(source) in LAYERS and layer(target) != layer(source)
                   and layer(target) not in LAYERS[layer(source)] | UTILITIES)
    assert wrong == []


#: Handlers that call more than one engine or reader method, and why (issue 30 asks for
#: one; these are the ones left, each a choice between methods by option, or a read-then-
#: write that must not hold the domain's lock in between).
SEVERAL_CALLS = {
    "cmd_list": "--json reads domains(), the table the quicker domain_states()",
    "cmd_snapshot_list": "--tree reads tree(), --json current() beside snapshots()",
    "cmd_snapshot_current": "setting (engine.set_current) or showing (reader.current, get_xml)",
    "cmd_snapshot_parent": "current() only to name the snapshot in the error",
    "cmd_blockjob": "a job posted on the board (another process waits on it) comes first",
    "cmd_snapshot_edit": "read, the editor, then write with the text read: no lock is held "
                         "while the editor is open",
}


def _engine_or_reader_call(node: ast.AST) -> str | None:
    """'engine.M' or 'reader.M' for a call engine.M(...) or RUN.reader.M(...), else None."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return None
    owner = node.func.value
    if isinstance(owner, ast.Name) and owner.id == "engine":
        return f"engine.{node.func.attr}"
    if isinstance(owner, ast.Attribute) and owner.attr == "reader":
        return f"reader.{node.func.attr}"
    return None


def test_each_command_handler_calls_one_engine_or_reader_method() -> None:
    """The command line holds no operation logic: a handler parses, calls the engine or
    the reader, and prints. (The old snapshot-edit --rename was five and more engine calls
    in the CLI, and a crash between them left half a rename.)"""
    found: dict[str, set[str]] = {}
    for path in (PACKAGE / "cli").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and \
                    node.name.startswith("cmd_"):
                calls = (_engine_or_reader_call(inner) for inner in ast.walk(node))
                found[node.name] = {call for call in calls if call is not None}
    assert len(found) > 30
    assert [name for name, calls in found.items() if not calls] == []
    assert {name for name, calls in found.items() if len(calls) > 1} == set(SEVERAL_CALLS)
