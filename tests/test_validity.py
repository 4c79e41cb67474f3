"""Validity of the test: controls (centre, edge, random, randomised-model, other-reference), the
beyond-prior criterion, the comparisons with the controls, and the validity study."""
from __future__ import annotations

import json

import pytest
import torch

from falsify.attribution import get_explainer
from falsify.models.base import randomised_copy
from falsify.data import load_images, load_pairs
from falsify.experiments import RunConfig, runner_for
from falsify.experiments.analysis import comparisons, control_verdicts
from falsify.experiments.store import ResultsStore
from falsify.falsification import FalsificationConfig, falsification_test
from falsify.falsification.prior import Prior, calibrate_delta, null_maps, occlusion_prior

FIXED = dict(tau_high=0.2, tau_low=0.1, epsilon=0.05)


@pytest.fixture(scope="module")
def faces(lfw_sample, dlib_model):
    pairs = load_pairs(lfw_sample, n_pairs=8, seed=5)
    a, _ = load_images([p.a for p in pairs], dlib_model.input_size)
    b, _ = load_images([p.b for p in pairs], dlib_model.input_size)
    with torch.inference_mode():
        refs = dlib_model(b)
    return pairs, a, refs


@pytest.fixture(scope="module")
def prior(lfw_sample, dlib_model, faces):
    pairs = faces[0]
    tested = {q for p in pairs for q in (p.a, p.b)}
    pool = [p.a for p in load_pairs(lfw_sample, n_pairs=40, seed=11) if p.a not in tested][:6]
    images, _ = load_images(pool, dlib_model.input_size)
    return occlusion_prior(dlib_model, images, grid=5), images


def test_prior_is_stored_by_cell_and_round_trips(prior, dlib_model):
    prior, _ = prior
    m = prior.map()
    assert tuple(m.shape) == tuple(dlib_model.input_size) and float(m.min()) == 0.0 and float(m.max()) == 1.0
    assert len(prior.cells) == 25 and len(torch.unique(m)) <= 25
    assert torch.equal(Prior.from_dict(json.loads(json.dumps(prior.to_dict()))).map(), m)
    h, w = m.shape  # the middle of the face matters more than the corners
    assert float(m[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3].mean()) > float(m[: h // 5, : w // 5].mean())


def test_controls_are_deterministic(dlib_model, faces, prior):
    _, a, refs = faces
    prior, _ = prior
    for name, kw in (("centre", {"prior": prior.map()}), ("edge", {}), ("random", {})):
        e = get_explainer(name, dlib_model, **kw)
        m1, m2 = e(a, refs), e(a[:3], refs[:3])
        assert torch.equal(m1[:3], m2), name  # alone or in a batch: the same map
        assert torch.equal(m1, get_explainer(name, dlib_model, **kw)(a, refs)), name
    centre = get_explainer("centre", dlib_model, prior=prior.map())(a, refs)
    assert all(torch.equal(centre[0], c) for c in centre)  # the same for every image
    edge = get_explainer("edge", dlib_model)(a, refs)
    assert not torch.equal(edge[0], edge[1])  # an image map
    with pytest.raises(ValueError, match="centre needs the model's prior"):
        get_explainer("centre", dlib_model)


def test_a_prior_only_map_is_falsified_by_beyond_prior(dlib_model, faces, prior):
    pairs, a, refs = faces
    prior, prior_images = prior
    p = prior.map()
    cfg = FalsificationConfig.preset("plain", criterion="beyond-prior", delta=0.0, **FIXED)
    ids = [q.index for q in pairs]
    results = falsification_test(dlib_model, a, refs, p.expand(len(a), -1, -1), cfg, pair_ids=ids, prior=p)
    assert all(r.verdict == "falsified" and r.excess == 0.0 for r in results)
    # the same map passes the absolute criterion on most pairs: the reason for the new criterion
    plain = falsification_test(dlib_model, a, refs, p.expand(len(a), -1, -1), FalsificationConfig.preset("plain", **FIXED), pair_ids=ids)
    assert sum(r.passed for r in plain) >= len(plain) // 2
    # maps that know only the prior pass by chance at delta = 0; the calibrated delta stops them
    g = torch.Generator().manual_seed(0)
    noisy = null_maps(p, len(a), 14, g)
    calibrated = calibrate_delta(dlib_model, prior_images, p, cfg, seed=1)
    assert calibrated["delta"] > 0 and calibrated["n"] == 4 * len(prior_images)
    res = falsification_test(dlib_model, a, refs, noisy, cfg.replace(delta=calibrated["delta"]), pair_ids=ids, prior=p)
    assert sum(r.falsified for r in res) >= len(res) - 1
    with pytest.raises(ValueError, match="needs prior"):
        falsification_test(dlib_model, a, refs, noisy, cfg)


def test_prior_cache_gives_the_same_verdicts(dlib_model, faces, prior):
    pairs, a, refs = faces
    p = prior[0].map()
    cfg = FalsificationConfig.preset("plain", criterion="beyond-prior", delta=0.01, **FIXED)
    m = get_explainer("saliency", dlib_model)(a, refs)
    ids = [q.index for q in pairs]
    cache: dict = {}
    first = falsification_test(dlib_model, a, refs, m, cfg, pair_ids=ids, prior=p, prior_cache=cache)
    assert len(cache) == len(a)
    again = falsification_test(dlib_model, a[:4], refs[:4], m[:4], cfg, pair_ids=ids[:4], prior=p, prior_cache=cache)
    fresh = falsification_test(dlib_model, a[:4], refs[:4], m[:4], cfg, pair_ids=ids[:4], prior=p)
    # ``first`` and ``again`` read the same cached prior distances; ``fresh`` computes them in a
    # batch of 4 instead of 16, and float32 convolutions sum in another order for another batch
    # size, thread count or CPU: embeddings then differ by a few ulp (1.1e-7 rad in excess was
    # seen between machines), so the excess is equal to 1e-5 rad, 1000x below delta = 0.01
    for x, y, z in zip(first[:4], again, fresh):
        assert x.verdict == y.verdict == z.verdict
        assert x.excess == pytest.approx(y.excess, abs=1e-5) and x.excess == pytest.approx(z.excess, abs=1e-5)


def test_random_model_rows_are_made_on_the_random_model_and_tested_on_the_real_one(lfw_sample, tmp_path, dlib_model):
    config = RunConfig(data=str(lfw_sample), methods=["saliency", "random"], n_pairs=4, seed=2, out=str(tmp_path / "r"),
                       sanity=True, grid_pairs=0, preset="plain", **FIXED)
    summary = runner_for(config, progress=False, log=lambda *a: None).run()
    names = [m["method"] for m in summary["methods"]]
    assert names == ["saliency", "random", "saliency@random-model"]  # controls get no random-model row
    assert next(m for m in summary["methods"] if m["method"] == "saliency@random-model")["control"]
    with ResultsStore(tmp_path / "r" / "results.sqlite") as s:
        row = next(r for r in s.rows("6.1", "dlib-resnet", ["saliency@random-model"]))
    pair = next(p for p in load_pairs(lfw_sample, n_pairs=4, seed=2) if p.id == row["pair"])
    a, _ = load_images([pair.a], dlib_model.input_size, align=dlib_model.aligner)
    b, _ = load_images([pair.b], dlib_model.input_size, align=dlib_model.aligner)
    rand = randomised_copy(dlib_model, seed=2)
    with torch.inference_mode():
        ref_real, ref_rand = dlib_model(b), rand(b)
    m = get_explainer("saliency", rand)(a, ref_rand)
    expected = falsification_test(dlib_model, a, ref_real, m, FalsificationConfig.preset("plain", **FIXED), pair_ids=[pair.index])[0]
    assert row["d_high"] == pytest.approx(expected.d_high, abs=1e-5)
    assert row["d_low"] == pytest.approx(expected.d_low, abs=1e-5)
    real_map = get_explainer("saliency", dlib_model)(a, ref_real)
    on_real = falsification_test(dlib_model, a, ref_real, real_map, FalsificationConfig.preset("plain", **FIXED), pair_ids=[pair.index])[0]
    assert abs(on_real.d_high - row["d_high"]) > 1e-4  # a different map than the real model's
    against = {c["against"] for c in summary["comparisons"] if c["method"] == "saliency"}
    assert "saliency@random-model" in against


def test_other_reference_rows_use_the_next_pairs_face(lfw_sample, tmp_path):
    config = RunConfig(data=str(lfw_sample), methods=["saliency"], n_pairs=4, seed=2, out=str(tmp_path / "r"),
                       other_reference=True, grid_pairs=0, preset="plain", **FIXED)
    summary = runner_for(config, progress=False, log=lambda *a: None).run()
    by = {m["method"]: m for m in summary["methods"]}
    assert set(by) == {"saliency", "saliency@other-reference"} and by["saliency@other-reference"]["control"]
    assert by["saliency@other-reference"]["n"] == 4


def test_6_1_runs_centre_edge_and_random_by_default():
    c = RunConfig()
    assert {"centre", "edge", "random"} <= set(c.methods)
    assert (c.fill, c.q, c.criterion, c.delta) == ("mean", 0.1, "beyond-prior", 0.0)  # the validity study's choice
    assert RunConfig(methods=["centre"], preset="plain").needs_prior
    plain = RunConfig(preset="plain", fill="noise")
    assert (plain.fill, plain.q, plain.criterion) == ("noise", 0.2, "absolute")
    with pytest.raises(ValueError, match="unknown preset"):
        RunConfig(preset="nope")


def test_default_run_judges_beyond_the_prior(lfw_sample, tmp_path):
    config = RunConfig(data=str(lfw_sample), methods=["saliency", "centre"], n_pairs=4, seed=2, out=str(tmp_path / "r"),
                       prior_images=4, prior_grid=5, grid_pairs=0, **FIXED)
    summary = runner_for(config, progress=False, log=lambda *a: None).run()
    assert summary["falsification"]["criterion"] == "beyond-prior" and summary["falsification"]["fill"] == "mean"
    assert summary["prior"]["n_images"] == 4 and summary["prior"]["delta"] is None
    centre = next(m for m in summary["methods"] if m["method"] == "centre")
    assert centre["n_falsified"] == 4  # the prior is never beyond itself
    with ResultsStore(tmp_path / "r" / "results.sqlite") as s:
        rows = s.rows("6.1", "dlib-resnet", ["saliency"])
    detail = json.loads(rows[0]["detail"])
    assert detail["criterion"] == "beyond-prior" and detail["excess"] is not None
    calibrated = RunConfig(data=str(lfw_sample), methods=["saliency"], n_pairs=4, seed=2, out=str(tmp_path / "c"),
                           prior_images=4, prior_grid=5, grid_pairs=0, delta="calibrated", **FIXED)
    summary = runner_for(calibrated, progress=False, log=lambda *a: None).run()
    assert summary["prior"]["delta"]["n"] == 16 and summary["falsification"]["delta"] == summary["prior"]["delta"]["delta"]


def test_comparisons_with_controls_and_the_plain_sentence():
    pairs = [f"p{i}" for i in range(30)]
    good = {p: "passed" for p in pairs}
    centre = {p: ("falsified" if i < 25 else "passed") for i, p in enumerate(pairs)}
    weak = {p: ("falsified" if i < 24 else "passed") for i, p in enumerate(pairs)}
    by = {"centre": centre, "good": good, "weak": weak, "good@random-model": centre}
    comps = comparisons(by)
    get = {(c["method"], c["against"]): c for c in comps}
    assert get[("good", "centre")]["beats"] and get[("good", "good@random-model")]["beats"]
    assert not get[("weak", "centre")]["beats"]
    methods = [{"method": m} for m in by]
    verdicts = {v["method"]: v for v in control_verdicts(methods, comps)}
    assert verdicts["good"]["beats_all"] and verdicts["good"]["sentence"] is None
    assert not verdicts["weak"]["beats_all"] and "the centre prior" in verdicts["weak"]["sentence"]
    assert "centre" not in verdicts and "good@random-model" not in verdicts  # controls are not judged


def test_a_method_untestable_on_every_pair_is_not_compared():
    """A method with no testable map (e.g. a CAM at a layer whose maps are constant) has nothing
    to compare: the run's summary is still written, without that method's comparisons."""
    pairs = [f"p{i}" for i in range(6)]
    by = {"centre": {p: "falsified" for p in pairs}, "flat": {p: "untestable" for p in pairs},
          "good": {p: "passed" for p in pairs}}
    comps = comparisons(by)
    assert {(c["method"], c["against"]) for c in comps} == {("good", "centre")}
    verdicts = {v["method"]: v for v in control_verdicts([{"method": m} for m in by], comps)}
    assert "flat" in verdicts and not verdicts["flat"]["beats_all"]


def test_validity_study_end_to_end(lfw_sample, tmp_path, capsys):
    from falsify.cli import main

    out = tmp_path / "v"
    cfg = tmp_path / "small.toml"  # a small prior and calibration keep the test short
    cfg.write_text("prior_images = 4\nprior_grid = 5\ncalibration_pairs = 40\n")
    argv = ["run", "validity", "--data", str(lfw_sample), "--n-pairs", "4", "--out", str(out), "-q", "-K", "2",
            "--option", "ig.steps=8", "--option", "ig.tolerance=null", "--methods", "ig", "--config", str(cfg)]
    # the study's own maps are fixed; --methods/--option only pass IG's options through
    rc = main(argv)
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "| fill | q | target | criterion |" in text and "power" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "validity" and summary["best"] is not None
    conf = summary["configurations"]
    assert len(conf) == 2 * 3 * 2 * 4
    beyond = next(e for e in conf if e["criterion"].startswith("beyond-prior, delta 0 ") and e["fill"] == "blur")
    assert beyond["rates"]["all"]["centre"]["fr"] == 1.0  # the prior is never beyond itself
    assert (out / "validity.md").is_file()
    assert main(argv) == 0 and "rows of experiment validity are already in the store" in capsys.readouterr().out
    (out / "validity.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "validity.md").read_text().startswith("| fill |")


def test_pair_target_measures_the_pairs_angle(dlib_model, faces):
    pairs, a, refs = faces
    m = get_explainer("saliency", dlib_model)(a[:2], refs[:2])
    emb_cfg = FalsificationConfig.preset("plain", **FIXED)
    pair_cfg = FalsificationConfig.preset("plain", target="pair", **FIXED)
    r_emb = falsification_test(dlib_model, a[:2], refs[:2], m, emb_cfg, keep_examples=True)
    r_pair = falsification_test(dlib_model, a[:2], refs[:2], m, pair_cfg, keep_examples=True)
    from falsify.geometry import geodesic_distance

    with torch.inference_mode():
        fx = dlib_model(a[:1])
        fh = dlib_model(r_pair[0].example_high.unsqueeze(0))
    expected = abs(float(geodesic_distance(fh, refs[:1])) - float(geodesic_distance(fx, refs[:1])))
    assert r_pair[0].d_high == pytest.approx(expected, abs=1e-4)
    assert r_pair[0].d_high <= r_emb[0].d_high + 1e-6  # |change of the angle to r| <= how far f(x) moved
    with pytest.raises(ValueError, match="pass the references"):
        falsification_test(dlib_model, a[:2], None, m, pair_cfg)


def test_deletion_curve_flips_sooner_for_the_oracle(dlib_model, faces):
    from falsify.falsification.calibration import occlusion_sensitivity
    from falsify.falsification.deletion import deletion_curve

    pairs, a, refs = faces
    with torch.inference_mode():
        cos = torch.nn.functional.cosine_similarity(dlib_model(a), refs, dim=1)
    i = next(k for k, p in enumerate(pairs) if p.same and cos[k] > dlib_model.threshold)
    occ = occlusion_sensitivity(dlib_model, a[i : i + 1], grid=10)[0]
    good = deletion_curve(dlib_model, a[i], occ, refs[i], dlib_model.threshold)
    bad = deletion_curve(dlib_model, a[i], -occ, refs[i], dlib_model.threshold)
    assert good.fractions[0] == 0.0 and good.fractions[-1] == pytest.approx(1.0)
    assert good.cosines[0] == pytest.approx(float(cos[i]), abs=1e-5)
    assert good.flipped and good.flip_fraction < bad.flip_fraction and good.area < bad.area


def test_cli_test_beyond_prior_and_centre(lfw_sample, capsys):
    from falsify.cli import main

    a, b = (str(p) for p in sorted((lfw_sample / "Abel_Pacheco").glob("*.jpg"))[:2])
    argv = ["test", a, b, "--method", "centre", "--criterion", "beyond-prior", "--data", str(lfw_sample),
            "--calibration-pairs", "40", "--prior-images", "4", "--json", "-q"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    r = out["results"][0]
    assert r["criterion"] == "beyond-prior" and r["excess"] == 0.0 and r["verdict"] == "falsified"
    assert out["config"]["delta"] is not None and out["config"]["delta"] >= 0


def test_6_1_deletion_curves(lfw_sample, tmp_path, capsys):
    from falsify.cli import main

    out = tmp_path / "d"
    argv = ["run", "--data", str(lfw_sample), "--n-pairs", "6", "--seed", "4", "--methods", "saliency,random",
            "--out", str(out), "-q", "--preset", "plain", "--deletion",
            "--tau-high", "0.2", "--tau-low", "0.1", "--epsilon", "0.05"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    sal = next(m for m in summary["methods"] if m["method"] == "saliency")["deletion"]
    assert sal is not None and 1 <= sal["n"] <= 3 and 0 <= sal["median_flip_fraction"] <= 1
    assert "deletion curves" in text and "saliency" in text.split("deletion curves")[1]


def test_prior_image_batch_skips_unreadable_images_and_partners(tmp_path, tiny_model):
    from PIL import Image

    from falsify.data import Pair
    from falsify.falsification.prior import prior_image_batch

    paths = []
    for i in range(6):
        p = tmp_path / f"f{i}.png"
        Image.new("RGB", (32, 32), (40 * i, 10, 200 - 30 * i)).save(p)
        paths.append(p)
    paths[1].write_bytes(b"not an image")  # unreadable itself
    pool = [Pair(paths[0], paths[1], True), Pair(paths[2], paths[3], False), Pair(paths[4], paths[5], True)]
    images, refs = prior_image_batch(tiny_model, pool, exclude={paths[2]}, n=10)
    # f0 (partner f1 broken) and f1 are dropped, f2 is excluded: f3 (partner f2), f4, f5 remain
    expected, _ = load_images([paths[3], paths[4], paths[5]], tiny_model.input_size)
    assert torch.equal(images, expected)
    with torch.inference_mode():
        partners, _ = load_images([paths[2], paths[5], paths[4]], tiny_model.input_size)
        assert torch.allclose(refs, tiny_model(partners))
