"""The package's shape: imports run one way (no cycles), no private names taken from another
module, and no function over about 60 lines without a reason written above it.

Imports inside functions count too: a lazy import that closes a cycle is still a cycle.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "noscope"
MAX_LINES = 62  # "about 60": a signature and docstring may tip a short body over
REASON = "# Long:"  # a function over the limit says why on the line above it


def modules() -> dict[str, ast.Module]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        rel = p.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = ast.parse(p.read_text(), str(p))
    return out


def _target(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mods: dict[str, ast.Module]) -> dict[str, set[tuple[str, str]]]:
    """module -> {(imported module, name)} within the package."""
    out = {m: set() for m in mods}
    for m, tree in mods.items():
        is_package = (PACKAGE.parent / Path(*m.split(".")) / "__init__.py").is_file()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                tgt = _target(m, node, is_package)
                for alias in node.names:
                    sub = f"{tgt}.{alias.name}"
                    out[m].add((sub, "") if sub in mods else (tgt, alias.name))
            elif isinstance(node, ast.Import):
                out[m] |= {(a.name, "") for a in node.names if a.name.startswith("noscope.")}
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for nxt in sorted(graph.get(n, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycles():
    mods = modules()
    graph = {m: {t for t, _ in deps if t in mods and t != m and not m.startswith(t + ".")} for m, deps in imports(mods).items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_private_names_across_modules():
    bad = sorted(f"{m} takes {t}.{name}" for m, deps in imports(modules()).items() for t, name in deps
                 if name.startswith("_") and not name.endswith("__") and t != m)
    assert not bad, bad


@pytest.mark.parametrize("name", sorted(modules()))
def test_functions_are_short_or_say_why(name):
    tree = modules()[name]
    path = PACKAGE.parent / Path(*name.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    lines = path.read_text().splitlines()
    long = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            size = node.end_lineno - node.lineno + 1
            if size > MAX_LINES and not lines[first - 2].strip().startswith(REASON):
                long.append(f"{node.name} ({size} lines, line {node.lineno})")
    assert not long, long
