"""docs/method.md's recipe, done: an experiment that is not built on 6.1's rows, added in one module
(this one: a row kind of its own with a trivial computer, its own ``compute`` and summary section)
plus one registration (``registry.register``), runs like the built-in ones, in-process and on Ray,
and stores the same rows either way."""
from __future__ import annotations

import sqlite3

import pytest
import torch

from falsify.experiments import registry
from falsify.experiments.base import Experiment
from falsify.experiments.rows import ChunkRows, RowKind

from .test_row_kinds_ray import ray_here, tiny_model  # noqa: F401 - fixtures

KEY = "toy_section"
ROWS_OF = "toy"


class ToyRows(RowKind):
    """Two rows per pair: the mean brightness of image A, and the cosine of f(A) and f(B)."""

    rows_of = ROWS_OF
    unit_name = "value"

    def keys(self) -> list[str]:
        return ["brightness", "cosine"]

    def groups(self, keys):
        return [[k] for k in keys]  # one key per unit

    def computer(self, model, explainers=None, random_model=None):
        return ToyComputer(self, model, explainers, random_model)


class ToyComputer(ChunkRows):
    def compute(self, pairs, images, refs, keys, done):
        emb = self.ctx.emb
        rows = []
        for key in keys:
            for i, p in enumerate(pairs):
                if (key, p.id) in done:
                    continue
                value = float(images[i].mean()) if key == "brightness" else float(
                    torch.nn.functional.cosine_similarity(emb[p.a], refs[i], dim=0))
                rows.append({**self.kind.base_row(key, p), "verdict": "measured", "margin": value})
        yield rows, []


class ToyExperiment(Experiment):
    name = "toy"
    title = "A toy experiment"
    anchor = "toy"
    nav = "Toy"
    key = KEY
    rows_of = ROWS_OF

    def check(self, config) -> None:
        if config.n_pairs > 50:
            raise ValueError("the toy experiment takes at most 50 pairs: give --n-pairs 50 or fewer")

    def compute(self, session, store) -> dict:
        session.compute_rows(store, ToyRows(session.context(ROWS_OF)))
        rows = store.rows(ROWS_OF, session.model.name, pairs={p.id for p in session.pairs})
        by_key = {k: [r["margin"] for r in rows if r["method"] == k] for k in ("brightness", "cosine")}
        return {"experiment": self.name, "model": session.model.name, "started": session.started,
                KEY: {"n_rows": len(rows), **{f"mean_{k}": sum(v) / len(v) for k, v in by_key.items()}}}

    def text(self, summary) -> str:
        return f"toy: {summary[KEY]['n_rows']} rows"


@pytest.fixture
def toy():
    experiment = registry.register(ToyExperiment())
    try:
        yield experiment
    finally:
        registry.unregister(experiment.name)
    assert "toy" not in registry.EXPERIMENTS


def _settings(data, model, out) -> dict:
    return dict(experiment="toy", data=str(data), model=str(model), input_size=[32, 32], trust_pickle=True,
                n_pairs=4, batch_pairs=2, grid_pairs=0, device="cpu", out=str(out), seed=1, methods=["random"],
                preset="plain", tau_high=0.05, tau_low=0.03, epsilon=0.01)


def _rows(out) -> list[tuple]:
    with sqlite3.connect(out / "results.sqlite") as c:
        return c.execute("SELECT method, pair, verdict, margin FROM results WHERE experiment = ? "
                         "ORDER BY method, pair", (ROWS_OF,)).fetchall()


def test_a_registered_experiment_runs_in_process_and_on_ray(toy, lfw_sample, tiny_model, tmp_path,  # noqa: F811
                                                           ray_here):  # noqa: F811
    from falsify.experiments.ray_executor import RayExecutor

    with pytest.raises(ValueError, match="at most 50 pairs"):
        registry.configure(**{**_settings(lfw_sample, tiny_model, tmp_path / "no"), "n_pairs": 51})
    assert not (tmp_path / "no").exists()
    with pytest.raises(ValueError, match="already|taken"):
        registry.register(ToyExperiment())
    quiet = lambda *a: None  # noqa: E731
    here = tmp_path / "in-process"
    summary = registry.runner_for(registry.configure(**_settings(lfw_sample, tiny_model, here)), progress=False,
                                  log=quiet).run()
    rows = _rows(here)
    assert len(rows) == 2 * 4 and {r[0] for r in rows} == {"brightness", "cosine"}
    assert summary["experiment"] == "toy" and summary[KEY]["n_rows"] == 8
    assert registry.experiments_in(summary) == [toy] and toy.text(summary) == "toy: 8 rows"
    assert (here / "summary.json").is_file() and (here / "report.html").is_file()
    # resumed: nothing computed again
    again = registry.runner_for(registry.configure(experiment="toy", out=str(here), trust_pickle=True, device="cpu"),
                                progress=False, log=quiet).run()
    assert again[KEY] == summary[KEY] and _rows(here) == rows
    # on Ray: the kind and its computer travel to the workers, the driver writes the same rows
    there = tmp_path / "ray"
    config = registry.configure(**_settings(lfw_sample, tiny_model, there), executor="ray", workers=2)
    on_ray = registry.runner_for(config, progress=False, log=quiet, executor=RayExecutor(workers=2)).run()
    got = _rows(there)
    assert [r[:3] for r in got] == [r[:3] for r in rows]
    assert all(abs(a[3] - b[3]) <= 1e-5 for a, b in zip(got, rows))  # float32 on another process: not bit-equal
    assert on_ray[KEY]["n_rows"] == 8
