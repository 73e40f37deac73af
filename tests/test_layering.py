"""The layering of DESIGN.md section 2, checked on every module's imports."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "crucible_kitchen"
# Code that users read as examples: it may import public namespaces only, never `pkg._x`.
# benchmarks/training_bench.py, gpu_bench.py and trl_bench.py are left out: they time the local
# torch backend's private pieces (model, optimizer, request queue, training step) one by one
# against hand-written loops.
USER_CODE = sorted(
    p
    for p in [*(ROOT / "docs").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    if p.name not in ("training_bench.py", "gpu_bench.py", "trl_bench.py")
)

# The bottom level: modules that import nothing from crucible_kitchen; every part may use them.
BOTTOM = {"errors", "_files", "_json", "_lazy"}

# What each top-level part of the package may import from crucible_kitchen (besides itself and
# the bottom level).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "_files": set(),
    "_json": set(),
    "_lazy": set(),
    "supervisors": {"errors"},
    "ports": {"errors"},
    "training": {"errors"},
    "telemetry": {"errors"},
    "adapters": {"errors", "ports", "training"},
    "stages": {"errors", "ports", "training", "telemetry"},
    "workflows": {"errors", "supervisors", "stages", "ports", "training", "telemetry"},
    "recipes": {"errors", "workflows", "stages", "ports", "training", "telemetry"},
    "testing": {
        "errors",
        "supervisors",
        "ports",
        "training",
        "telemetry",
        "adapters",
        "stages",
        "workflows",
        "recipes",
        "kitchen",
        "__init__",
    },
    "kitchen": {
        "errors",
        "supervisors",
        "ports",
        "training",
        "telemetry",
        "adapters",
        "stages",
        "workflows",
        "recipes",
    },
    "service": {"__init__", "errors", "kitchen", "telemetry", "recipes", "ports", "adapters"},
    "cli": {"__init__", "errors", "kitchen", "telemetry", "recipes", "ports", "service"},
    "__init__": {
        "errors",
        "supervisors",
        "kitchen",
        "ports",
        "telemetry",
        "recipes",
        "workflows",
        "stages",
    },
}
HEAVY = ("torch", "aiohttp", "opentelemetry.sdk", "trio", "safetensors", "tokenizers", "numpy")


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (type-only imports bind nothing)."""
    nodes: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = []
    package = ".".join(("crucible_kitchen", *path.relative_to(PACKAGE).parent.parts))
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.append(module)
    return names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_imports_only_the_layers_below_it(path: Path) -> None:
    part = _part(path)
    allowed = ALLOWED[part] | {part} | (set() if part in BOTTOM else BOTTOM)
    for name in _imports(path):
        if not name.startswith("crucible_kitchen"):
            continue
        target = name.split(".")[1] if "." in name else "__init__"
        assert target in allowed, f"{path.relative_to(PACKAGE)} ({part}) imports {name}"
        if part == "adapters" and target == "adapters":
            own = path.relative_to(PACKAGE).parts[1]
            assert name.split(".")[2] == own, f"an adapter imports another backend: {name}"


def _imported_names(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """Every ``crucible_kitchen`` module or name imported (type-only imports too), dotted."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return [(line, name) for line, name in names if name.startswith("crucible_kitchen.")]


def _private_owner(name: str) -> str | None:
    """The package whose private module ``name`` reaches into (``crucible_kitchen.stages`` for
    ``crucible_kitchen.stages._common.X``); None for a public path or the root's own helpers
    (``crucible_kitchen._files``), which every package inside the root may use."""
    parts = name.split(".")
    for index, part in enumerate(parts[1:], start=1):
        if part.startswith("_") and not part.startswith("__"):
            return None if index == 1 else ".".join(parts[:index])
    return None


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_another_packages_private_module(path: Path) -> None:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    module = ".".join(rel.parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for line, name in _imported_names(ast.parse(path.read_text(), str(path)), package):
        owner = _private_owner(name)
        assert owner is None or module == owner or module.startswith(f"{owner}."), (
            f"{rel}.py:{line} imports {name}: go through {owner}'s public names"
        )


@pytest.mark.parametrize("path", USER_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_and_benchmarks_import_public_names_only(path: Path) -> None:
    """No private module, and from a public namespace only what its ``__all__`` lists."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        else:
            continue
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        for module_name in modules:
            if not module_name.startswith("crucible_kitchen"):
                continue
            assert _private_owner(f"{module_name}.x") is None, f"{where} imports {module_name}"
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(module_name)
                for alias in node.names:
                    public = alias.name in module.__all__ or (
                        isinstance(getattr(module, alias.name, None), ModuleType)
                        and not alias.name.startswith("_")
                    )
                    assert public, f"{where} imports {module_name}.{alias.name}, not public"


def test_importing_the_package_stays_light() -> None:
    code = "import sys, crucible_kitchen; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY or m.startswith(HEAVY)]
    assert not heavy, f"`import crucible_kitchen` imported {heavy}"
