"""The shape of the house: no import circle, a config-free estimator core, short files, a README whose Layout is true.

Imports are read from the source with ``ast`` (every import statement, at module level or inside a function,
``TYPE_CHECKING`` blocks included), so a lazy import that closes a circle counts as much as a top-level one.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "freeenergy"
MAX_LINES = 450
# The estimator core: plain values in, plain values out; no config, no files, no consumer of it.
CORE = ("sampler", "batched", "estimator", "summary", "diagnostics", "auto", "calibration", "head")
CORE_MAY_NOT_IMPORT = ("omegaconf", "hydra", "freeenergy.records", "freeenergy.rank", "freeenergy.data")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement of ``path`` names (``from a.b import c`` names ``a.b`` and ``a.b.c``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {m for m in imported_modules(path) if m in modules and m != name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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


def test_there_is_no_import_circle_in_the_package():
    # a package's __init__ importing its own submodules is not a circle of meaning: leave those edges out
    graph = {
        name: {
            m
            for m in targets
            if not (PACKAGE.joinpath(*name.split(".")[1:], "__init__.py").exists() and m.startswith(name + "."))
        }
        for name, targets in import_graph().items()
    }
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_estimator_core_reads_no_config_and_no_files():
    offenders = {}
    for name in CORE:
        path = PACKAGE / "free_energy" / f"{name}.py"
        bad = sorted(m for m in imported_modules(path) if m.startswith(CORE_MAY_NOT_IMPORT))
        if bad:
            offenders[name] = bad
    assert not offenders, f"the estimator core imports config, bookkeeping, data or rank: {offenders}"


def test_no_file_of_the_package_is_longer_than_one_job():
    long = {
        str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these by job (at most {MAX_LINES} lines): {long}"


def test_the_readme_layout_lists_the_package_as_it_is():
    readme = (REPO / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    package = layout.split("src/freeenergy/\n", 1)[1]
    block = package.split("\n")[: next(i for i, line in enumerate(package.split("\n")) if not line.startswith("  "))]
    listed = set(re.findall(r"^  ([\w.]+/?)\s", "\n".join(block), flags=re.MULTILINE))
    tracked = subprocess.run(["git", "ls-files", "src/freeenergy"], cwd=REPO, capture_output=True, text=True).stdout
    entries = set()
    for line in tracked.split():
        part = Path(line).relative_to("src/freeenergy").parts
        if part[0] == "__init__.py":
            continue
        entries.add(part[0] + "/" if len(part) > 1 else part[0])
    if not entries:  # not a git checkout (e.g. an sdist): read the folder instead
        entries = {
            p.name + "/" if p.is_dir() else p.name
            for p in PACKAGE.iterdir()
            if not p.name.startswith(("_", ".")) and p.suffix in ("", ".py")
        }
    assert listed == entries, (
        f"README Layout lists {sorted(listed - entries)} that are not in src/freeenergy, and "
        f"misses {sorted(entries - listed)}"
    )
