"""Structure figures for the closing notes: imports between stage folders, import cycles, largest modules.

Run as `python -m tools.structure [--json]` from the repository root. It reads the source with `ast` only (no
imports of the project), so the same file can be copied into an older checkout and measure it as it was.
Every import statement counts, including those inside functions and under `if TYPE_CHECKING:`: a late import
still ties two modules together, it only hides the knot from the interpreter.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "services", "tools")
LARGEST = 5


@dataclass(frozen=True)
class Module:
    """One project module: its dotted name, its file and whether it is a package's `__init__`."""

    name: str
    path: Path
    is_package: bool


@dataclass(frozen=True)
class Import:
    """One import statement's edge: the importing module, the imported project module, the statement's line."""

    source: str
    target: str
    line: int


def project_modules(root: Path = ROOT) -> dict[str, Module]:
    """Every module under the project's packages, by dotted name."""
    modules: dict[str, Module] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if "__pycache__" in parts:
                continue
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join(parts)
            modules[name] = Module(name, path, is_package)
    return modules


def _known(dotted: str, modules: dict[str, Module]) -> str | None:
    """The longest prefix of `dotted` that is a project module (`a.b.NAME` names module `a.b`)."""
    parts = dotted.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _from_base(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.name.split(".")
    if not module.is_package:
        package.pop()
    if node.level > 1:
        package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, node.module] if node.module else package)


def imports_of(module: Module, modules: dict[str, Module]) -> Iterator[Import]:
    """The project modules that `module` imports, one edge per (statement, imported module)."""
    tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
    for node in ast.walk(tree):
        targets: set[str] = set()
        if isinstance(node, ast.Import):
            targets = {t for alias in node.names if (t := _known(alias.name, modules))}
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(module, node)
            for alias in node.names:
                # `from pkg import name` imports submodule pkg.name when there is one, else pkg itself.
                target = _known(f"{base}.{alias.name}", modules) if alias.name != "*" else None
                target = target or _known(base, modules)
                if target:
                    targets.add(target)
        else:
            continue
        for target in sorted(targets - {module.name}):
            yield Import(module.name, target, node.lineno)


def stage_of(module: str) -> str | None:
    """The folder under services/ that holds `module`, or None outside them."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "services" else None


def stage_arrows(edges: list[Import]) -> dict[tuple[str, str], int]:
    """Import statements from one services/ folder into another, counted per arrow."""
    statements: dict[tuple[str, str], set[tuple[str, int]]] = {}
    for edge in edges:
        source, target = stage_of(edge.source), stage_of(edge.target)
        if source and target and source != target:
            statements.setdefault((source, target), set()).add((edge.source, edge.line))
    return {arrow: len(seen) for arrow, seen in sorted(statements.items())}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of two or more modules (Tarjan): each group is one knot of import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def enter(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)

    def visit(start: str) -> None:
        # Iterative, so a deep import chain cannot hit the recursion limit.
        enter(start)
        work = [(start, iter(sorted(graph.get(start, ()))))]
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    enter(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def cycle_arrows(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """The imports inside one cycle group, as `a -> b` lines."""
    members = set(group)
    return [f"{a} -> {b}" for a in group for b in sorted(graph.get(a, set()) & members)]


def largest(modules: dict[str, Module], root: Path = ROOT, count: int = LARGEST) -> list[tuple[str, int]]:
    """The `count` longest modules as (path, lines), longest first."""
    sizes = [
        (str(m.path.relative_to(root)), len(m.path.read_text(encoding="utf-8").splitlines())) for m in modules.values()
    ]
    return sorted(sizes, key=lambda item: (-item[1], item[0]))[:count]


def measure(root: Path = ROOT) -> dict[str, object]:
    """All the figures, as one JSON-ready dict."""
    modules = project_modules(root)
    edges = [edge for module in modules.values() for edge in imports_of(module, modules)]
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
    arrows = stage_arrows(edges)
    found = cycles(graph)
    return {
        "stage_arrows": [{"from": a, "to": b, "statements": n} for (a, b), n in arrows.items()],
        "stage_arrow_count": len(arrows),
        "stage_import_statements": sum(arrows.values()),
        "cycles": [{"modules": group, "imports": cycle_arrows(graph, group)} for group in found],
        "cycle_count": len(found),
        "largest_modules": [{"path": path, "lines": lines} for path, lines in largest(modules, root)],
        "modules": len(modules),
    }


def render(figures: dict[str, object]) -> str:
    """The figures as the plain text the closing note quotes."""
    arrows = figures["stage_arrows"]
    cycle_list = figures["cycles"]
    biggest = figures["largest_modules"]
    assert isinstance(arrows, list) and isinstance(cycle_list, list) and isinstance(biggest, list)
    lines = [
        f"Imports between folders under services/: {figures['stage_arrow_count']} arrows, "
        f"{figures['stage_import_statements']} import statements"
    ]
    lines += [f"  {a['from']} -> {a['to']}  ({a['statements']})" for a in arrows]
    lines.append(f"Import cycles among {figures['modules']} modules of {', '.join(PACKAGES)}: {figures['cycle_count']}")
    for cycle in cycle_list:
        lines.append("  {" + ", ".join(cycle["modules"]) + "}")
        lines += [f"    {arrow}" for arrow in cycle["imports"]]
    lines.append(f"Largest {len(biggest)} modules by lines:")
    lines += [f"  {m['lines']:>5}  {m['path']}" for m in biggest]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the figures, as text or (--json) as JSON."""
    parser = argparse.ArgumentParser(prog="python -m tools.structure", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    figures = measure()
    print(json.dumps(figures, indent=2) if args.json else render(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
