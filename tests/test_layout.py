"""The package layout keeps its promises: no import cycles, a framework-free core that imports
neither twin, an MLX twin without torch, twins that mirror each other, files of readable size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("starflow_core", "starflow_mlx", "starflow_torch", "starflow_convert")
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def imported_modules(path: Path, name: str) -> set[str]:
    """Every module this file imports anywhere (top level, functions, TYPE_CHECKING), absolute."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import x`
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_modules(path, name):
            # the deepest of our modules that this import names
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None. A package's __init__ importing its own
    submodules is not a cycle unless a submodule imports the package back (that counts)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    graph = import_graph()
    # a package __init__ re-exporting its submodules is the usual layout, not a cycle
    for name in graph:
        if (REPO / name.replace(".", "/") / "__init__.py").is_file():
            graph[name] = set()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("starflow_core", ("starflow_mlx", "starflow_torch", "mlx", "torch")),
        ("starflow_mlx", ("starflow_torch", "torch", "diffusers", "transformers")),
        ("starflow_torch", ("starflow_mlx", "mlx")),
    ],
)
def test_packages_import_only_what_they_may(package, forbidden):
    offenders = []
    for name, path in package_modules().items():
        if not name.startswith(package):
            continue
        for imported in imported_modules(path, name):
            root = imported.split(".")[0]
            if root in forbidden:
                offenders.append(f"{name} imports {imported}")
    assert not offenders, "\n".join(sorted(set(offenders)))


def test_files_are_readable_in_one_sitting():
    too_long = {
        str(path.relative_to(REPO)): n
        for path in sorted(REPO.glob("*/**/*.py"))
        if path.parts[len(REPO.parts)] in (*PACKAGES, "examples", "benchmarks")
        and (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not too_long, f"files over {MAX_LINES} lines: {too_long}"


def test_twins_mirror_each_other_file_for_file():
    """Every module of one twin has its namesake in the other, except the listed framework-only ones."""
    mlx_only = {"blas", "command_setup", "quantize", "t5", "wan_vae_layers"}
    torch_only = {"training/parallel", "sample"}

    def modules(package: str) -> set[str]:
        root = REPO / package
        return {str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.py")}

    mlx, torch = modules("starflow_mlx"), modules("starflow_torch")
    assert mlx - torch == mlx_only, f"MLX modules without a torch twin: {sorted(mlx - torch - mlx_only)}"
    assert torch - mlx == torch_only, f"torch modules without an MLX twin: {sorted(torch - mlx - torch_only)}"
