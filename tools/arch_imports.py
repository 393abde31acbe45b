"""Count how the rooms of ctrlplane/ reach into each other (docs/architecture.md, "Doors").

A room is a top-level subpackage of ctrlplane (instances/, network/, web/, ...). Every import is
counted, at module level or inside a function, including those under TYPE_CHECKING:

- cross-room models imports: an import of another room's `models` module (`from
  ctrlplane.instances.models import Instance`, `from ctrlplane.instances import models`);
- coupled pairs: unordered room pairs where either room imports the other;
- mutual pairs: unordered room pairs where each room imports the other (a cycle of two).

Usage: python tools/arch_imports.py [--detail] [--room NAME=module,module] [path to the ctrlplane package]

``--room web=boundary,context,http`` counts top-level modules (``ctrlplane/boundary.py``, ...) as
one room, to measure a tree from before they were gathered into a package on the same terms.
Standard library only, so it runs without the project installed.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

PACKAGE = "ctrlplane"


def rooms_of(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Every module a file imports; `from a import b` also names `a.b` (b may be a module)."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append(base)
            found.extend(f"{base}.{alias.name}" for alias in node.names)
    return found


def room_of(module: str, rooms: set[str], grouped: dict[str, str]) -> str | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == PACKAGE and parts[1] in rooms:
        return parts[1]
    if len(parts) == 2 and parts[0] == PACKAGE:
        return grouped.get(parts[1])
    return None


def measure(root: Path, grouped: dict[str, str]) -> tuple[list[tuple[str, str]], set[tuple[str, str]]]:
    """The cross-room models imports (importing file, models module) and the directed room edges."""
    rooms = rooms_of(root)
    models_imports: list[tuple[str, str]] = []
    edges: set[tuple[str, str]] = set()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent)
        is_package = path.name == "__init__.py"
        module = ".".join(relative.with_suffix("").parts)
        if is_package:
            module = module.removesuffix(".__init__")
        source = room_of(module, rooms, grouped)
        if source is None:
            continue
        seen_models: set[str] = set()
        for target_module in imported_modules(ast.parse(path.read_text()), module, is_package):
            target = room_of(target_module, rooms, grouped)
            if target is None or target == source:
                continue
            edges.add((source, target))
            parts = target_module.split(".")
            if len(parts) == 3 and parts[2] == "models" and target_module not in seen_models:
                seen_models.add(target_module)
                models_imports.append((str(relative), target_module))
    return models_imports, edges


def main(argv: list[str]) -> int:
    detail = "--detail" in argv
    grouped: dict[str, str] = {}
    paths: list[str] = []
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--room":
            name, _, modules = next(arguments).partition("=")
            grouped.update(dict.fromkeys(modules.split(","), name))
        elif not argument.startswith("--"):
            paths.append(argument)
    root = Path(paths[0]) if paths else Path(__file__).resolve().parent.parent / PACKAGE
    models_imports, edges = measure(root, grouped)
    coupled = {tuple(sorted(edge)) for edge in edges}
    mutual = {tuple(sorted(edge)) for edge in edges if (edge[1], edge[0]) in edges}
    print(f"rooms: {len(rooms_of(root) | set(grouped.values()))}")
    print(f"cross-room models imports (file, models module): {len(models_imports)}")
    print(f"coupled room pairs (either direction): {len(coupled)}")
    print(f"mutual room pairs (both directions): {len(mutual)}")
    if detail:
        by_target = Counter(target for _, target in models_imports)
        print("\nmodels imported from other rooms, by module:")
        for target, count in by_target.most_common():
            print(f"  {count:3d}  {target}")
        print("\nmutual pairs:")
        for a, b in sorted(mutual):
            print(f"  {a} <-> {b}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
