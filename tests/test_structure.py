"""The package's shape: imports run one way (no cycles), no private names taken from another
module, and no function over about 60 lines without a reason written above it.

Imports inside functions count too: a lazy import that closes a cycle is still a cycle.
"""

import ast
import re
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


def length_findings(source: str) -> list[str]:
    """Functions over MAX_LINES without a `# Long:` reason on the line above, and functions with such
    a reason that are short now (a reason left behind by a change that shortened them)."""
    lines = source.splitlines()
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            size = node.end_lineno - node.lineno + 1
            says = first >= 2 and lines[first - 2].strip().startswith(REASON)
            if size > MAX_LINES and not says:
                out.append(f"{node.name} ({size} lines, line {node.lineno}) is long and does not say why")
            elif size <= MAX_LINES and says:
                out.append(f"{node.name} ({size} lines, line {node.lineno}) says why it is long, but is not")
    return out


@pytest.mark.parametrize("name", sorted(modules()))
def test_functions_are_short_or_say_why(name):
    path = PACKAGE.parent / Path(*name.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    assert not length_findings(path.read_text())


def test_the_length_check_finds_both_kinds():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    assert length_findings(f"def long():\n{body}") == [f"long ({MAX_LINES + 1} lines, line 1) is long and does not say why"]
    assert length_findings(f"{REASON} because\ndef long():\n{body}") == []
    assert length_findings(f"{REASON} stale\ndef short():\n    return 1\n") == [
        "short (2 lines, line 2) says why it is long, but is not"]


# The command layer reads the configuration into typed settings (noscope.settings); nothing below it
# takes the raw tree. These parameters named "cfg" are something else, and say so here.
CONFIG_READERS = {"noscope.cli", "noscope.config", "noscope.settings"}
NOT_THE_CONFIG = {
    ("noscope.reference", "load_reference"): "cfg is a Darknet .cfg file (--reference-cfg), not the configuration",
    ("noscope.reference", "_yolo_tiny_files"): "cfg is a Darknet .cfg file",
    ("noscope.reference", "_darknet_files"): "cfg is a Darknet .cfg file",
}


def _config_like(name: str) -> bool:
    return name in ("cfg", "config", "ocfg", "tcfg", "rcfg", "lcfg") or name.endswith("_cfg")


def test_no_function_below_the_command_layer_takes_the_raw_configuration():
    bad = []
    for m, tree in modules().items():
        if m in CONFIG_READERS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (m, node.name) not in NOT_THE_CONFIG:
                a = node.args
                bad += [f"{m}.{node.name}({p.arg})" for p in a.posonlyargs + a.args + a.kwonlyargs if _config_like(p.arg)]
    assert not bad, bad


def test_the_raw_configuration_check_finds_a_cfg_parameter():
    tree = ast.parse("def f(video, cfg):\n    return cfg['train']\n")
    node = tree.body[0]
    assert [p.arg for p in node.args.args if _config_like(p.arg)] == ["cfg"]


def test_no_module_outside_the_optimizer_imports_it_for_a_type():
    """The cascade's vocabulary (Targets, Plan, Costs, ...) lives in noscope.plans; the optimizer is
    imported only for its search functions."""
    mods = modules()
    functions = {n.name for n in mods["noscope.optimizer"].body if isinstance(n, ast.FunctionDef)}
    bad = sorted(f"{m} takes {name}" for m, deps in imports(mods).items() if m != "noscope.optimizer"
                 for t, name in deps if t == "noscope.optimizer" and name and name not in functions)
    assert not bad, bad


def module_table_order() -> dict[str, int]:
    """docs/modules.md's "How it works" table: each module (or package) -> its row, top to bottom."""
    text = (PACKAGE.parent / "docs" / "modules.md").read_text()
    table = text[text.index("| module | job |"):]
    table = table[: table.index("\n\n")]
    rows = {}
    for i, line in enumerate(table.splitlines()[2:]):
        for name in re.findall(r"`([\w/]+?)(?:\.py)?`", line.split("|")[1]):
            rows["noscope." + name.rstrip("/").replace("/", ".")] = i
    return rows


def test_module_table_lists_the_package_in_import_order():
    """Every module is in docs/modules.md's table, and each imports only modules in rows above its own."""
    rows, mods = module_table_order(), modules()
    top = {m: ".".join(m.split(".")[:2]) for m in mods if m != "noscope"}
    assert set(top.values()) == set(rows), sorted(set(top.values()) ^ set(rows))
    below = sorted(f"{m} imports {t}" for m, deps in imports(mods).items() if m in top for t, _ in deps
                   if t in top and top[t] != top[m] and rows[top[t]] > rows[top[m]])
    assert not below, below


# bundle.yaml's dict is read in noscope.bundle and noscope.bundle_manifest (bundle*.py) only: everything
# else uses the typed manifest (bundle_manifest.Manifest, TrainedBundle's fields).
MANIFEST_READERS = ("noscope.bundle", "noscope.bundle_manifest")
NOT_THE_MANIFEST = {"noscope.reference.torchvision_ref": "weights.meta['categories']"}  # torchvision's weights' own


def manifest_reads(source: str) -> list[str]:
    """Where a dict called `meta` (a name, or an attribute `.meta`) is indexed or read with .get()."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript):
            target = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            target = node.func.value
        else:
            continue
        if (isinstance(target, ast.Name) and target.id == "meta") or (isinstance(target, ast.Attribute)
                                                                       and target.attr == "meta"):
            out.append((node.lineno, f"line {node.lineno}: {ast.unparse(node)}"))
    return [text for _, text in sorted(out)]


def test_only_the_bundle_modules_read_the_manifest_dict():
    sources = {m: PACKAGE.parent / Path(*m.split(".")) for m in modules() if m not in MANIFEST_READERS}
    sources = {m: (p / "__init__.py" if p.is_dir() else p.with_suffix(".py")) for m, p in sources.items()}
    sources.update({f"scripts/{p.name}": p for p in sorted((PACKAGE.parent / "scripts").glob("*.py"))})
    bad = [f"{m} {line}" for m, p in sources.items() for line in manifest_reads(p.read_text())
           if not line.endswith(f": {NOT_THE_MANIFEST.get(m)}")]
    assert not bad, bad


def test_the_manifest_check_finds_dict_reads():
    snippet = ("a = meta['labels']\nb = bundle.meta['video']['hash']\nc = meta.get('learnt')\nd = q.bundle.meta.get('x')\n"
               "e = metadata['x']\nf = cfg.get('meta')\ng = bundle.manifest.labels.min_score\n")
    assert [r.split(":")[0] for r in manifest_reads(snippet)] == ["line 1", "line 2", "line 3", "line 4"]
