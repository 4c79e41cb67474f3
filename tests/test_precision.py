"""--precision (issue 30): only the network runs in low precision; what a machine cannot run is
refused in one line before anything is written; a run's precision is one of its settings."""
from __future__ import annotations

import pytest
import torch

from falsify.falsification import FalsificationConfig, falsification_test
from falsify.models import precision as P
from falsify.models import set_precision

CFG = dict(tau_high=0.05, tau_low=0.03, epsilon=0.01)  # absolute radians for the tiny model


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


@pytest.fixture
def no_bf16_units(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_units", lambda: None)


@pytest.fixture
def bf16_units(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_units", lambda: "AVX512-BF16")


def test_what_a_cpu_can_run(no_bf16_units, monkeypatch):
    assert P.precision_problem("fp32", "cpu") is None
    for precision in ("bf16", "fp16"):
        problem = P.precision_problem(precision, "cpu")
        assert problem and "\n" not in problem and "--precision fp32" in problem
    assert "choose from fp32, bf16, fp16" in P.precision_problem("fp64", "cpu")
    monkeypatch.setattr(P, "cpu_bf16_units", lambda: "AMX")
    assert P.precision_problem("bf16", "cpu") is None
    assert "--precision bf16 (this CPU has AMX)" in P.precision_problem("fp16", "cpu")
    assert "not on mps" in P.precision_problem("bf16", "mps")


def test_cpu_flags_are_read(monkeypatch):
    """/proc/cpuinfo's flags decide (here: whatever this machine has, read the same way)."""
    P._cpu_flags.cache_clear()
    flags = P._cpu_flags()
    assert (P.cpu_bf16_units() is not None) == bool(flags & {"amx_bf16", "avx512_bf16", "bf16"})


def test_a_precision_the_machine_cannot_run_is_refused(no_bf16_units, tiny_model, lfw_sample, tmp_path, capsys):
    from falsify.cli import main

    with pytest.raises(ValueError, match="bfloat16 units"):
        set_precision(tiny_model, "bf16")
    assert tiny_model.precision == "fp32"
    out = tmp_path / "run"
    a, b = (str(p) for p in sorted(lfw_sample.rglob("*.jpg"))[:2])
    for argv in (["run", "6.1", "--data", str(lfw_sample), "--n-pairs", "4", "--methods", "random", "--out", str(out)],
                 ["verify", "--data", str(lfw_sample)],
                 ["explain", a, b, "--out", str(tmp_path / "maps.png")],
                 ["test", a, b, "--method", "random", "--data", str(lfw_sample), "--figure", str(tmp_path / "test.png")]):
        assert main([*argv, "--precision", "bf16"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--precision bf16 needs a CPU with bfloat16 units" in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("precision", P.PRECISIONS)
def test_distances_stay_float32_or_wider(precision, tiny_model, monkeypatch):
    """The network runs in the precision; its embeddings leave as unit float32 vectors and every
    distance of the test is computed from them in float32 or float64."""
    from falsify.falsification import stages

    tiny_model.precision = precision  # set directly: autocast runs on any CPU (emulated where no units)
    x = _images(3)
    emb = tiny_model(x)
    assert emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    seen = []
    geodesic = stages.geodesic_distance

    def recording(u, v):
        seen.append((u.dtype, v.dtype))
        return geodesic(u, v)

    monkeypatch.setattr(stages, "geodesic_distance", recording)
    maps = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    results = falsification_test(tiny_model, x, None, maps, FalsificationConfig.preset("plain", **CFG))
    assert seen and all(d in (torch.float32, torch.float64) for pair in seen for d in pair)
    assert all(isinstance(r.d_high, float) and r.d_high == r.d_high for r in results)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gradients_and_maps_are_float32(precision, tiny_model):
    """Attribution runs the model as callers do, so gradients run under the precision; maps leave as float32."""
    from falsify.attribution import get_explainer

    tiny_model.precision = precision
    x = _images(2)
    refs = tiny_model(_images(2, seed=3))
    for method in ("saliency", "gradcam"):
        maps = get_explainer(method, tiny_model)(x, refs)
        assert maps.dtype == torch.float32 and torch.isfinite(maps).all()


def test_a_resume_with_another_precision_is_refused(bf16_units, lfw_sample, tmp_path):
    """The precision is a result setting: rows of two precisions are never mixed in one store; a
    store made before the setting existed counts as fp32."""
    import sqlite3

    from falsify.experiments import ResultsStore, RunConfig, runner_for

    out = tmp_path / "run"
    base = dict(data=str(lfw_sample), methods=["random"], n_pairs=4, out=str(out),
                tau_high=0.2, tau_low=0.1, epsilon=0.05, grid_pairs=0, preset="plain")
    runner_for(RunConfig(**base), progress=False, log=lambda *a: None).run()

    def rows():
        with sqlite3.connect(out / "results.sqlite") as c:
            return c.execute("SELECT method, pair, verdict, d_high, d_low FROM results ORDER BY pair").fetchall()

    before = rows()
    with ResultsStore(out / "results.sqlite") as store:
        assert store.get_meta("settings")["precision"] == "fp32"
    config = RunConfig.resolve(out=str(out), precision="bf16")  # as `falsify run --out OUT --precision bf16`
    with pytest.raises(ValueError, match="other settings.*precision") as err:
        runner_for(config, progress=False, log=lambda *a: None).run()
    assert "\n" not in str(err.value)
    assert rows() == before
    with ResultsStore(out / "results.sqlite") as store:  # an older store, without the key: fp32
        settings = store.get_meta("settings")
        del settings["precision"]
        store.set_meta("settings", settings)
    assert RunConfig.resolve(out=str(out)).precision == "fp32"
    runner_for(RunConfig.resolve(out=str(out)), progress=False, log=lambda *a: None).run()
    assert rows() == before
