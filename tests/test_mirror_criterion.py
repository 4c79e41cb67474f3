"""The beyond-mirror criterion and the signed-angle target (issue 28, item 9): known answers on the
tiny model."""
from __future__ import annotations

import math

import pytest
import torch

from falsify.falsification import FalsificationConfig, distances, embed, falsification_test, fill_for, regions_for
from falsify.falsification.criteria import COND_MIRROR, mirrored
from falsify.geometry import excess_rounding, geodesic_distance

from . import falsification_cases as cases

#: 8 x 8 cells of 4 pixels on the 32-pixel images: the reflection maps cells onto cells
MIRROR = dict(criterion="beyond-mirror", delta=0.0, granularity="grid", grid=8, fill="mean", q=0.125, **cases.THRESHOLDS)


def _refs(model, n, seed=2):
    return embed(model, cases._images(n, seed=seed), 8, "cpu")


def test_signed_angle_is_the_signed_change_of_the_angle_to_the_reference():
    g = torch.Generator().manual_seed(0)
    f_x, emb, r = (torch.nn.functional.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=1)
                   for n in (1, 6, 1))
    emb = torch.cat([emb, r, torch.nn.functional.normalize(f_x + r, dim=1)])  # two moves towards r
    want = geodesic_distance(emb, r) - geodesic_distance(f_x, r)
    assert torch.equal(distances(f_x[0], emb, r[0], "signed-angle"), want)
    assert (want < 0).any() and (want > 0).any()  # both signs occur, and signed-pair clamps the negative ones
    assert torch.equal(distances(f_x[0], emb, r[0], "signed-pair"), want.clamp_min(0.0))


def test_the_excess_is_the_margin_less_the_mirrored_sets_margin(tiny_model):
    """Known answer: the mirrored sets built, filled and embedded by hand give the excess."""
    n = 3
    images, maps, refs = cases._images(n), cases._maps(2, seed=5).repeat(2, 1, 1)[:n], _refs(tiny_model, n)
    cfg = FalsificationConfig(target="signed-angle", **MIRROR)
    res = falsification_test(tiny_model, images, refs, maps, cfg, pair_ids=[3, 4, 5], prior=torch.rand(32, 32))
    f_x = embed(tiny_model, images, 8, "cpu")
    for i, pid in enumerate([3, 4, 5]):
        reg = mirrored(regions_for(images[i], maps[i], cfg, pid))
        assert torch.equal(reg.high, torch.flip(regions_for(images[i], maps[i], cfg, pid).high, dims=[-1]))
        cf = next(iter(fill_for(cfg).counterfactuals(tiny_model, [images[i]], [reg], f_x[i : i + 1], [pid])))
        d = distances(f_x[i].double(), embed(tiny_model, cf.stacked(), 8, "cpu").double(), refs[i], "signed-angle")
        r = res[i]
        assert r.criterion_fields["mirror_d_high"] == pytest.approx(float(d[0]), abs=1e-6)
        assert r.criterion_fields["mirror_d_low"] == pytest.approx(float(d[1]), abs=1e-6)
        assert r.excess == pytest.approx(r.margin - float(d[0] - d[1]), abs=1e-6)
        assert r.verdict == ("passed" if r.excess > excess_rounding(f_x.shape[1]) else "falsified")


def test_a_map_whose_sets_are_their_own_mirror_is_a_tie_and_falsified(tiny_model):
    """A left-right symmetric map with distinct values per mirrored pair of cells: its top and
    bottom 8 cells are 4 whole pairs, so its mirrored sets are its sets and the excess is 0 up to
    the rounding of embedding the same images in another batch: a tie, falsified."""
    cells = torch.randperm(32, generator=torch.Generator().manual_seed(1)).double().reshape(8, 4)
    half = torch.cat([cells, cells.flip(-1)], dim=1)  # (8 rows, 8 cols), symmetric
    sym = half.repeat_interleave(4, 0).repeat_interleave(4, 1).float().unsqueeze(0).repeat(2, 1, 1)
    images = cases._images(2)
    cfg = FalsificationConfig(target="embedding", **MIRROR)
    tie = excess_rounding(16)
    for r in falsification_test(tiny_model, images, None, sym, cfg, pair_ids=[0, 1], prior=torch.rand(32, 32)):
        # the same counterfactuals, embedded in another batch: equal up to float32 rounding, a tie
        assert abs(r.excess) <= tie and r.verdict == "falsified" and r.failed == (COND_MIRROR,)
        assert r.criterion_fields["mirror_d_high"] == pytest.approx(r.d_high, abs=tie)


def test_the_mirror_is_refused_outside_the_test():
    from falsify.falsification.criteria import criterion_for

    crit = criterion_for(FalsificationConfig(**MIRROR))
    with pytest.raises(ValueError, match="through falsification_test"):
        crit.prepare(None, None, torch.zeros(1, 4), None, [0], "cpu")
    assert not crit.monotone and crit.prior_calibrated == "delta"


def test_delta_is_calibrated_for_the_mirror_criterion(tiny_model):
    """--delta calibrated under beyond-mirror calibrates the mirror's excess (maps knowing only the
    prior against their own mirror), not the prior's."""
    from falsify.falsification.prior import calibrate_delta

    images = cases._images(4)
    prior = torch.rand(32, 32, generator=torch.Generator().manual_seed(3))
    cfg = FalsificationConfig(target="embedding", **MIRROR)
    got = calibrate_delta(tiny_model, images, prior, cfg, n_null=2)
    other = calibrate_delta(tiny_model, images, prior, cfg.replace(criterion="beyond-prior"), n_null=2)
    assert got["n"] == other["n"] == 8 and math.isfinite(got["delta"])
    assert got["excess_median"] != other["excess_median"]


def test_the_mirror_fill_puts_the_reflected_image_in_the_hidden_pixels():
    from falsify.falsification.counterfactuals import apply_fill

    image = cases._images(1)[0]
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[4:12, 2:9] = True
    out = apply_fill(image, mask, "mirror", k=3)
    assert out.shape == (1, 3, 32, 32)  # deterministic: one sample
    assert torch.equal(out[0][:, mask], image.flip(-1)[:, mask])
    assert torch.equal(out[0][:, ~mask], image[:, ~mask])
    # a region that is its own mirror, on a left-right symmetric image, changes nothing
    sym = torch.cat([image[:, :, :16], image[:, :, :16].flip(-1)], dim=-1)
    assert torch.equal(apply_fill(sym, mask, "mirror")[0], sym)


def test_cohort_angle_is_signed_angle_less_the_cohorts_mean_change():
    """The known-truth study's cohort-angle (T-norm): known answers on random unit vectors."""
    from pathlib import Path

    from falsify.experiments.truth_rows import cohort_of, target_distances

    g = torch.Generator().manual_seed(1)
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=1)  # noqa: E731
    f_x, emb, r, co = unit(1)[0], unit(5), unit(1)[0], unit(4)
    got = target_distances(f_x, emb, r, "cohort-angle", co)
    want = distances(f_x, emb, r, "signed-angle") - torch.stack(
        [distances(f_x, emb, c, "signed-angle") for c in co]).mean(dim=0)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)  # float64: a different order of the same sums
    # a cohort of the reference itself cancels it; the other targets are the test's own
    assert torch.allclose(target_distances(f_x, emb, r, "cohort-angle", r.unsqueeze(0)), torch.zeros(5, dtype=torch.float64),
                          atol=1e-12)
    assert torch.equal(target_distances(f_x, emb, r, "signed-pair", co), distances(f_x, emb, r, "signed-pair"))
    # the cohort leaves out the composite's identities (the folders of donor and base)
    emb_of = {Path(f"/d/{p}/{p}_000{i}.jpg"): unit(1)[0].float() for p in ("A", "B", "C") for i in (1, 2)}
    cohort = cohort_of(emb_of, ["A", "B"])
    assert cohort.dtype == torch.float64 and cohort.shape == (2, 8)
    assert torch.equal(cohort, torch.stack([emb_of[Path(f"/d/C/C_000{i}.jpg")] for i in (1, 2)]).double())
