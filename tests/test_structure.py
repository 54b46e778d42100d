"""The package's shape: imports run one way (no cycles), no private names taken from another
module, no function over about 60 lines without a reason written above it, and few parameters (a
query's run and its check also change none of theirs in place).

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


# --------------------------------------------------------------------------- parameters: few, and never changed

MAX_PARAMS = 6  # "few parameters": more than this wants a record (a dataclass) or an object owning the state
# A query's run and its check: the state they share lives in one object (answer.QueryRun) and one record
# per object (check.ObjectCheck), so no function here takes many arguments or changes one in place.
NO_MUTATION = ("noscope.answer", "noscope.check", "noscope.check_repair")
# Methods that change the object they are called on (lists, dicts, sets, numpy arrays in place).
MUTATORS = {"append", "extend", "insert", "pop", "popitem", "remove", "clear", "update", "setdefault", "add",
            "discard", "sort", "reverse", "fill", "resize", "put", "itemset", "__setitem__", "__delitem__",
            "difference_update", "intersection_update", "symmetric_difference_update"}


def functions(tree: ast.Module):
    """(qualified name, function node, whether it is a method) for every function of a module."""
    out = []

    def visit(node, prefix, in_class):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((prefix + child.name, child, in_class))
                visit(child, f"{prefix}{child.name}.", False)
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.", True)
            else:
                visit(child, prefix, in_class)

    visit(tree, "", False)
    return out


def parameters(node: ast.FunctionDef, method: bool) -> list[str]:
    """A function's parameters, *args and **kwargs included; a method's self (or cls) not counted."""
    a = node.args
    names = [p.arg for p in a.posonlyargs + a.args]
    if method and names and names[0] in ("self", "cls") and not any(
            isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list):
        names = names[1:]
    names += [p.arg for p in a.kwonlyargs]
    names += [p.arg for p in (a.vararg, a.kwarg) if p is not None]
    return names


def _root(node) -> str | None:
    """The name an attribute / subscript chain starts from (`x` of `x.a[0].b`), else None."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _targets(node) -> list:
    if isinstance(node, (ast.Tuple, ast.List)):
        return [t for e in node.elts for t in _targets(e)]
    return [node]


def mutations(node: ast.FunctionDef, method: bool) -> list[str]:
    """Where a function changes one of its parameters in place: assigns into (or deletes) an item or
    attribute of it, augments it (`p += ...`, `p[k] += ...`), or calls a mutating method on it
    (`p.update(...)`, `p.x.append(...)`). A parameter rebound to a copy counts too: name the copy
    differently. A method changing its own self is not counted."""
    params = set(parameters(node, method))
    found = []
    for n in ast.walk(node):
        hit = None
        if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Delete)):
            for tgt in (n.targets if isinstance(n, (ast.Assign, ast.Delete)) else [n.target]):
                for t in _targets(tgt):
                    item = isinstance(t, (ast.Subscript, ast.Attribute))
                    if (item or isinstance(n, ast.AugAssign)) and _root(t) in params:
                        hit = ast.unparse(t)
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in MUTATORS \
                and _root(n.func.value) in params:
            hit = ast.unparse(n.func)
        if hit:
            found.append(f"{hit} (line {n.lineno})")
    return found


def test_the_run_and_its_check_take_few_parameters_and_change_none():
    """answer.py, check.py, check_repair.py: what a query's first pass and its check share is held
    by the run object and the check's per-object records, not handed around and changed in place."""
    mods = modules()
    bad = []
    for m in NO_MUTATION:
        for name, node, method in functions(mods[m]):
            if len(parameters(node, method)) > MAX_PARAMS:
                bad.append(f"{m}.{name}: {len(parameters(node, method))} parameters")
            bad += [f"{m}.{name} changes {w}" for w in mutations(node, method)]
    assert not bad, bad


def test_the_parameter_checks_find_what_they_look_for():
    tree = ast.parse(
        "def many(a, b, c, d, e, f, g):\n    return a\n"
        "def six(a, b, c, *, d, e, f):\n    return a\n"
        "def spread(*args, **kw):\n    return args\n"
        "def item(d, k):\n    d[k] = 1\n"
        "def attr(r):\n    r.seconds = 2\n"
        "def aug(n, c):\n    n += 1\n    c.x[0] += 1\n"
        "def deleted(d):\n    del d['k']\n"
        "def tupled(a, b):\n    a[0], x = b\n"
        "def call(d, s, o):\n    d.update({})\n    s.add(1)\n    o.rounds.append(2)\n"
        "def clean(d, xs):\n    e = dict(d)\n    e['k'] = 1\n    ys = list(xs)\n    ys.append(3)\n    d.get('k')\n    return e, ys\n"
        "class C:\n"
        "    def method(self, a, b, c, d, e, f):\n        self.k = a\n        self.log.append(b)\n"
        "    def changes(self, a):\n        a.append(1)\n")
    got = {name: (len(parameters(node, method)), mutations(node, method)) for name, node, method in functions(tree)}
    assert got["many"][0] == 7 and got["six"][0] == 6 and got["spread"][0] == 2
    assert got["C.method"] == (6, [])  # self is not counted, and a method may change its own self
    assert [len(got[f][1]) for f in ("item", "attr", "aug", "deleted", "tupled", "call", "C.changes")] == [1, 1, 2, 1, 1, 3, 1]
    assert got["clean"][1] == []  # copies under another name, and reading a parameter, change nothing


# The functions that had more than MAX_PARAMS parameters when the rule came, with their number then.
# The list exists so that the rule holds for every new function at once while these are taken apart
# one by one; it may only shrink: a function may not gain parameters, and one that no longer needs its
# entry fails the test until the entry goes. The click commands in cli.py are exempt as a group: each
# of their options is a parameter.
MANY_PARAMS = {
    "noscope.batch.run_batch": 9, "noscope.bundle.write_bundle": 8, "noscope.cascade._results": 8,
    "noscope.cascade.run_cascade": 14,
    "noscope.check_stats.certification_sizes": 8, "noscope.check_stats.verdict": 7, "noscope.cli._query_batch": 11,
    "noscope.cli.setup": 7, "noscope.decode_pool._start_worker": 7,
    "noscope.decode_pool.batches": 10, "noscope.difference._blocked": 7, "noscope.difference.fit_and_score": 7,
    "noscope.evaluate._report": 10,
    "noscope.framecache.cached_batches": 10, "noscope.labels.label_frames": 9, "noscope.labels.labelled_sample": 9,
    "noscope.optimizer._offer_for": 7, "noscope.optimizer.optimize": 11, "noscope.cheap.heads._fit_logistic": 7,
    "noscope.cheap.heads._fit_spatial": 7, "noscope.cheap.heads._refit_weighted": 7,
    "noscope.cheap.heads.train_heads": 16, "noscope.cheap.heads.train_head": 7, "noscope.prepare.open_query": 10,
    "noscope.prepare.resolve_bundle": 9, "noscope.query.query_video": 15,
    "noscope.reference.darknet.DarknetReference.__init__": 9, "noscope.reference.darknet.YoloLayer.boxes_at": 7,
    "noscope.reference.load_reference": 9, "noscope.reference.torchvision_ref.TorchvisionReference.__init__": 7,
    "noscope.reference.yolo_post._nms": 8, "noscope.results._write_pass": 10,
    "noscope.results.write_results": 10, "noscope.cheap.cnn._Fit.make": 10, "noscope.cheap.cnn._trained": 8,
    "noscope.cheap.cnn._training_inputs": 8, "noscope.cheap.cnn.train_candidate": 15,
    "noscope.cheap.cnn.train_grid": 11, "noscope.split.split": 8, "noscope.train._manifest": 8, "noscope.train.training_data": 7,
    "noscope.train.decode_sample": 7, "noscope.train.train": 9, "noscope.update.collect": 8,
    "noscope.update.lineage_entry": 7, "noscope.update.refit_validate_write": 8, "noscope.update.update_bundle": 7,
    "noscope.update.write_version": 7, "noscope.video.Video.batches": 8
}


def _click_command(node: ast.FunctionDef) -> bool:
    return any(".command" in ast.unparse(d) or "click.group" in ast.unparse(d) for d in node.decorator_list)


def test_no_function_takes_more_than_a_few_parameters_beyond_the_known_ones():
    over = {f"{m}.{name}": len(parameters(node, method)) for m, tree in modules().items()
            for name, node, method in functions(tree)
            if len(parameters(node, method)) > MAX_PARAMS and not (m == "noscope.cli" and _click_command(node))}
    new = sorted(f for f in over if f not in MANY_PARAMS)
    assert not new, f"more than {MAX_PARAMS} parameters: {new}"
    grown = sorted(f"{f}: {n} (was {MANY_PARAMS[f]})" for f, n in over.items() if n > MANY_PARAMS[f])
    assert not grown, f"more parameters than when the rule came: {grown}"
    gone = sorted(set(MANY_PARAMS) - set(over))
    assert not gone, f"no longer over the limit, take them out of MANY_PARAMS: {gone}"


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
