"""The package's layers, read from the source with ``ast`` (nothing is imported): ``report/`` is a
toolkit that never imports ``experiments/``, and no module imports another that (directly or
through others) imports it back. Imports inside functions count: they form circles too, only later."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "falsify"

def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's ``__init__``), for every module under src/falsify."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _imports(name: str, path: Path, is_package: bool, known) -> list[tuple[str, int]]:
    """(module of the package imported, line) for every import statement of the module, at any
    depth (in functions, methods, ``if TYPE_CHECKING`` blocks too). ``from X import Y`` counts as
    importing ``X.Y`` when that is a module, else ``X``; a name is cut back to the longest prefix
    that is a module of the package; imports of other packages are left out."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.append((t, node.lineno))
    return found


def _graph() -> dict[str, dict[str, int]]:
    """module -> {module it imports: first line}."""
    mods = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, (path, is_package) in mods.items():
        edges: dict[str, int] = {}
        for target, line in _imports(name, path, is_package, mods):
            edges.setdefault(target, line)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as one circle
    through its first module (a shortest path back to it), so a failure shows imports to cut;
    :func:`_components` gives the whole components."""
    return [c for c, _ in _circles_and_components(graph)]


def _circles_and_components(graph: dict[str, dict[str, int]]) -> list[tuple[list[str], list[str]]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # the graph is a few hundred modules deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    circles = []
    for comp in components:
        inside = set(comp)
        start = comp[0]
        # breadth-first from start's imports back to start, within the component
        paths = {w: [start, w] for w in graph[start] if w in inside}
        frontier = list(paths)
        while start not in paths and frontier:
            nxt = []
            for v in frontier:
                for w in graph[v]:
                    if w in inside and w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
            frontier = nxt
        circles.append((paths.get(start, comp), comp))
    return sorted(circles)


def _describe(circle: list[str], graph) -> str:
    steps = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in zip(circle, circle[1:])]
    return "\n  ".join(steps)


def test_the_import_graph_is_read_from_every_module():
    graph = _graph()
    assert "falsify.report.html" in graph and "falsify.experiments.registry" in graph
    assert "falsify.report.render" in graph["falsify.report.html"]
    # an import inside a function counts (cli imports the experiments lazily)
    assert any(m.startswith("falsify.experiments") for m in graph["falsify.cli"])
    # a made-up circle is found and shown as one
    assert _cycles({"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}) == [["a", "b", "c", "a"]]


def test_report_never_imports_experiments():
    """report/ is a toolkit: the experiments hand it their sections; it never imports them back."""
    graph = _graph()
    bad = [f"{m} (line {line}) imports {t}" for m, edges in sorted(graph.items())
           if m == "falsify.report" or m.startswith("falsify.report.")
           for t, line in edges.items() if t == "falsify.experiments" or t.startswith("falsify.experiments.")]
    assert not bad, "report/ imports experiments/:\n" + "\n".join(bad)


def test_no_import_cycles():
    """No module imports another that imports it back (through any others); none is excepted."""
    graph = _graph()
    found = _circles_and_components(graph)
    assert not found, "import circles:\n" + "\n".join(
        f"  {len(comp)} modules import each other ({', '.join(comp)}), e.g.\n    " + _describe(c, graph).replace("\n", "\n  ")
        for c, comp in found)


def test_verification_imports_nothing_of_falsification():
    """``falsification.calibration`` builds on ``verification`` (thresholds, pair similarities), so
    ``verification`` imports nothing of ``falsification`` (not even lazily): no circle at run time
    through the package's ``__init__``."""
    graph = _graph()
    assert not [m for m in graph["falsify.verification"] if m.startswith("falsify.falsification")]


#: Where an experiment may be named: its own module, the registry, the CLI and ``choices``.
NAMING_ALLOWED = ("experiments/exp_6_", "experiments/validity.py", "experiments/known_truth.py",
                  "experiments/registry.py", "cli.py", "choices.py")


def _name_comparisons(tree: ast.AST, names: set[str]) -> list[int]:
    """The lines of ``tree`` that compare something with an experiment's name (``==``, ``!=``,
    ``in``, ``not in``, a ``match`` case), the name written as a string or in a tuple, list or set of them."""
    def named(node) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(named(e) for e in node.elts)
        return False

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(named(x) for x in [node.left, *node.comparators]):
            lines.append(node.lineno)
        elif isinstance(node, ast.MatchValue) and named(node.value):
            lines.append(node.lineno)
    return lines


def test_the_run_machinery_never_compares_an_experiment_name():
    """The runner receives its experiment: outside the experiment modules, the registry, the CLI and
    ``choices``, no module compares a name of an experiment ("6.4", "validity", ...); what a run
    does differently is what its ``Experiment`` declares."""
    from falsify.choices import EXPERIMENTS

    names = set(EXPERIMENTS)
    assert _name_comparisons(ast.parse('if c.experiment == "6.4" or x in ("a", "validity"): pass'), names) == [1, 1]
    bad = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        rel = path.relative_to(SRC / PACKAGE).as_posix()
        if rel.startswith(NAMING_ALLOWED):
            continue
        bad += [f"{rel}:{line}" for line in _name_comparisons(ast.parse(path.read_text(encoding="utf-8")), names)]
    assert not bad, "experiment names compared outside the experiments: " + ", ".join(bad)


#: The most lines a source file of the package may hold, and a function (the argument parser's
#: declarations excepted: one ``add_argument`` per flag)
MAX_FILE_LINES, MAX_FUNCTION_LINES = 700, 120


def test_rooms_fit_a_head():
    """No module of ``src/falsify`` over 700 lines, no function over 120 (``cli.build_parser`` excepted)."""
    long_files, long_functions = [], []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(SRC).as_posix()
        if text.count("\n") > MAX_FILE_LINES:
            long_files.append(f"{rel} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != "build_parser":
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    assert not long_files, "files over 700 lines: " + ", ".join(long_files)
    assert not long_functions, "functions over 120 lines: " + ", ".join(long_functions)
