"""huabu's layers, bottom to top: core <- engine <- training <- tiny <- faces (cli, ui, server).

A module may import from its own layer and the layers below it, never above; imports inside functions count too.
Faces may use each other only as the command line does: `huabu.cli` starts the studio and the server, never the
other way round. ARCHITECTURE.md describes what each layer holds.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "huabu"
LAYERS = {"core": 0, "engine": 1, "training": 2, "tiny": 3, "ui": 4, "server": 4, "cli": 5}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every huabu import in the file, at any depth of the syntax tree."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports"
            for alias in node.names:  # `from package import module` imports the module
                submodule = f"{node.module}.{alias.name}"
                found.append((node.lineno, submodule if _is_module(submodule) else node.module or ""))
    return [(line, name) for line, name in found if name == "huabu" or name.startswith("huabu.")]


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__version__":
        return -1  # the root package holds only the version
    return LAYERS.get(parts[1])


def test_every_module_is_in_a_layer():
    stray = [_module_name(p) for p in PACKAGE.rglob("*.py") if _layer(_module_name(p)) is None
             and _module_name(p) != "huabu"]
    assert not stray, f"modules outside the layers {sorted(LAYERS)}: {stray}"


def test_no_upward_imports():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        own = _layer(module)
        for line, target in _imports(path):
            if _layer(target) is not None and _layer(target) > own:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports {target}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_root_package_is_only_the_version():
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    assert not any(isinstance(node, (ast.Import, ast.ImportFrom)) for node in ast.walk(tree))


def test_no_private_names_across_modules():
    """A leading underscore means "this module's own": another module that needs it wants a public name."""
    borrowed = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("huabu"):
                borrowed += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.module}.{alias.name}"
                             for alias in node.names if alias.name.startswith("_") and alias.name != "__version__"]
    assert not borrowed, "private names imported from other modules:\n" + "\n".join(borrowed)


def test_no_import_cycles():
    """Modules import each other one way only (imports inside functions too): a cycle means two modules that are
    really one, or a piece of one that belongs lower down."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        graph[module] = {
            target for _, target in _imports(path) if _is_module(target) and target not in (module, "huabu")
        }
    cycles, seen = [], set()

    def walk(module: str, trail: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in trail:
                cycle = trail[trail.index(target):]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    cycles.append(" -> ".join([*cycle, target]))
            elif len(trail) < 12:
                walk(target, [*trail, target])

    for module in sorted(graph):
        walk(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
