"""The Quantus bridge (falsify.falsification.quantus_bridge): the similarity wrapper returns the
pair's cosine similarity, the explain adapter returns Quantus-shaped maps, and Quantus's metrics
give known answers on a toy embedder that sees only one region of the image.

The wrapper and adapter tests need no Quantus; the metric tests are skipped, with the install line,
only where Quantus is not importable (``make test`` installs it)."""
from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch
import torch.nn as nn

from falsify.attribution import get_explainer
from falsify.falsification import quantus_bridge as qb
from falsify.models.base import FaceEmbedder

HAS_QUANTUS = importlib.util.find_spec("quantus") is not None
needs_quantus = pytest.mark.skipif(not HAS_QUANTUS, reason=f"quantus is not installed: {qb.INSTALL}")


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand((n, 3, 32, 32), generator=torch.Generator().manual_seed(seed))


def hand_cosines(model, x: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """cos(f(x_i), f(b)) image by image, the dot product in float64 by hand."""
    with torch.no_grad():
        eb = model.embed_raw(b[None])[0].double().numpy()
        out = []
        for xi in x:
            ex = model.embed_raw(xi[None])[0].double().numpy()
            out.append(ex @ eb / (np.linalg.norm(ex) * np.linalg.norm(eb)))
    return np.array(out)


# float32 embeddings of norm 1: the wrapper's cosine and the float64 one made from the same float32
# network differ by rounding in the forward pass (different batch compositions) and the sum of D
# products, a few float32 epsilons (1.2e-7); 1e-5 is far below any change a perturbation makes.
TOL = 1e-5


def test_wrapper_returns_the_cosine_similarity(tiny_model):
    x, b = images(5, 0), images(1, 1)[0]
    sim = qb.SimilarityModule(tiny_model, b)
    with torch.no_grad():
        out = sim(x)
    assert out.shape == (5, 1)
    np.testing.assert_allclose(out[:, 0].double().numpy(), hand_cosines(tiny_model, x, b), atol=TOL, rtol=0)
    assert not sim.training  # Quantus refuses a model in training mode


def test_wrapper_with_threshold_puts_the_decision_in_argmax(tiny_model):
    x, b = images(6, 2), images(1, 3)[0]
    cos = hand_cosines(tiny_model, x, b)
    threshold = float(np.median(cos))
    with torch.no_grad():
        out = qb.SimilarityModule(tiny_model, b, threshold=threshold)(x).numpy()
    assert out.shape == (6, 2)
    np.testing.assert_allclose(out[:, 0], cos, atol=TOL, rtol=0)
    np.testing.assert_array_equal(out.argmax(1) == 0, out[:, 0] >= threshold)
    assert 0 < (out.argmax(1) == 0).sum() < 6  # both decisions occur


@needs_quantus
def test_quantus_sees_the_similarity(tiny_model):
    """Through Quantus's own model interface (what every metric calls), as the bridge calls it."""
    from quantus.helpers.utils import get_wrapped_model

    x, b = images(4, 9), images(1, 10)[0]
    wrapped = get_wrapped_model(qb.SimilarityModule(tiny_model, b), channel_first=True, softmax=False)
    pred = wrapped.predict(x.numpy())
    assert pred.shape == (4, 1)
    np.testing.assert_allclose(pred[:, 0], hand_cosines(tiny_model, x, b), atol=TOL, rtol=0)


def test_a_randomised_copy_embeds_the_reference_with_its_own_weights(tiny_model):
    b = images(1, 4)[0]
    sim = qb.SimilarityModule(tiny_model, b)
    rand = copy.deepcopy(sim)
    torch.manual_seed(0)
    rand.embedder.backbone.fc.reset_parameters()
    with torch.no_grad():
        np.testing.assert_allclose(rand(b[None])[0, 0].item(), 1.0, atol=TOL)  # B against itself
        assert not torch.allclose(rand.reference_embedding(), sim.reference_embedding())


def test_explain_func_returns_falsify_maps_in_quantus_shape(tiny_model):
    x, b = images(3, 5), images(1, 6)[0]
    sim = qb.SimilarityModule(tiny_model, b)
    a = qb.explain_func(model=sim, inputs=x.numpy(), targets=np.zeros(3, dtype=int), method="saliency")
    assert a.shape == (3, 1, 32, 32) and a.dtype == np.float32
    want = get_explainer("saliency", tiny_model)(x, tiny_model(b[None]).detach().expand(3, -1))
    np.testing.assert_allclose(a[:, 0], want.numpy(), atol=1e-6)
    with pytest.raises(TypeError, match="SimilarityModule"):
        qb.explain_func(model=tiny_model, inputs=x.numpy(), method="saliency")


def test_missing_quantus_is_one_line_naming_the_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_quantus(name, *args, **kw):
        if name == "quantus":
            raise ImportError("No module named 'quantus'")
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_quantus)
    with pytest.raises(ImportError, match=r"pip install --no-deps quantus==0\.6\.0") as e:
        qb.make_metric("road", (32, 32))
    assert "\n" not in str(e.value)


# --- known answers: an embedder that sees only the top-left 16 x 16 quadrant --------------------

class QuadrantNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 16)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x[:, :, :16, :16])).flatten(1))


@pytest.fixture
def quadrant():
    model = FaceEmbedder(QuadrantNet(), input_size=(32, 32), mean=0.5, std=0.25, name="quadrant")
    x = images(1, 7)[0]
    on = torch.zeros(32, 32)
    on[:16, :16] = 1.0  # the region the model sees
    off = torch.zeros(32, 32)
    off[16:, 16:] = 1.0  # a region it never sees
    return model, x, on, off


def score(model, x, attribution, metric, threshold=None, **params):
    m = qb.make_metric(metric, (32, 32), **params)
    # the pair (x, x): s = 1 before any perturbation, so any change the model sees lowers it
    return qb.score_pair(metric, m, model, x, x, attribution, method="centre",
                         options={"prior": attribution}, threshold=threshold, seed=0)


@needs_quantus
def test_region_perturbation_knows_the_region(quadrant):
    model, x, on, off = quadrant
    params = dict(patch_size=8, fraction=0.25)  # 16 patches, the 4 most relevant hidden
    assert score(model, x, on, "region-perturbation", **params) > 0.01
    assert score(model, x, off, "region-perturbation", **params) == 0.0  # the model never sees them


@needs_quantus
def test_faithfulness_correlation_knows_the_region(quadrant):
    model, x, on, off = quadrant
    params = dict(nr_runs=50, subset_size=31)  # 1% of the 3 x 32 x 32 entries per subset
    right = score(model, x, on, "faithfulness-correlation", **params)
    wrong = score(model, x, off, "faithfulness-correlation", **params)  # uncorrelated with the drop
    assert right > 0.3 and right - wrong > 0.3


@needs_quantus
def test_road_knows_the_region(quadrant):
    model, x, on, off = quadrant
    params = dict(percentages=(5, 10, 20))  # at most 20%: the off map never reaches the quadrant
    assert score(model, x, off, "road", threshold=0.999, **params) == 1.0  # still accepted throughout
    assert score(model, x, on, "road", threshold=0.999, **params) < 1.0


@needs_quantus
def test_efficient_mprt_scores_a_model_blind_map_zero(quadrant):
    model, x, on, off = quadrant
    # centre ignores the model: its map is the same on the randomised model, so no rise in entropy
    assert score(model, x, on, "efficient-mprt") == 0.0
    y = images(1, 8)[0]  # another face: at s = 1 (B = A) the similarity has no gradient to explain
    sal = get_explainer("saliency", model)(x[None], model(y[None]).detach())[0]
    m = qb.make_metric("efficient-mprt", (32, 32))
    assert qb.score_pair("efficient-mprt", m, model, x, y, sal, method="saliency") != 0.0


@needs_quantus
def test_quantus_scores_table_skips_pairs_road_cannot_use(quadrant):
    model, x, on, off = quadrant
    xs = torch.stack([x, images(1, 11)[0]])
    maps = {"right": torch.stack([on, on]), "wrong": torch.stack([off, off])}
    params = {"region-perturbation": dict(patch_size=8, fraction=0.25), "road": dict(percentages=(5, 10, 20))}
    rows = qb.quantus_scores(model, xs, xs, maps, metrics=("region-perturbation", "road"), threshold=0.999,
                             accepted=[True, False], params=params)
    table = qb.summarise_scores(rows)
    assert {(r["method"], r["metric"], r["pair"]) for r in rows if r["metric"] == "road"} == {
        ("right", "road", 0), ("wrong", "road", 0)}  # the second pair is not accepted: no ROAD
    assert table["right"]["region-perturbation"]["n"] == 2 and table["right"]["road"]["n"] == 1
    assert table["right"]["region-perturbation"]["mean"] > table["wrong"]["region-perturbation"]["mean"] == 0.0
    assert table["wrong"]["road"]["mean"] == 1.0 > table["right"]["road"]["mean"]
    with pytest.raises(ValueError, match="threshold= and accepted="):
        qb.quantus_scores(model, xs, xs, maps, metrics=("road",))
