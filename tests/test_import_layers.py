"""The package's layers: no import cycle, and no import that points up.

Imports inside functions count (they hide a cycle, they do not remove it); imports under
``if TYPE_CHECKING:`` do not (they never run). Layers, low to high: ``errors``, ``files``,
``run_files``, ``config``, ``progress`` and the launch helpers ``train.parallel`` and
``train.sharding``;
``core``, ``data``, ``model``; ``train``; ``rundir``; ``scorers``, ``evaluation``,
``analysis``; ``reporting``; ``jobs``, ``integrations``; ``api``; ``cli``.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LOW = ("ila.core", "ila.data", "ila.model")
HIGHER_THAN_LOW = (
    "ila.jobs",
    "ila.scorers",
    "ila.evaluation",
    "ila.rundir",
    "ila.reporting",
    "ila.integrations",
    "ila.api",
    "ila.cli",
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "ila").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(test)


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The ila modules ``path`` imports anywhere (functions included), except under
    ``if TYPE_CHECKING:``."""
    found: set[str] = set()
    stack: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"))]
    while stack:
        node = stack.pop()
        if _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


LAYERS = (
    (
        "ila.errors",
        "ila.files",
        "ila.run_files",
        "ila.config",
        "ila.progress",
        "ila.train.parallel",
        "ila.train.sharding",
    ),
    ("ila.core", "ila.data", "ila.model"),
    ("ila.train",),
    ("ila.rundir",),
    ("ila.scorers", "ila.evaluation", "ila.analysis"),
    ("ila.reporting",),
    ("ila.jobs", "ila.integrations"),
    ("ila.api",),
    ("ila.cli", "ila.__main__", "ila"),
)


def _layer(name: str) -> int:
    """The layer of module ``name``: that of the longest prefix listed in LAYERS."""
    best, layer = "", -1
    for i, group in enumerate(LAYERS):
        for prefix in group:
            within = name == prefix or (prefix != "ila" and name.startswith(prefix + "."))
            if within and len(prefix) > len(best):
                best, layer = prefix, i
    return layer


def test_every_module_has_a_layer_and_imports_none_above_it():
    graph = _graph()
    assert [name for name in graph if _layer(name) < 0] == []
    upward = [
        f"{name} -> {target}"
        for name, targets in graph.items()
        for target in sorted(targets)
        if _layer(target) > _layer(name)
    ]
    assert upward == []


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_core_data_and_model_import_no_higher_layer():
    upward = [
        f"{name} -> {target}"
        for name, targets in _graph().items()
        if _within(name, LOW)
        for target in sorted(targets)
        if _within(target, HIGHER_THAN_LOW)
    ]
    assert upward == []


def test_only_the_package_and_the_cli_import_the_api_or_the_cli():
    allowed = {"ila", "ila.__main__", "ila.api", "ila.cli"}
    upward = [
        f"{name} -> {target}"
        for name, targets in _graph().items()
        if name not in allowed
        for target in sorted(targets)
        if target in ("ila.api", "ila.cli")
    ]
    assert upward == []


def test_the_checks_find_a_cycle_and_an_upward_import(tmp_path):
    """The walk itself works: a planted cycle and a function-level upward import are found,
    a TYPE_CHECKING import is not."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert _cycles(graph) == [["a", "b"]]
    source = "if TYPE_CHECKING:\n    import ila.api\ndef f():\n    from ila.jobs import pipeline\n"
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    known = dict.fromkeys(("ila.api", "ila.jobs", "ila.jobs.pipeline"), probe)
    assert _imports(probe, known) == {"ila.jobs.pipeline"}
