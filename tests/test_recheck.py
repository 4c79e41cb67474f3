"""The float32 re-check of near-ties under --precision bf16 (issue 30): a 6.1 row whose gap to its
verdict's boundary lies within the band is computed again wholly in float32 and records it; a row
outside the band is left as the low precision made it; the set-up runs in float32."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from falsify.attribution import get_explainer
from falsify.data.pairs import Pair
from falsify.experiments.executor import RowComputer, RowContext
from falsify.experiments.recheck import boundary_gap, full_precision, needs_recheck
from falsify.falsification import FalsificationConfig

N = 6
METHOD = "saliency"


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def _computer(model, band: float, precision: str) -> RowComputer:
    """A 6.1 row computer of ``model`` in ``precision``, beyond-prior with delta 0 and a fixed prior."""
    model.precision = precision
    prior = torch.rand(32, 32, generator=torch.Generator().manual_seed(5))
    fconfig = FalsificationConfig.preset("beyond-prior", tau_high=0.05, tau_low=0.03, epsilon=0.01, delta=0.0, K=2)
    config = SimpleNamespace(recheck_band=band, method_options={}, deletion=False)
    ctx = RowContext(config, "6.1", model.name, fconfig, prior, None, {}, {}, {}, frozenset())
    explainers = {METHOD: (get_explainer(METHOD, model), "real")}
    return RowComputer(ctx, model, explainers)


def _rows(computer: RowComputer) -> list[dict]:
    pairs = [Pair(Path(f"a{i}.png"), Path(f"b{i}.png"), bool(i % 2), index=i) for i in range(N)]
    x = _images(N)
    with full_precision(computer.model):  # the run's embeddings are float32 (the set-up)
        refs = computer.model(_images(N, seed=3))
    return computer.test(METHOD, computer.explainers[METHOD][0], computer.model, computer.ctx.fconfig, pairs, x, refs,
                         [0.0] * N, [0.0] * N)


@pytest.fixture
def fp32_rows(tiny_model):
    return _rows(_computer(tiny_model, 0.05, "fp32"))


def test_rows_within_the_band_are_recomputed_in_float32(tiny_model, fp32_rows):
    """Every row lies within a band of 10 rad: each is re-checked, records its bfloat16 result and
    equals the float32 row (up to float32 rounding of the batch)."""
    assert not any("recheck" in r["detail"] for r in fp32_rows)  # a float32 run re-checks nothing
    rows = _rows(_computer(tiny_model, 10.0, "bf16"))
    assert all(r["detail"]["recheck"]["precision"] == "bf16" for r in rows)
    for r, f in zip(rows, fp32_rows):
        assert r["verdict"] == f["verdict"]
        assert r["d_high"] == pytest.approx(f["d_high"], abs=1e-5)
        assert r["detail"]["excess"] == pytest.approx(f["detail"]["excess"], abs=1e-5)
        assert isinstance(r["detail"]["recheck"]["gap"], float)
        assert r["detail"]["recheck"]["verdict"] in ("passed", "falsified")


def test_only_rows_within_the_band_are_recomputed(tiny_model, fp32_rows):
    """With the band between two rows' gaps, exactly the rows whose bfloat16 gap lies within it are
    re-checked (and then equal float32's); the others keep their bfloat16 values."""
    low = _rows(_computer(tiny_model, 0.0, "bf16"))  # band 0: no re-check
    assert not any("recheck" in r["detail"] for r in low)
    assert any(abs(r["detail"]["excess"] - f["detail"]["excess"]) > 1e-4 for r, f in zip(low, fp32_rows))
    gaps = sorted(abs(boundary_gap(r["detail"])) for r in low)
    band = (gaps[N // 2 - 1] + gaps[N // 2]) / 2
    rows = _rows(_computer(tiny_model, band, "bf16"))
    inside = [abs(boundary_gap(r["detail"])) <= band for r in low]
    assert sum(inside) == N // 2
    for r, lo, f, near in zip(rows, low, fp32_rows, inside):
        assert ("recheck" in r["detail"]) == near
        if near:
            assert r["detail"]["excess"] == pytest.approx(f["detail"]["excess"], abs=1e-5)
            assert r["detail"]["recheck"]["fields"]["excess"] == lo["detail"]["excess"]
        else:
            assert r["detail"]["excess"] == lo["detail"]["excess"]


def test_the_gap_to_the_boundary():
    assert boundary_gap({"verdict": "passed", "criterion": "beyond-prior", "excess": 0.05, "delta": 0.02}) \
        == pytest.approx(0.03)
    absolute = {"verdict": "falsified", "criterion": "absolute", "d_high": 0.30, "tau_high": 0.20, "d_low": 0.12,
                "tau_low": 0.10, "margin": 0.18, "epsilon": 0.05}
    assert boundary_gap(absolute) == pytest.approx(-0.02)  # d_low misses tau_low by 0.02: the nearest condition
    assert boundary_gap({"verdict": "untestable", "criterion": "beyond-prior"}) is None
    assert boundary_gap({"verdict": "passed", "criterion": "another"}) is None
    assert needs_recheck({"verdict": "untestable"}, 0.01)  # no gap: re-checked
    assert not needs_recheck(absolute, 0.01) and needs_recheck(absolute, 0.02)


def test_full_precision_restores_the_precision(tiny_model):
    tiny_model.precision = "bf16"
    with pytest.raises(RuntimeError):
        with full_precision(tiny_model, None):
            assert tiny_model.precision == "fp32"
            raise RuntimeError
    assert tiny_model.precision == "bf16"


def test_the_band_is_a_result_setting_of_low_precision_runs():
    from falsify.experiments import RunConfig
    from falsify.experiments.recheck import DEFAULT_RECHECK_BAND

    assert RunConfig(methods=["random"], recheck_band=0.1).result_settings()["recheck_band"] is None  # fp32
    with pytest.raises(ValueError, match="recheck_band must be >= 0"):
        RunConfig(methods=["random"], recheck_band=-0.1)
    assert RunConfig.LEGACY["recheck_band"] is None
    assert DEFAULT_RECHECK_BAND > 0


def test_a_low_precision_run_sets_up_in_float32_and_a_resume_with_another_band_is_refused(lfw_sample, tmp_path,
                                                                                           monkeypatch):
    """The set-up (here: the embeddings of the pairs' images, which give each row's cosine) is the
    float32 run's; the band is stored, and a resume with another band is refused, nothing written."""
    import sqlite3

    from falsify.experiments import RunConfig, runner_for
    from falsify.experiments.recheck import DEFAULT_RECHECK_BAND
    from falsify.models import precision as P

    monkeypatch.setattr(P, "cpu_bf16_units", lambda: "AVX512-BF16")
    base = dict(data=str(lfw_sample), methods=["random"], n_pairs=4, tau_high=0.2, tau_low=0.1, epsilon=0.05,
                grid_pairs=0, preset="plain", ceiling=False)

    def rows(out):
        with sqlite3.connect(out / "results.sqlite") as c:
            return c.execute("SELECT pair, cosine, verdict, d_high, detail FROM results ORDER BY pair").fetchall()

    for precision in ("fp32", "bf16"):
        runner_for(RunConfig(**base, precision=precision, out=str(tmp_path / precision)), progress=False,
                   log=lambda *a: None).run()
    f32, b16 = rows(tmp_path / "fp32"), rows(tmp_path / "bf16")
    assert [r[1] for r in b16] == pytest.approx([r[1] for r in f32], abs=1e-6)
    assert RunConfig.resolve(out=str(tmp_path / "bf16")).recheck_band == DEFAULT_RECHECK_BAND
    config = RunConfig.resolve(out=str(tmp_path / "bf16"), recheck_band=DEFAULT_RECHECK_BAND / 2)
    with pytest.raises(ValueError, match="other settings.*recheck_band") as err:
        runner_for(config, progress=False, log=lambda *a: None).run()
    assert "\n" not in str(err.value)
    assert rows(tmp_path / "bf16") == b16
