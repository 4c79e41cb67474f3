"""The batched engine computes what captum (and the plain autograd model) compute."""
from __future__ import annotations

import pytest
import torch

from falsify.attribution import get_explainer
from falsify.imageops import make_baseline


def _pair(model, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, *model.input_size, generator=g)
    with torch.no_grad():
        refs = model(torch.rand(b, 3, *model.input_size, generator=g))
    return x, refs


def _captum_phis(explainer, x, refs, segs):
    cap = explainer.make_captum()
    base = make_baseline(x, explainer.baseline)
    out = []
    for i in range(x.shape[0]):
        torch.manual_seed(explainer.seed + i)
        attr = cap.attribute(x[i : i + 1], baselines=base[i : i + 1], additional_forward_args=(refs[i : i + 1],),
                             feature_mask=segs[i][None, None], n_samples=explainer.n_samples,
                             perturbations_per_eval=explainer.batch_size)[0, 0]
        k = int(segs[i].max()) + 1
        out.append(torch.zeros(k).scatter_reduce(0, segs[i].flatten(), attr.flatten(), reduce="amax",
                                                 include_self=False))
    return out


@pytest.mark.parametrize("method", ["kernelshap", "lime"])
def test_superpixel_engine_equals_captum(tiny_model, method):
    x, refs = _pair(tiny_model, 3)
    e = get_explainer(method, tiny_model, n_samples=40, n_segments=8, batch_size=16)
    state = torch.get_rng_state()
    phis, segs = e.attribute_segments(x, refs)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    for i, ref in enumerate(_captum_phis(e, x, refs, segs)):
        torch.testing.assert_close(phis[i, : len(ref)], ref, atol=2e-5, rtol=1e-3)
    again, _ = e.attribute_segments(x, refs)
    assert torch.equal(again, phis)  # seeded: the same coalitions every call


def test_superpixel_engine_does_not_depend_on_batch_size(tiny_model):
    x, refs = _pair(tiny_model, 2)
    a = get_explainer("kernelshap", tiny_model, n_samples=30, n_segments=8, batch_size=7).attribute(x, refs)
    b = get_explainer("kernelshap", tiny_model, n_samples=30, n_segments=8, batch_size=64).attribute(x, refs)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_ig_equals_captum_plain_ig(tiny_model):
    from captum.attr import IntegratedGradients

    x, refs = _pair(tiny_model, 3)
    e = get_explainer("ig", tiny_model, steps=12, tolerance=None, batch_size=5, rule="gausslegendre")
    ours = e.attribute(x, refs)
    ref = IntegratedGradients(e.target.forward_func()).attribute(
        x, baselines=torch.zeros_like(x), additional_forward_args=(refs,), n_steps=12, method="gausslegendre"
    ).sum(1)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_ig_trapezoid_equals_captum_riemann_trapezoid(tiny_model):
    """The default rule: ``steps`` intervals are captum's riemann_trapezoid points (steps + 1);
    captum's weights sum to steps / (steps + 1) instead of 1, so its result is scaled by that."""
    from captum.attr import IntegratedGradients

    x, refs = _pair(tiny_model, 3)
    e = get_explainer("ig", tiny_model, steps=12, tolerance=None, batch_size=5)
    ours = e.attribute(x, refs)
    ref = IntegratedGradients(e.target.forward_func()).attribute(
        x, baselines=torch.zeros_like(x), additional_forward_args=(refs,), n_steps=13, method="riemann_trapezoid"
    ).sum(1)
    torch.testing.assert_close(ours, ref * 13 / 12, atol=1e-6, rtol=1e-5)


class _Counter:
    """Images through a model's backbone with and without autograd (a wrapper, not a hook)."""

    def __init__(self, model):
        self.grad = self.fwd = 0
        inner = model.backbone.forward

        def forward(x):
            if torch.is_grad_enabled():
                self.grad += x.shape[0]
            else:
                self.fwd += x.shape[0]
            return inner(x)

        model.backbone.forward = forward
        self.undo = lambda: model.backbone.__dict__.pop("forward")


def test_ig_refinement_reuses_every_point(tiny_model):
    """ig's adaptive trapezoid: each image costs one gradient image per point it ends with
    (nothing is evaluated twice), and its map is the trapezoid rule on those (non-uniform)
    points, recomputed here one point at a time with plain autograd."""
    import copy

    model = copy.deepcopy(tiny_model)
    x, refs = _pair(model, 3)
    refined = get_explainer("ig", model, steps=4, tolerance=1e-4, max_steps=64)
    model.embedding_dim  # the input check's one probe forward, made before counting
    counter = _Counter(model)
    try:
        raw = refined.attribute(x, refs)
    finally:
        counter.undo()
    assert max(refined.last_steps) > 4  # the test exercises a refinement
    assert counter.grad == sum(s + 1 for s in refined.last_steps) and counter.fwd == 0
    assert [len(p) - 1 for p in refined.last_points] == refined.last_steps
    ref = torch.nn.functional.normalize(refs, dim=1)
    for i, pts in enumerate(refined.last_points):
        a = [float(p) for p in pts]
        w = [0.0] * len(a)
        for j in range(len(a) - 1):
            w[j] += (a[j + 1] - a[j]) / 2
            w[j + 1] += (a[j + 1] - a[j]) / 2
        total = torch.zeros_like(x[i])
        for aj, wj in zip(a, w):
            p = (aj * x[i]).unsqueeze(0).requires_grad_(True)  # black baseline: b + a (x - b) = a x
            (g,) = torch.autograd.grad((model(p) * ref[i]).sum(), p)
            total += wj * g[0]
        torch.testing.assert_close(raw[i], (total * x[i]).sum(0), atol=1e-6, rtol=1e-4)


def test_geodesic_ig_reads_igs_path_points(tiny_model):
    """geodesic-ig's schedule reads the embeddings ig computed on the same path: after ig at 16
    steps, geodesic-ig at 4 steps (grid 16) needs no forward pass of its own, and its map equals
    the one computed from scratch (to rounding)."""
    import copy

    from falsify.attribution.paths import path_embeddings

    x, refs = _pair(tiny_model, 2)
    fresh_model = copy.deepcopy(tiny_model)
    fresh = get_explainer("geodesic-ig", fresh_model, steps=4, tolerance=None).attribute(x, refs)
    model = copy.deepcopy(tiny_model)
    get_explainer("ig", model, steps=16, tolerance=None).attribute(x, refs)
    counter = _Counter(model)
    try:
        shared = get_explainer("geodesic-ig", model, steps=4, tolerance=None).attribute(x, refs)
    finally:
        counter.undo()
    assert counter.fwd == 0 and counter.grad == 2 * 5
    torch.testing.assert_close(shared, fresh, atol=1e-5, rtol=1e-4)
    # changing a weight in place starts a new path: nothing stale is read
    with torch.no_grad():
        next(model.parameters()).mul_(1.5)
    counter = _Counter(model)
    try:
        get_explainer("geodesic-ig", model, steps=4, tolerance=None).attribute(x, refs)
    finally:
        counter.undo()
    assert counter.fwd == 2 * 17
    assert path_embeddings(copy.deepcopy(model)) is not path_embeddings(model)


def test_gradcam_gradients_stop_at_the_layer(tiny_model):
    """forward_backward gives the gradient w.r.t. the layer without touching parameters' .grad."""
    x, refs = _pair(tiny_model, 2)
    e = get_explainer("gradcam", tiny_model, layer="conv2")
    acts, grads, scores = e.forward_backward(x, refs)
    assert all(p.grad is None for p in tiny_model.parameters())
    a = acts.clone().requires_grad_(True)
    net = tiny_model.backbone
    emb = net.fc(net.pool(net.relu2(a)).flatten(1))
    s = (torch.nn.functional.normalize(emb, dim=1) * torch.nn.functional.normalize(refs, dim=1)).sum(1)
    (expected,) = torch.autograd.grad(s.sum(), a)
    torch.testing.assert_close(grads, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(scores, s.detach(), atol=1e-6, rtol=1e-5)


def test_dlib_inference_path_equals_the_module_path(dlib_model):
    x = torch.rand(3, 3, *dlib_model.input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fast = dlib_model(x)  # folded affines, no autograd
    with torch.enable_grad():
        slow = dlib_model(x).detach()  # every module as itself
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    net = dlib_model.backbone
    seen = []
    handle = net.layer2[3].register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    try:
        with torch.inference_mode():
            hooked = dlib_model(x)
    finally:
        handle.remove()
    assert seen == [torch.Size([3, 64, 17, 17])]  # a hook sees its module run
    torch.testing.assert_close(hooked, slow, atol=1e-5, rtol=0)
    # parameter changes reach the folded weights
    saved = net.affine1.bias.detach().clone()
    with torch.no_grad():
        net.affine1.bias.add_(0.01)
        try:
            changed = dlib_model(x)
            with torch.enable_grad():
                expected = dlib_model(x).detach()
        finally:
            net.affine1.bias.copy_(saved)
    torch.testing.assert_close(changed, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(changed, fast, atol=1e-5)


def test_noise_counterfactual_halves_equal_build_counterfactuals():
    from falsify.falsification import FalsificationConfig
    from falsify.falsification.stages import build_counterfactuals, fill_for, regions_for

    g = torch.Generator().manual_seed(1)
    x, m = torch.rand(3, 28, 28, generator=g), torch.rand(28, 28, generator=g)
    cfg = FalsificationConfig.preset("plain", fill="noise", K=5, grid=7, tau_high=0.2, tau_low=0.1, epsilon=0.05)
    reg = regions_for(x, m, cfg, 3)
    high, low = fill_for(cfg).halves(x, reg, 3)
    assert torch.equal(torch.cat([high, low]), build_counterfactuals(x, reg, cfg, 3))


@pytest.mark.parametrize("window,stride", [(6, None), (7, 3), (5, 5)])
def test_occlusion_equals_captum(tiny_model, window, stride):
    """Our batched Occlusion gives captum's ``Occlusion`` map (the same windows, cut at the
    border, the same averaging), with a black and a mean-colour baseline."""
    from captum.attr import Occlusion

    x, refs = _pair(tiny_model, 3)
    for baseline in ("black", "mean"):
        e = get_explainer("occlusion", tiny_model, window=window, stride=stride, baseline=baseline, batch_size=7)
        ours = e.attribute(x, refs)
        ref = Occlusion(e.target.forward_func()).attribute(
            x, sliding_window_shapes=(3, e.window, e.window), strides=(3, e.stride, e.stride),
            baselines=make_baseline(x, baseline), additional_forward_args=(refs,), perturbations_per_eval=16,
        ).mean(1)
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
