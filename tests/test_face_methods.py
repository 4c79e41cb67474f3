"""The face-verification methods: similarity maps (Stylianou et al.), xSSAB (Huber et al.), RISE
and its dissimilarity map, each against an answer known in advance."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from falsify.attribution import AttributionError, get_explainer
from falsify.attribution.similarity_map import spread_cells
from falsify.models.base import FaceEmbedder
from tests.conftest import TinyNet


def _pairs(lfw_sample, model, n=8):
    """n real pairs of the shared sample (genuine and impostor), aligned as the model wants."""
    from falsify.data import load_images, load_pairs

    pairs = load_pairs(lfw_sample).sample(n, seed=1)
    xa, _ = load_images([p.a for p in pairs], model.input_size, align=model.aligner)
    xb, _ = load_images([p.b for p in pairs], model.input_size, align=model.aligner)
    with torch.no_grad():
        ea, eb = model(xa), model(xb)
    return pairs, xa, eb, (ea * eb).sum(1)


# -- similarity-map ----------------------------------------------------------------------------
def test_similarity_map_sums_to_the_cosine_on_dlib(dlib_model, lfw_sample):
    """dlib's head is average pooling + Linear(bias=False): the map sums to cos(f(a), f(b))."""
    pairs, xa, eb, cos = _pairs(lfw_sample, dlib_model)
    assert {p.same for p in pairs} == {True, False}, "the sample must hold genuine and impostor pairs"
    e = get_explainer("similarity-map", dlib_model)
    assert e.head_names == ["backbone.avgpool", "backbone.fc"]
    raw = e.attribute(xa, eb)
    assert raw.shape == (len(pairs), 150, 150)
    # float32: 128-term dot products over 4 cells and a 22,500-pixel sum of values ~1e-5: ~1e-6
    torch.testing.assert_close(raw.flatten(1).sum(1), cos, atol=1e-4, rtol=0)
    contrib, constant, target = e.decompose(xa, eb)
    assert contrib.shape == (len(pairs), 2, 2)  # dlib's last feature map is 2 x 2
    assert torch.all(constant == 0)
    torch.testing.assert_close(contrib.flatten(1).sum(1), cos, atol=1e-4, rtol=0)
    torch.testing.assert_close(target, cos, atol=1e-5, rtol=0)


def test_similarity_map_affine_head_reports_the_constant_apart_on_sface(lfw_sample):
    """SFace's head is bn1, flatten, Linear (bias), BatchNorm1d: contributions + constant = cosine.

    The cosine is the model's own (its fast path, BatchNorm folded); the decomposition runs the
    module path: the two embeddings differ by <= ~5e-6 (tests/test_sface.py), and each of the 49
    contributions is a 50,176-term float32 dot product (relative error ~1e-6): 1e-4 holds with room.
    """
    from falsify.models import load_model

    sface = load_model("sface", device="cpu")
    _, xa, eb, cos = _pairs(lfw_sample, sface, n=4)
    e = get_explainer("similarity-map", sface)
    assert e.head_names == ["backbone.bn1", "backbone.flatten", "backbone.pre_fc1", "backbone.fc1"]
    contrib, constant, _ = e.decompose(xa, eb)
    assert contrib.shape == (4, 7, 7)
    assert float(constant.abs().max()) > 1e-3  # a real bias/BatchNorm-shift term, reported apart
    torch.testing.assert_close(contrib.flatten(1).sum(1) + constant, cos, atol=1e-4, rtol=0)
    torch.testing.assert_close(e.attribute(xa, eb).flatten(1).sum(1), contrib.flatten(1).sum(1), atol=1e-5, rtol=0)


def test_similarity_map_iresnet_head():
    """iresnet's head (bn2, flatten, fc, features) at PyTorch's initialisation: the same identity."""
    from falsify.models.iresnet import IRESNET_INPUT_SIZE, iresnet

    torch.manual_seed(0)
    net = iresnet("iresnet18").eval()
    with torch.no_grad():  # BatchNorm statistics away from (0, 1), so the constant is not trivial
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model = FaceEmbedder(net, IRESNET_INPUT_SIZE, mean=0.5, std=0.5, name="iresnet18-init")
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 112, 112, generator=g), torch.rand(2, 3, 112, 112, generator=g)
    with torch.no_grad():
        refs = model(y)
        cos = (model(x) * refs).sum(1)
    e = get_explainer("similarity-map", model)
    assert e.head_names == ["backbone.bn2", "backbone.fc", "backbone.features"]
    contrib, constant, _ = e.decompose(x, refs)
    assert contrib.shape == (2, 7, 7) and float(constant.abs().max()) > 1e-4
    torch.testing.assert_close(contrib.flatten(1).sum(1) + constant, cos, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["facenet", "adaface-ir18"])
def test_similarity_map_decomposes_the_other_checkpoint_architectures(arch):
    """facenet (avgpool, dropout, Linear, BatchNorm1d) and adaface (BatchNorm2d, dropout, flatten,
    Linear, BatchNorm1d) at PyTorch's initialisation: contributions + constant = cosine."""
    from falsify.models.checkpoints import ARCHITECTURES

    a = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = FaceEmbedder(a.build().eval(), a.input_size, mean=a.mean, std=a.std, name=f"{arch}-init")
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, *a.input_size, generator=g), torch.rand(2, 3, *a.input_size, generator=g)
    with torch.no_grad():
        refs = model(y)
        cos = (model(x) * refs).sum(1)
    contrib, constant, _ = get_explainer("similarity-map", model).decompose(x, refs)
    torch.testing.assert_close(contrib.flatten(1).sum(1) + constant, cos, atol=1e-4, rtol=0)


def test_similarity_map_constant_is_the_bias_term(tiny_model):
    """Pooling + Linear with a bias b: the constant is <b, r^> / |g|, the rest sums to cos - constant."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g)
    with torch.no_grad():
        refs = tiny_model(torch.rand(3, 3, 32, 32, generator=g))
        raw = tiny_model.embed_raw(x)
        cos = (tiny_model(x) * refs).sum(1)
    e = get_explainer("similarity-map", tiny_model)
    contrib, constant, _ = e.decompose(x, refs)
    expected = (tiny_model.backbone.fc.bias[None] * refs).sum(1) / raw.norm(dim=1)
    torch.testing.assert_close(constant, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(contrib.flatten(1).sum(1) + constant, cos, atol=1e-5, rtol=0)
    # without a reference the target is |g(x)|: the same identity along g's own direction
    contrib, constant, target = e.decompose(x)
    torch.testing.assert_close(target, raw.norm(dim=1), atol=1e-5, rtol=0)
    torch.testing.assert_close(contrib.flatten(1).sum(1) + constant, target, atol=1e-4, rtol=0)


class _PReLUHead(TinyNet):
    def __init__(self):
        super().__init__()
        self.act = nn.PReLU()

    def forward(self, x):
        return self.act(super().forward(x))


def test_similarity_map_refuses_a_head_that_is_not_affine():
    model = FaceEmbedder(_PReLUHead(), input_size=(32, 32), name="prelu-head")
    with pytest.raises(AttributionError) as err:
        get_explainer("similarity-map", model)
    msg = str(err.value)
    assert "\n" not in msg and "PReLU" in msg and "act" in msg and "use another method" in msg


def test_spread_cells_keeps_each_cells_sum():
    cells = torch.tensor([[[1.0, -2.0, 3.0], [0.5, 0.0, 4.0]]])
    out = spread_cells(cells, (7, 10))
    assert out.shape == (1, 7, 10)
    assert float(out.sum()) == pytest.approx(float(cells.sum()), abs=1e-6)
    rows = torch.arange(7) * 2 // 7
    cols = torch.arange(10) * 3 // 10
    for i in range(2):
        for j in range(3):
            block = out[0][rows == i][:, cols == j]
            assert float(block.sum()) == pytest.approx(float(cells[0, i, j]), abs=1e-6)
            assert torch.all(block == block[0, 0])  # spread evenly


# -- xssab -------------------------------------------------------------------------------------
class _TwoHalves(nn.Module):
    """g(x) = (mean of the left half, mean of the right half, 100): the huge third component makes
    f(x) ~ (left / 100, right / 100, 1), so f_1 depends on the left half only and f_2 on the right,
    up to the normalisation's cross-term f_1 f_2 ~ 3e-5."""

    def forward(self, x):
        left, right = x[..., :16].mean((1, 2, 3)), x[..., 16:].mean((1, 2, 3))
        return torch.stack([left, right, torch.full_like(left, 100.0)], 1)


def test_xssab_known_answer_on_a_toy_model():
    """Reference (1, -1, 0): dimension 1 argues for the match (its product is > 0 = t / D), dimension
    2 against it. The positive map lies on the left half, the negative map on the right half."""
    model = FaceEmbedder(_TwoHalves(), input_size=(32, 32), name="two-halves")
    g = torch.Generator().manual_seed(0)
    x = 0.2 + 0.8 * torch.rand(2, 3, 32, 32, generator=g)
    ref = torch.tensor([[1.0, -1.0, 0.0]] * 2)
    pos = get_explainer("xssab", model, threshold=0.0).attribute(x, ref)
    neg = get_explainer("xssab", model, threshold=0.0, part="negative").attribute(x, ref)
    both = get_explainer("xssab", model, threshold=0.0, part="combined").attribute(x, ref)
    assert float(pos[..., 16:].max()) < 1e-3 * float(pos[..., :16].min())
    assert float(neg[..., :16].max()) < 1e-3 * float(neg[..., 16:].min())
    torch.testing.assert_close(both, pos - neg)
    assert bool((both[..., :16] > 0).all()) and bool((both[..., 16:] < 0).all())
    # the arguments add up to the cosine
    e = get_explainer("xssab", model, threshold=0.0)
    s_pos, s_neg = e.arguments(x, ref)
    with torch.no_grad():
        cos = (model(x) * torch.nn.functional.normalize(ref, dim=1)).sum(1)
    torch.testing.assert_close(s_pos + s_neg, cos)
    assert bool((s_pos > 0).all()) and bool((s_neg < 0).all())


def test_xssab_on_dlib_splits_at_the_threshold(dlib_model, lfw_sample):
    _, xa, eb, cos = _pairs(lfw_sample, dlib_model, n=4)
    e = get_explainer("xssab", dlib_model)
    assert e.threshold == dlib_model.threshold
    s_pos, s_neg = e.arguments(xa, eb)
    torch.testing.assert_close(s_pos + s_neg, cos, atol=1e-5, rtol=0)
    maps = e(xa, eb)
    assert maps.shape == (4, 150, 150) and float(maps.min()) >= 0 and float(maps.max()) == 1.0


def test_xssab_needs_a_threshold(tiny_model):
    assert tiny_model.threshold is None
    with pytest.raises(AttributionError, match="xssab.threshold="):
        get_explainer("xssab", tiny_model)
    with pytest.raises(AttributionError, match="part"):
        get_explainer("xssab", tiny_model, threshold=0.5, part="both")


# -- rise --------------------------------------------------------------------------------------
class _Region(nn.Module):
    """g(x) = (mean of rows 4..15, columns 18..29; 1): only that region moves f(x), and with the
    reference (1, 1) the similarity grows with the region's brightness (monotone for means < 1)."""

    def forward(self, x):
        a = x[:, :, 4:16, 18:30].mean((1, 2, 3))
        return torch.stack([a, torch.ones_like(a)], 1)


def _region_mask():
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[4:16, 18:30] = True
    return inside


def _top_share(maps, inside):
    """The share of the map's top |region| pixels that lie in the region, per map."""
    k = int(inside.sum())
    top = maps.flatten(1).topk(k, dim=1).indices
    return inside.flatten()[top].float().mean(1)


def test_rise_puts_its_top_mass_on_the_only_region_that_matters():
    """Keeping the region keeps the similarity: rise's top pixels are the region's (>= 0.8 of them;
    the rest sit within a mask cell of its border, where the smooth masks correlate). Petsiuk's
    plain sum (centred=False) at the same 256 masks is swamped by its coverage noise (s_bar ~ 0.9)."""
    model = FaceEmbedder(_Region(), input_size=(32, 32), name="region")
    g = torch.Generator().manual_seed(0)
    x = 0.3 + 0.7 * torch.rand(2, 3, 32, 32, generator=g)
    refs = torch.tensor([[1.0, 1.0]] * 2)
    share = _top_share(get_explainer("rise", model, n_masks=256)(x, refs), _region_mask())
    plain = _top_share(get_explainer("rise", model, n_masks=256, centred=False)(x, refs), _region_mask())
    assert torch.all(share >= 0.8), share
    assert torch.all(plain < share - 0.2), (plain, share)


def test_rise_dissimilarity_marks_the_region_that_lowers_the_similarity():
    """Reference (0, 1), the image with the region blacked out: showing the region lowers the similarity."""
    model = FaceEmbedder(_Region(), input_size=(32, 32), name="region")
    g = torch.Generator().manual_seed(1)
    x = 0.3 + 0.7 * torch.rand(2, 3, 32, 32, generator=g)
    refs = torch.tensor([[0.0, 1.0]] * 2)
    dis = get_explainer("rise-dissimilarity", model, n_masks=256)(x, refs)
    assert torch.all(_top_share(dis, _region_mask()) >= 0.8), _top_share(dis, _region_mask())
    sim = get_explainer("rise", model, n_masks=256)(x, refs)
    assert torch.all(_top_share(sim, _region_mask()) <= 0.05)  # the similarity map ranks it last


def _fresh(model):
    """Forget the model's cached RISE sums, so the next map is computed afresh."""
    model.__dict__.pop("_falsify_rise_sums", None)
    return model


def test_rise_is_seeded_by_the_image_and_the_dissimilarity_is_its_centred_mirror(tiny_model):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 32, 32, generator=g)
    with torch.no_grad():
        refs = tiny_model(torch.rand(3, 3, 32, 32, generator=g))
    e = get_explainer("rise", tiny_model, n_masks=40, batch_size=16)
    both = e.attribute(x, refs)
    alone = e.attribute(x[1:2], _fresh(tiny_model) and refs[1:2])
    torch.testing.assert_close(both[1:2], alone, atol=1e-6, rtol=0)  # same masks alone or in a batch
    _fresh(tiny_model)
    chunks = get_explainer("rise", tiny_model, n_masks=40, batch_size=7).attribute(x, refs)
    torch.testing.assert_close(chunks, both, atol=1e-5, rtol=0)  # and whatever the batch size
    _fresh(tiny_model)
    torch.testing.assert_close(e.attribute(x, refs), both, atol=0, rtol=0)  # and on every call
    other = get_explainer("rise", tiny_model, n_masks=40, batch_size=16, seed=1).attribute(x, refs)
    assert not torch.allclose(other, both)
    # the formulas of the module, from the same seeded masks: plain S, centred S, and S + D = s_bar
    plain = get_explainer("rise", tiny_model, n_masks=40, centred=False).attribute(x, refs)
    dis = get_explainer("rise-dissimilarity", tiny_model, n_masks=40, batch_size=7).attribute(x, refs)
    for i in range(3):
        masks = e.masks(40, 32, 32, e.generator(x[i]))
        xm = masks[:, None] * x[i]
        with torch.no_grad():
            s = (tiny_model(xm) * torch.nn.functional.normalize(refs[i : i + 1], dim=1)).sum(1)
        scale = 40 * 0.5
        torch.testing.assert_close(plain[i], torch.einsum("n,nhw->hw", s, masks) / scale, atol=1e-5, rtol=0)
        centred = s.mean() + torch.einsum("n,nhw->hw", s - s.mean(), masks) / scale
        torch.testing.assert_close(both[i], centred, atol=1e-5, rtol=0)
        torch.testing.assert_close(both[i] + dis[i], s.mean().expand(32, 32), atol=1e-5, rtol=0)


def test_rise_masks_follow_petsiuk():
    model = FaceEmbedder(_Region(), input_size=(32, 32), name="region")
    e = get_explainer("rise", model, cells=4, p=0.25)
    m = e.masks(2000, 32, 32, torch.Generator().manual_seed(0))
    assert m.shape == (2000, 32, 32) and float(m.min()) >= 0 and float(m.max()) <= 1
    assert float(m.mean()) == pytest.approx(0.25, abs=0.02)  # E[M(u)] = p
    with pytest.raises(AttributionError, match="rise.p"):
        get_explainer("rise", model, p=1.0)
    with pytest.raises(AttributionError, match="rise-dissimilarity.n_masks"):
        get_explainer("rise-dissimilarity", model, n_masks=0)


def test_rise_and_its_dissimilarity_share_their_forward_passes(tiny_model):
    """The second of the two maps reads the first one's sums: no forward pass of its own; another
    reference, seed or model (a randomised copy) computes afresh."""
    import copy

    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        refs = tiny_model(y)
    assert tiny_model.embedding_dim == 16  # its probe pass (cached) made before counting
    calls = []
    inner = tiny_model.backbone.forward
    tiny_model.backbone.forward = lambda t: calls.append(t.shape[0]) or inner(t)
    get_explainer("rise", _fresh(tiny_model), n_masks=20).attribute(x, refs)
    assert sum(calls) == 2 * 20
    get_explainer("rise-dissimilarity", tiny_model, n_masks=20).attribute(x, refs)
    assert sum(calls) == 2 * 20
    get_explainer("rise-dissimilarity", tiny_model, n_masks=20).attribute(x, refs.flip(0))
    get_explainer("rise", tiny_model, n_masks=20, seed=5).attribute(x, refs)
    assert sum(calls) == 6 * 20
    twin = copy.deepcopy(tiny_model)
    assert "_falsify_rise_sums" not in twin.__dict__ or twin.__dict__["_falsify_rise_sums"][0] != id(twin)
