"""Attribution methods: the spec'd Grad-CAM against captum, completeness/efficiency, batching,
hooks, and the errors a user meets."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from captum.attr import LayerAttribution, LayerGradCam

from falsify.attribution import METHODS, AttributionError, get_explainer, normalise_maps
from falsify.attribution.sanity import cascading_randomisation
from falsify.data import load_image
from falsify.models.base import FaceEmbedder
from tests.conftest import TinyNet


def _faces(lfw_sample, size, n=4):
    """Real face crops from the LFW sample (two images of each of n/2 people)."""
    names = ["Abel_Pacheco", "Akhmed_Zakayev", "Amber_Tamblyn", "Anders_Fogh_Rasmussen"]
    paths = []
    for name in names:
        files = sorted((lfw_sample / name).glob("*.jpg"))
        paths += files[:2]
    return torch.stack([load_image(p, size) for p in paths[:n]])


@pytest.fixture
def tiny_pair(tiny_model):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g)
    with torch.no_grad():
        refs = tiny_model(torch.rand(4, 3, 32, 32, generator=g))
    return x, refs


def _captum_gradcam(model, layer, x, refs):
    def fwd(inp, r):
        return (model(inp) * torch.nn.functional.normalize(r, dim=1)).sum(1)

    attr = LayerGradCam(fwd, layer).attribute(x, additional_forward_args=(refs,), relu_attributions=True)
    up = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    return normalise_maps(up, "positive")


def test_gradcam_equals_captum_tiny(tiny_model, tiny_pair):
    x, refs = tiny_pair
    ours = get_explainer("gradcam", tiny_model, layer="conv2")(x, refs)
    ref = _captum_gradcam(tiny_model, tiny_model.backbone.conv2, x, refs)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_gradcam_equals_captum_dlib(dlib_model, lfw_sample):
    x = _faces(lfw_sample, dlib_model.input_size, 4)
    with torch.no_grad():
        refs = dlib_model(x.flip(0))
    from falsify.attribution.base import default_cam_layer
    from falsify.models import conv_layer_names

    assert get_explainer("gradcam", dlib_model).layer_name == "backbone.layer2.3"  # the model's choice
    convs = conv_layer_names(dlib_model)
    assert default_cam_layer(dlib_model, convs) == "backbone.layer4.2.conv2"  # generic rule: 4x4, not 1x1
    for layer in ("layer4.2.conv2", "layer3.0.conv2"):
        ours = get_explainer("gradcam", dlib_model, layer=layer)(x, refs)
        module = dict(dlib_model.backbone.named_modules())[layer]
        ref = _captum_gradcam(dlib_model, module, x, refs)
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
        assert float(ours.flatten(1).std(1).min()) > 0.05  # not degenerate


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "biometric-gradcam", "saliency", "ig", "random"])
def test_batch_equals_single_calls(tiny_model, tiny_pair, method):
    x, refs = tiny_pair
    opts = {"threshold": 0.2} if method == "biometric-gradcam" else {}
    e = get_explainer(method, tiny_model, **opts)
    batch = e(x, refs)
    single = torch.cat([e(x[i : i + 1], refs[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batch, single, atol=1e-4, rtol=0)


def test_gradcam_batch_equals_single_dlib(dlib_model, lfw_sample):
    x = _faces(lfw_sample, dlib_model.input_size, 4)
    with torch.no_grad():
        refs = dlib_model(x.roll(1, 0))
    e = get_explainer("gradcam", dlib_model)
    single = torch.cat([e(x[i : i + 1], refs[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(e(x, refs), single, atol=1e-4, rtol=0)


def test_hooks_do_not_leak(tiny_model, tiny_pair):
    x, refs = tiny_pair
    layer = tiny_model.backbone.conv2
    e = get_explainer("gradcam++", tiny_model, layer="conv2")
    e(x, refs)
    assert not layer._forward_hooks and not layer._backward_hooks
    with pytest.raises(AttributionError):
        e(x, refs[:, :3])  # wrong reference size: error before any hook is set
    assert not layer._forward_hooks and not layer._backward_hooks


def test_all_equal_map_is_zero_not_nan():
    flat = normalise_maps(torch.full((2, 5, 5), 3.0), "positive")
    assert torch.equal(flat, torch.zeros(2, 5, 5))
    assert torch.equal(normalise_maps(torch.full((1, 4, 4), -1.0), "positive"), torch.zeros(1, 4, 4))


def test_reference_free_gradcam_is_not_degenerate(tiny_model, tiny_pair):
    x, _ = tiny_pair
    maps = get_explainer("gradcam", tiny_model)(x, None)
    assert torch.isfinite(maps).all() and float(maps.flatten(1).std(1).min()) > 0


def _target(model, x, refs):
    with torch.no_grad():
        return (model(x) * torch.nn.functional.normalize(refs, dim=1)).sum(1)


@pytest.mark.parametrize("method", ["ig", "geodesic-ig"])
def test_path_methods_completeness_dlib(dlib_model, lfw_sample, method):
    """Completeness at the default settings: sum(map) = s(x) - s(black) within 2%."""
    from falsify.data import load_images, load_pairs

    pair = load_pairs(lfw_sample).sample(6, seed=1)[4]  # s(x) - s(black) = 0.052 for this pair
    x, _ = load_images([pair.a], dlib_model.input_size)
    y, _ = load_images([pair.b], dlib_model.input_size)
    with torch.no_grad():
        refs = dlib_model(y)
    e = get_explainer(method, dlib_model)
    raw = e.attribute(x, refs)
    gap = _target(dlib_model, x, refs) - _target(dlib_model, torch.zeros_like(x), refs)
    assert float(gap.abs().min()) > 0.02
    total = raw.flatten(1).sum(1)
    assert torch.all((total - gap).abs() <= 0.02 * gap.abs()), (total, gap, e.last_steps)
    assert e.last_residual[0] == pytest.approx(float(total[0] - gap[0]), abs=1e-5)


@pytest.mark.parametrize("method,rule", [("ig", "trapezoid"), ("ig", "gausslegendre"), ("geodesic-ig", None)])
def test_path_refinement_meets_the_tolerance(tiny_model, tiny_pair, method, rule):
    """Fixed steps without a tolerance; with one, every image ends within it or at max_steps.
    Gauss-Legendre doubles its steps; the trapezoid rules (ig, geodesic-ig) bisect where the
    local error is (any count up to max_steps)."""
    x, refs = tiny_pair
    opts = {"rule": rule} if rule else {}
    fixed = get_explainer(method, tiny_model, steps=4, tolerance=None, **opts)
    fixed.attribute(x, refs)
    assert fixed.last_steps == [4] * 4
    refined = get_explainer(method, tiny_model, steps=4, tolerance=1e-3, max_steps=256, **opts)
    raw = refined.attribute(x, refs)
    if rule != "gausslegendre":
        assert all(4 <= s <= 256 for s in refined.last_steps) and max(refined.last_steps) > 4
    else:
        assert all(s in (4, 8, 16, 32, 64, 128, 256) for s in refined.last_steps)
    gap = _target(tiny_model, x, refs) - _target(tiny_model, torch.zeros_like(x), refs)
    for i, s in enumerate(refined.last_steps):
        if s < 256:
            assert abs(float(raw[i].sum() - gap[i])) <= 1e-3 * abs(float(gap[i])) + 1e-6


class _RoundingNet(TinyNet):
    """TinyNet whose output carries a rounding-like error: 3% of its norm, a deterministic but
    erratic function of the input, and invisible to autograd (as a low precision's rounding is).
    s(x) - s(b) is then off by more than the 2% tolerance allows on most images, so completeness
    cannot be met however finely the path is cut."""

    def forward(self, x):
        out = super().forward(x)
        k = torch.arange(1, out.shape[1] + 1, dtype=out.dtype)
        wobble = torch.sin(1e4 * x.flatten(1).sum(1, keepdim=True) * k)
        return out + (0.03 * out.norm(dim=1, keepdim=True) * wobble).detach()


@pytest.mark.parametrize("method,rule", [("ig", "trapezoid"), ("ig", "gausslegendre"), ("geodesic-ig", None)])
def test_path_refinement_stops_at_a_low_precisions_noise_floor(monkeypatch, tiny_pair, method, rule):
    """Under a low precision, a residual that the intervals' doubling no longer reduces ends the
    refinement (issue 30: bf16 refined every dlib pair it could not finish to the 512-step cap);
    under float32 the same network still refines to the cap, its maps as without the rule."""
    import contextlib

    from falsify.models import precision

    monkeypatch.setattr(precision, "autocast", lambda *a: contextlib.nullcontext())  # the noise is simulated
    model = FaceEmbedder(_RoundingNet(), input_size=(32, 32), mean=0.5, std=0.25, name="tiny")
    x, _ = tiny_pair
    with torch.no_grad():
        refs = model(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    opts = {"rule": rule} if rule else {}

    def run(stall_factor):
        e = get_explainer(method, model, **opts)
        e.stall_factor = stall_factor
        return e.attribute(x, refs), e

    raw, e = run(2.0)
    assert max(e.last_steps) == 512  # float32: the rule does not act
    raw_without, _ = run(None)
    assert torch.equal(raw, raw_without)

    model.precision = "bf16"
    raw_low, e = run(2.0)
    assert max(e.last_steps) < 512, e.last_steps
    gap = _target(model, x, refs) - _target(model, torch.zeros_like(x), refs)
    for h, steps, res, g in zip(e.last_history, e.last_steps, e.last_residual, gap.tolist()):
        assert h[-1] == (steps, res)
        best = min(h, key=lambda r: abs(r[1]))
        assert abs(res) <= 0.02 * abs(g) + 1e-6 or steps >= 2 * best[0]  # met the tolerance, or stalled
    assert any(abs(res) > 0.02 * abs(g) for res, g in zip(e.last_residual, gap.tolist()))
    _, e_cap = run(None)
    assert max(e_cap.last_steps) == 512  # without the rule, the low precision refines to the cap


def test_geodesic_ig_schedule_spends_steps_where_the_embedding_moves(dlib_model, lfw_sample):
    from falsify.attribution.geodesic_ig import GeodesicIntegratedGradients

    x = _faces(lfw_sample, dlib_model.input_size, 1)[0]
    e = GeodesicIntegratedGradients(dlib_model, steps=16)
    a = e.schedule(x, torch.zeros_like(x))
    widths = a[1:] - a[:-1]
    assert len(a) == 17 and float(a[0]) == 0.0 and float(a[-1]) == pytest.approx(1.0, abs=1e-6)
    assert torch.all(widths > 0)
    assert float(widths.max() / widths.min()) > 1.5  # not the uniform schedule


def test_kernelshap_efficiency_dlib(dlib_model, lfw_sample):
    from falsify.imageops import make_baseline

    x = _faces(lfw_sample, dlib_model.input_size, 2)
    with torch.no_grad():
        refs = dlib_model(x.flip(0))
    e = get_explainer("kernelshap", dlib_model, n_samples=400, n_segments=30)
    phis, segs = e.attribute_segments(x, refs)
    gap = _target(dlib_model, x, refs) - _target(dlib_model, make_baseline(x, "mean"), refs)
    assert torch.all((phis.sum(1) - gap).abs() <= 0.05 * gap.abs()), (phis.sum(1), gap)
    raw = e.attribute(x, refs)  # the density map sums to the same total
    torch.testing.assert_close(raw.flatten(1).sum(1), phis.sum(1), atol=1e-4, rtol=1e-4)


def test_every_method_on_real_pairs(dlib_model, lfw_sample):
    x = _faces(lfw_sample, dlib_model.input_size, 2)
    with torch.no_grad():
        refs = dlib_model(x.flip(0))
    fast = {"ig": {"steps": 16, "tolerance": None}, "geodesic-ig": {"steps": 8, "tolerance": None}, "kernelshap": {"n_samples": 64},
            "lime": {"n_samples": 64}, "occlusion": {"window": 30, "stride": 30},
            "rise": {"n_masks": 32}, "rise-dissimilarity": {"n_masks": 32},
            "centre": {"prior": torch.linspace(0, 1, 150 * 150).view(150, 150)}}
    for method in METHODS:
        maps = get_explainer(method, dlib_model, **fast.get(method, {}))(x, refs)
        assert maps.shape == (2, 150, 150) and maps.dtype == torch.float32, method
        assert torch.isfinite(maps).all() and float(maps.min()) >= 0 and float(maps.max()) <= 1, method
        assert float(maps.max()) == 1.0, method  # real faces give non-constant maps


def test_gradcam_sits_on_the_face(dlib_model, lfw_sample):
    """The sample's crops are filled by the face: Grad-CAM must be denser inside than on the
    15-px border band (36% of the area), where the deep stages' padding artefacts sit."""
    from falsify.data import load_pairs, load_images

    pairs = load_pairs(lfw_sample).sample(16, seed=2)
    xa, _ = load_images([p.a for p in pairs], dlib_model.input_size)
    xb, _ = load_images([p.b for p in pairs], dlib_model.input_size)
    with torch.no_grad():
        refs = dlib_model(xb)
    maps = get_explainer("gradcam", dlib_model)(xa, refs)
    inside = maps[:, 15:135, 15:135].sum((1, 2)) / maps.sum((1, 2))
    assert float(inside.mean()) > 0.68 and float(inside.min()) > 0.4, inside


def test_sanity_check_gradcam_decorrelates(dlib_model, lfw_sample):
    x = _faces(lfw_sample, dlib_model.input_size, 2)
    stages = cascading_randomisation(dlib_model, "gradcam", x, x.flip(0), seed=0)
    assert [s.randomised for s in stages][0] == "backbone.fc"
    assert stages[-1].spearman < 0.5, [(s.randomised, s.spearman) for s in stages]


def test_errors_are_clear(tiny_model, tiny_pair):
    x, refs = tiny_pair
    with pytest.raises(AttributionError, match="unknown attribution method 'gradcan'"):
        get_explainer("gradcan", tiny_model)
    with pytest.raises(AttributionError, match="no layer named 'layer9'.*conv1, conv2"):
        get_explainer("gradcam", tiny_model, layer="layer9")
    with pytest.raises(AttributionError, match="has no option 'step'"):
        get_explainer("ig", tiny_model, step=10)
    no_conv = FaceEmbedder(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)), (8, 8))
    with pytest.raises(AttributionError, match="no nn.Conv2d"):
        get_explainer("gradcam", no_conv)
    e = get_explainer("gradcam", tiny_model)
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        e(torch.rand(2, 3, 40, 40), refs[:2])
    with pytest.raises(AttributionError, match=r"unsqueeze"):
        e(x[0], refs[0])
    with pytest.raises(AttributionError, match=r"\[0,1\]"):
        e(x * 255, refs)
    with pytest.raises(AttributionError, match=r"\(B, D\) = \(4, 16\)"):
        e(x, refs[:, :8])
    with pytest.raises(AttributionError, match="threshold"):
        get_explainer("biometric-gradcam", tiny_model)


def test_biometric_gradcam_terms(tiny_model, tiny_pair):
    x, refs = tiny_pair
    plain = get_explainer("gradcam", tiny_model)(x, refs)
    off = get_explainer("biometric-gradcam", tiny_model, stability=False, confidence=False)(x, refs)
    torch.testing.assert_close(off, plain)  # both terms off: exactly Grad-CAM
    sims = _target(tiny_model, x, refs)
    # threshold far above every similarity: confident non-matches -> evidence against the match
    against = get_explainer("biometric-gradcam", tiny_model, stability=False, threshold=5.0)
    e = get_explainer("gradcam", tiny_model)
    acts, grads, _ = e.forward_backward(*e.check_inputs(x, refs))
    neg = torch.relu(-(grads.mean((2, 3))[:, :, None, None] * acts).sum(1))
    neg = torch.nn.functional.interpolate(neg[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(against(x, refs), normalise_maps(neg, "positive"), atol=1e-4, rtol=0)
    assert float(sims.max()) < 5.0
