"""Both packages' import graphs, read from the source (ast, nothing imported): no import circle in the plug-in
(``subjectgen_diffusers``) or the trainer (``subjectgen_training``); the plug-in never imports the trainer (it is
the layer a diffusers user installs alone); and the trainer's layers point one way: ``cli`` -> ``commands`` -> ``ui``
-> everything else. Nothing below ``commands`` imports a
command module (shared work lives in the layer below them), and nothing below ``ui`` imports the web page.

An edge is an import of the module it names, at module level or inside a function (a lazy import is still a tie);
imports under ``if TYPE_CHECKING:`` are annotations only and do not count. ``from pkg import name`` is an edge to
``pkg.name`` when that is a module, else to the package ``pkg``; importing ``pkg.sub`` is not counted as importing
``pkg`` (Python runs the package's ``__init__`` first, which is how packages register their submodules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from _cli import REPO_ROOT

PACKAGE, ROOT = "subjectgen_training", REPO_ROOT / "training"
PLUGIN, PLUGIN_ROOT = "subjectgen_diffusers", REPO_ROOT / "subjectgen_diffusers"
# the command line, above every command (extras: its check of the extra a command needs, from the command table)
TOP = ("subjectgen_training.cli", "subjectgen_training.__main__", "subjectgen_training.extras")
COMMANDS, UI = "subjectgen_training.commands", "subjectgen_training.ui"


def module_files(package: str = PACKAGE, root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(sub) for sub in ast.walk(node))
    return inside


def imports_of(name: str, path: Path, known: set[str]) -> dict[str, int]:
    """``{imported module: first line}`` for the project modules ``name`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = _type_checking_nodes(tree)
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            if target in known and target != name:
                found.setdefault(target, node.lineno)
    return found


def import_graph(package: str = PACKAGE, root: Path = ROOT) -> dict[str, dict[str, int]]:
    files = module_files(package, root)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one circle through them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in graph:
        if node not in index:
            visit(node)
    return found


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_graph_is_read():
    """The reader sees the edges it guards (else an empty graph would pass everything below)."""
    graph = import_graph()
    assert "subjectgen_training.experiment.runner" in graph["subjectgen_training.experiment"]
    assert "subjectgen_training.trainer.loop" in graph["subjectgen_training.commands.train"]
    assert "subjectgen_training.ui.app" in graph["subjectgen_training.commands.ui"]
    plugin = import_graph(PLUGIN, PLUGIN_ROOT)
    assert "subjectgen_diffusers.families.base" in plugin["subjectgen_diffusers.families.sd1"]
    assert "subjectgen_diffusers.subject_parts" in plugin["subjectgen_diffusers.subject_format"]
    assert circles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package, root", [(PACKAGE, ROOT), (PLUGIN, PLUGIN_ROOT)], ids=[PACKAGE, PLUGIN])
def test_no_import_circle(package, root):
    graph = import_graph(package, root)
    described = [" -> ".join(c) + "  (" + "; ".join(f"{m} imports {sorted(set(graph[m]) & set(c))}" for m in c) + ")"
                 for c in circles(graph)]
    assert described == [], "import circles (move the shared work one layer down):\n" + "\n".join(described)


def test_commands_are_the_top_layer():
    """Only the command line imports command modules; only commands import the web page."""
    wrong = []
    for name, targets in import_graph().items():
        for target, line in targets.items():
            if _in(target, COMMANDS) and not (_in(name, COMMANDS) or name in TOP):
                wrong.append(f"{name}:{line} imports the command module {target}")
            if _in(target, UI) and not (_in(name, UI) or _in(name, COMMANDS) or name in TOP):
                wrong.append(f"{name}:{line} imports the web page's {target}")
    assert wrong == [], "move what they share into the layer below the commands:\n" + "\n".join(wrong)


def test_the_plugin_never_imports_the_trainer():
    """``pip install subjectgen-diffusers`` alone must load subjects: no plug-in module imports ``subjectgen_training``
    (at module level or lazily)."""
    wrong = []
    for name, path in module_files(PLUGIN, PLUGIN_ROOT).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            wrong += [f"{name}:{node.lineno} imports {target}" for target in names if _in(target, PACKAGE)]
    assert wrong == [], "the plug-in must stand alone:\n" + "\n".join(wrong)
