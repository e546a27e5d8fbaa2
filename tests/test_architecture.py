"""The house's floors: no import circles among metakit's modules, and the core imports no domain.

The imports are read from the source (every ``import`` statement, at module level or inside a
function, but not under ``if TYPE_CHECKING:``), so a lazy import counts as an arrow too: it is
still a dependency, only a later one. Domains reach the core through their plugins
(:mod:`metakit.registry`), which the core loads by entry point, never by an import statement.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
DOMAINS = ("metakit.text", "metakit.rl", "metakit.recsys", "metakit.nas", "metakit.hpo", "metakit.segmentation")

# Circles still to remove (none: a new circle fails the test below).
KNOWN_CYCLES: list[set[str]] = []

# Core -> domain arrows still to remove (none: predict asks the text plugin to prepare sentences).
KNOWN_CORE_TO_DOMAIN: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    modules = {}
    for path in (SRC / "metakit").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _owner(name: str) -> str:
    """The metakit module an imported name lives in (``metakit.a.b.func`` -> ``metakit.a.b``)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(tree: ast.AST, package: str = "metakit") -> Iterator[str]:
    """The metakit modules that the statements in ``tree`` import; ``package`` anchors relative imports."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue  # annotations only: never executed
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            if module.startswith("metakit"):
                for alias in node.names:
                    # `from metakit.nas import network` imports the submodule; `from metakit.nas import X` the package.
                    yield _owner(f"{module}.{alias.name}")
        elif isinstance(node, ast.Import):
            yield from (_owner(a.name) for a in node.names if a.name.startswith("metakit"))
        yield from _imports(node, package)


def import_graph() -> dict[str, set[str]]:
    """Module -> the metakit modules it imports (itself left out)."""
    graph = {}
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {t for t in _imports(ast.parse(path.read_text(encoding="utf-8")), package) if t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan), i.e. the import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _domain(module: str) -> str | None:
    return next((d for d in DOMAINS if module == d or module.startswith(d + ".")), None)


def test_the_walker_sees_lazy_imports_and_circles():
    tree = ast.parse("import os\ndef f():\n    from metakit.nas.search import search\n")
    assert list(_imports(tree)) == ["metakit.nas.search"]
    assert list(_imports(ast.parse("from .genotype import draw\nfrom .. import cli"), "metakit.nas")) == [
        "metakit.nas.genotype", "metakit.cli"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_circles_beyond_the_known_ones():
    new = [sorted(c) for c in cycles(import_graph()) if not any(c <= known for known in KNOWN_CYCLES)]
    assert not new, f"import circles: {new}"


def test_the_core_imports_no_domain():
    arrows = {(a, b) for a, targets in import_graph().items() if _domain(a) is None
              for b in targets if _domain(b) is not None}
    assert arrows <= KNOWN_CORE_TO_DOMAIN, f"the core imports a domain: {sorted(arrows - KNOWN_CORE_TO_DOMAIN)}"


def test_backbones_and_learners_import_no_domain_at_all():
    # The circle the plugins removed: backbones.py used to import metakit.nas.network.
    graph = import_graph()
    for module in ("metakit.backbones", "metakit.learners", "metakit.cli", "metakit.registry", "metakit.plugin"):
        assert not {t for t in graph[module] if _domain(t)}, module


def test_the_cli_parser_loads_every_plugin_and_no_torch():
    """``metakit --help`` loads every plugin module: they must stay light, so the CLI starts fast."""
    code = ("import sys, metakit.cli; metakit.cli.build_parser(); "
            "plugins = sorted(m for m in sys.modules if m.endswith('.plugin')); "
            "heavy = [m for m in ('torch', 'numpy', 'gymnasium', 'optuna') if m in sys.modules]; "
            "print(plugins, heavy)")
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True).stdout
    plugins = ["metakit.plugin", *(f"{d}.plugin" for d in DOMAINS)]
    assert out.strip() == f"{sorted(plugins)} []"


#: The house's floors, bottom to top (docs/architecture.md draws them). A module may import its own
#: floor and the floors below, never one above: the foundation knows nothing of data, the data layer
#: nothing of models, and no library module knows the command line that assembles them.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("metakit.errors", "metakit.utils", "metakit.config", "metakit.registry", "metakit.inner",
                    "metakit.runs", "metakit.calibration", "metakit.commands")),
    ("data", ("metakit.datasets", "metakit.episodes", "metakit.feature_cache")),
    ("models", ("metakit.backbones", "metakit.pretrained", "metakit.learners")),
    ("workflows", ("metakit.training", "metakit.evaluation", "metakit.experiment", "metakit.reporting", "metakit.compare",
                   "metakit.continual", "metakit.pretraining", "metakit.distributed", "metakit.reproduce",
                   "metakit.predict", "metakit.serve")),
    ("domains", (*DOMAINS, "metakit.plugin")),
    # The command line, and the package itself, whose ``metakit.load`` is the Python entry point.
    ("entry", ("metakit.cli", "metakit.__main__", "metakit")),
]


def floor_of(module: str) -> int:
    """The floor index of ``module``: its longest matching prefix in :data:`FLOORS`."""
    best, length = None, -1
    for i, (_, prefixes) in enumerate(FLOORS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > length:
                best, length = i, len(p)
    assert best is not None, f"{module} is on no floor: add it to FLOORS (and to docs/architecture.md)"
    return best


def test_every_module_is_on_a_floor_and_no_arrow_runs_up():
    graph = import_graph()
    up = sorted(f"{a} ({FLOORS[floor_of(a)][0]}) -> {b} ({FLOORS[floor_of(b)][0]})"
                for a, targets in graph.items() for b in targets if floor_of(b) > floor_of(a))
    assert not up, "imports that run up a floor: " + "; ".join(up)


def test_the_floor_check_can_fail():
    assert floor_of("metakit.learners.maml") == 2 and floor_of("metakit.rl.cli") == 4 and floor_of("metakit") == 5
    assert floor_of("metakit.cli") > floor_of("metakit.rl.cli") > floor_of("metakit.training") > floor_of("metakit.episodes")
