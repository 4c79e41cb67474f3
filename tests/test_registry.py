"""Experiments as modules: the registry, the outputs of 6.1 and 6.2 unchanged by the move, and an
experiment added without touching the report's core."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from falsify import choices
from falsify.experiments import exp_6_1, exp_6_2, registry
from falsify.experiments.base import Experiment
from falsify.report.render import Table, frame, to_html, to_latex

FIXED = Path(__file__).parent / "data" / "fixed_runs"
SRC = Path(__file__).resolve().parents[1] / "src" / "falsify"


def test_registry_matches_the_names_the_cli_offers():
    assert tuple(registry.EXPERIMENTS) == choices.EXPERIMENTS
    assert registry.get("6.2") is exp_6_2.EXPERIMENT
    with pytest.raises(ValueError, match="unknown experiment '9.9'; choose from 6.1, 6.2"):
        registry.get("9.9")
    assert registry.of_summary({}) is exp_6_1.EXPERIMENT


@pytest.mark.parametrize("run", ["run62", "run62bp"])
def test_tables_of_a_fixed_run_are_unchanged(run):
    """Two real runs (8 pairs of the shared sample: plain, and beyond-prior with centre and
    --sanity) made before the experiments became modules: their tables, cell by cell and as LaTeX,
    are what the report layer wrote then (tests/data/fixed_runs/*.tables.json)."""
    summary = json.loads((FIXED / f"{run}.json").read_text())
    before = json.loads((FIXED / f"{run}.tables.json").read_text())
    assert [list(x) for x in exp_6_1.table_6_1_cells(summary)] == before["t61_cells"]
    assert json.loads(json.dumps(exp_6_2.table_6_2_cells(summary))) == before["t62_cells"]
    assert exp_6_1.table_6_1_tex(summary) == before["t61_tex"]
    assert exp_6_2.table_6_2_tex(summary) == before["t62_tex"]


def test_no_domain_package_imports_the_cli():
    for path in SRC.rglob("*.py"):
        if path.name == "cli.py" and path.parent == SRC:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [(node.module or "").lstrip(".")] + [a.name for a in node.names]
                if node.level and node.module is None:
                    names = [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            assert not any(n == "cli" or n.endswith(".cli") for n in names), f"{path} imports the CLI"


def test_table_renders_through_styler_and_jinja():
    t = Table(name="t", frame=frame(["Method", "n", "p"], [["a_b", "3", None], ["c", ("1", "[2, 3]"), "-0.5"]]),
              label="tab:t", caption="Caption", tex_header=[(None, "", "Method"), ("Counts", "", "n"), ("Counts", "", "p")],
              tex_groups={1: "Controls"}, html_id="t", numeric=[1, 2], row_class=["", "control"], split=1)
    tex = to_latex(t)
    assert r"\multicolumn{2}{c}{Counts}" in tex and r"\cmidrule(lr){2-3}" in tex
    assert r"a\_b & 3 & -- \\" in tex and r"$-$0.5" in tex and r"\multicolumn{3}{l}{\textit{Controls}} \\" in tex
    assert r"\begin{tabular}[t]{@{}r@{}}1\\{}[2, 3]\end{tabular}" in tex
    page = to_html(t)
    assert '<table id="t">' in page and '<tbody class="controls"><tr class="control">' in page
    assert '<td class="num">1<br>[2, 3]</td>' in page and '<span class="na">&ndash;</span>' in page


class _Toy(Experiment):
    name, title, anchor, nav, key = "toy", "Toy experiment", "exp-toy", "Toy", "experiment_toy"
    template = "toy.html.j2"

    def tables(self, summary):
        return [Table(name="table_toy", frame=frame(["Method", "value"], [["x<y", summary[self.key]["value"]]]),
                      label="tab:toy", caption="Toy.", html_id="table-toy")]


def test_an_experiment_is_added_by_its_module_alone(tmp_path, monkeypatch):
    """The report's core iterates over the sections the registry hands it: a new experiment's table
    and section appear without any change to tables.py, figures.py or html.py."""
    from falsify.report import render

    monkeypatch.setitem(registry.EXPERIMENTS, "toy", _Toy())
    env = render.environment()
    monkeypatch.setattr(env, "loader", __import__("jinja2").ChoiceLoader([env.loader, __import__("jinja2").DictLoader(
        {"toy.html.j2": '<h2 id="{{ experiment.anchor }}">{{ experiment.title }}</h2>{{ tables.table_toy }}'})]))
    summary = {"experiment": "6.1", "model": "m", "data": {}, "methods": [], "experiment_toy": {"value": "0.5"}}
    paths = registry.write_report(tmp_path, summary)
    assert [p.name for p in paths] == ["table_6_1.tex", "table_toy.tex", "report.html"]
    page = paths[-1].read_text()
    assert '<a href="#exp-toy">Toy</a>' in page and '<td class="method">x&lt;y</td>' in page
    assert "experiment_toy" not in page.split('id="config"')[1]  # its key is known: not under "Other"
