"""SFace: the PyTorch port against onnxruntime on the shipped graph, the model registry,
randomised control models and `falsify models`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from falsify.cli import main
from falsify.models import MODELS, load_model, resolve_align
from falsify.models.sface import SFACE_SHA256, default_onnx_path, dequantize_blockwise, read_sface_onnx
from falsify.models.weights import file_sha256

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def sface():
    return load_model("sface", device="cpu")


def _ort_session():
    """onnxruntime on the file as shipped, its DequantizeLinear nodes included. The graph lists
    its weights (and some unused ones) as graph inputs; onnxruntime refuses unfed inputs, so the
    inputs are cut to the image ("data"): nothing else of the graph is changed."""
    ort = pytest.importorskip("onnxruntime")
    import onnx

    model = onnx.load(str(default_onnx_path()))
    keep = [i for i in model.graph.input if i.name == "data"]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_shipped_file_is_the_documented_one():
    assert file_sha256(default_onnx_path()) == SFACE_SHA256


@pytest.mark.slow
def test_port_equals_onnxruntime_on_real_aligned_faces(sface, lfw_sample):
    from falsify.data import load_images

    paths = sorted(lfw_sample.glob("*/*.jpg"))[:12]
    x, bad = load_images(paths, sface.input_size, align=sface.aligner)
    assert not bad and x.shape == (12, 3, 112, 112)
    assert sface.aligner.stats.aligned, "no face was aligned"
    session = _ort_session()
    ref = np.concatenate([session.run(None, {"data": (xi[None].numpy() * 255.0).astype(np.float32)})[0] for xi in x])
    with torch.no_grad():
        ours = sface.embed_raw(x).numpy()
    assert np.abs(ours - ref).max() <= 1e-4
    # and the embeddings leave unit-length, as every falsify model's
    with torch.no_grad():
        assert torch.allclose(sface(x).norm(dim=1), torch.ones(12), atol=1e-5)


def test_blockwise_dequantisation_known_values():
    q = np.array([[1, 2, 3, 4, 5]], dtype=np.int8)
    scale = np.array([[0.5, 2.0, 10.0]], dtype=np.float32)  # blocks of 2 along axis 1: the last block is short
    zp = np.array([[1, 0, 5]], dtype=np.int8)
    out = dequantize_blockwise(q, scale, zp, axis=1, block_size=2)
    np.testing.assert_allclose(out, [[0.0, 0.5, 6.0, 8.0, 0.0]])


def test_reader_refuses_another_graph(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["data"], ["out"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 112, 112])])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="not OpenCV Zoo's SFace graph"):
        read_sface_onnx(path)


def test_sface_contract(sface):
    assert sface.input_size == (112, 112) and sface.align == "arcface-112" and sface.aligner is not None
    assert sface.embedding_dim == 128
    assert sface.threshold == MODELS["sface"].thresholds["arcface-112"]
    names = dict(sface.named_modules())
    assert "backbone.conv_14.conv" in names and "backbone.pre_fc1" in names  # hookable, graph names


def test_sface_refuses_preprocessing_flags():
    with pytest.raises(ValueError, match="sface has fixed preprocessing .112x112"):
        load_model("sface", mean=0.5)


def test_alignment_choice_per_model():
    assert resolve_align("sface") == "arcface-112"
    assert resolve_align("dlib-resnet") == MODELS["dlib-resnet"].align
    assert resolve_align("sface:random") == "arcface-112"
    assert resolve_align("model.onnx") is None  # a model file: no alignment unless asked
    assert resolve_align("model.onnx", "arcface-112") == "arcface-112"
    assert resolve_align("sface", "none") is None
    with pytest.raises(ValueError, match="unknown alignment"):
        resolve_align("sface", "mtcnn")
    m = load_model("sface", align="none", device="cpu")
    assert m.aligner is None and m.threshold == MODELS["sface"].thresholds["none"]


def test_random_model_is_seeded_and_knows_no_faces(sface):
    a = load_model("sface:random", device="cpu")
    b = load_model("sface:random", device="cpu")
    assert a.name == "sface:random" and a.threshold is None and a.align == "arcface-112"
    for (n, p), (_, q), (_, r) in zip(a.named_parameters(), b.named_parameters(), sface.named_parameters()):
        assert torch.equal(p, q), n  # seeded: the same control every time
        if p.numel() > 1:
            assert not torch.equal(p, r), n  # every tensor redrawn
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(a(x).norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="unknown model 'resnet' in 'resnet:random'"):
        load_model("resnet:random")


def test_models_command(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, info in MODELS.items():
        assert name in out and info.licence in out and f"{info.accuracy[info.align]:.2%}" in out
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {m["name"] for m in listed if m["kind"] == "model"} == set(MODELS)


@pytest.mark.slow
def test_run_6_1_with_sface_end_to_end_and_resume(lfw_sample, tmp_path, capsys):
    """6.1 on SFace: thresholds calibrated for it, aligned inputs, report written, and a second
    invocation resumes (nothing to compute)."""
    out = tmp_path / "run"
    config = tmp_path / "run.toml"
    config.write_text("calibration_pairs = 60\n")  # SFace embeds ~10x slower than dlib on a CPU: keep it short
    argv = ["run", "6.1", "--model", "sface", "--data", str(lfw_sample), "--n-pairs", "4", "--methods",
            "gradcam,saliency", "--preset", "plain", "--out", str(out), "--batch-pairs", "2", "-q",
            "--config", str(config)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "sface" and summary["n_rows"] == 8 and summary["n_errors"] == 0
    assert summary["alignment"]["template"] == "arcface-112" and summary["alignment"]["images"] >= 4
    cal = summary["calibration"]
    assert cal and cal["threshold_cos"] < 0.6  # SFace's own scale (dlib's sits near 0.9)
    settings = summary["config"]
    assert settings["model"] == "sface"
    assert (out / "tables" / "table_6_1.tex").is_file()
    assert "arcface-112: " in (out / "report.html").read_text()  # the report says how the photos were aligned
    capsys.readouterr()
    assert main(argv) == 0
    assert "all rows are already in the store" in capsys.readouterr().out
    # another alignment is another run: refused, nothing changed
    assert main([*argv, "--align", "none"]) == 2
    assert "align" in capsys.readouterr().err


def test_stores_made_before_alignment_resume_unaligned(lfw_sample, tmp_path):
    """A store without an ``align`` setting was made with a plain resize: resuming it takes that,
    and asking for alignment is refused."""
    from falsify.experiments import ResultsStore, RunConfig, runner_for

    out = tmp_path / "old"
    base = dict(data=str(lfw_sample), methods=["random"], n_pairs=2, out=str(out), tau_high=0.2, tau_low=0.1,
                epsilon=0.05, grid_pairs=0, preset="plain")
    runner_for(RunConfig(**base, align="none"), progress=False, log=lambda *a: None).run()
    store = ResultsStore(out / "results.sqlite")
    settings = store.get_meta("settings")
    assert settings["align"] == "none"
    del settings["align"]  # as an older falsify wrote it
    store.set_meta("settings", settings)
    store.close()
    resumed = RunConfig.resolve(out=str(out))
    assert resumed.align == "none"
    runner_for(resumed, progress=False, log=lambda *a: None).run()
    with pytest.raises(ValueError, match="align"):
        runner_for(RunConfig(**base, align="dlib-150"), progress=False, log=lambda *a: None).run()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sface", "dlib-resnet"])
def test_listed_accuracy_and_threshold_are_what_verify_measures(name, lfw_sample):
    """The numbers `falsify models` lists for the default alignment are printed by `falsify verify`
    on the shared sample (3-fold protocol); SFace aligned reaches at least 98%."""
    from falsify.data import load_pairs
    from falsify.verification import verify

    model = load_model(name, device="cpu")
    result = verify(model, load_pairs(lfw_sample), progress=False)
    info = MODELS[name]
    assert result.n_pairs == 1682 and result.n_folds == 3
    assert result.accuracy_mean == pytest.approx(info.accuracy[info.align], abs=5e-5)
    assert result.threshold == pytest.approx(info.thresholds[info.align], abs=5e-5)
    assert result.alignment["no_face_found"] == 2
    if name == "sface":
        assert result.accuracy_mean >= 0.98


# -- the fast path (issue 22): folded BatchNorm, channels_last, slices, conv+PReLU node ----------


def _module_path(net, x):
    """Every module as itself (no folding, no fused node): the reference for the fast path."""
    return torch.nn.Sequential.forward(net, x)


def _input_grad(fn, x, v):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((fn(x) * v.to(x.dtype)).sum(), x)
    return g


@pytest.fixture(scope="module")
def aligned_faces(sface, lfw_sample):
    from falsify.data import load_images

    x, bad = load_images(sorted(lfw_sample.glob("*/*.jpg"))[:12], sface.input_size, align=sface.aligner)
    assert not bad
    return sface.normalise_input(x)


@pytest.mark.slow
def test_fast_path_is_the_module_path_exactly_in_float64(sface, aligned_faces):
    """In float64 the fast path's forward and input gradient equal the module path's to rounding:
    folding, the slices and the hand-written backward change no value.
    12 images: one slice of 8 and one of 4."""
    import copy

    net = copy.deepcopy(sface.backbone).double()
    x = aligned_faces.double()
    v = torch.randn(12, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, fast = _module_path(net, x), net(x)
    assert torch.allclose(fast, ref, rtol=0, atol=1e-10 * float(ref.abs().max()))
    g_ref, g_fast = _input_grad(lambda t: _module_path(net, t), x, v), _input_grad(net, x, v)
    assert float((g_fast - g_ref).norm() / g_ref.norm()) < 1e-12
    # with parameters requiring gradients, the fast path folds under autograd: weight gradients too
    net.requires_grad_(True)
    grads = []
    for fn in (lambda t: _module_path(net, t), net):
        net.zero_grad()
        (fn(x) * v.double()).sum().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, rtol=1e-9, atol=1e-12 * float(g.abs().max())), name


@pytest.mark.slow
def test_fast_path_float32_gradient_is_within_float32_error(sface, aligned_faces):
    """On real aligned faces, the fast path's float32 input gradient is as close to the float64
    gradient as the module path's own float32 gradient is. The network is ill-conditioned for
    this: the module path in float32 is ~1e-3 off float64 in relative L2 norm
    (`benchmarks/sface_speed.py --variants` prints both), so the bound is relative to that, not a
    fixed 1e-6: at most 3x the module path's error. The forward is equal within 1e-5 (as against onnxruntime, 1e-4)."""
    import copy

    net = sface.backbone
    x = aligned_faces
    v = torch.randn(12, 128, generator=torch.Generator().manual_seed(0))
    n64 = copy.deepcopy(net).double()
    g64 = _input_grad(lambda t: _module_path(n64, t), x.double(), v)
    err = {}
    for name, fn in (("module", lambda t: _module_path(net, t)), ("fast", net)):
        err[name] = float((_input_grad(fn, x, v).double() - g64).norm() / g64.norm())
    assert err["fast"] <= 3 * err["module"] and err["fast"] < 1e-2, err
    with torch.no_grad():
        assert (net(x) - _module_path(net, x)).abs().max() <= 1e-5


def test_fast_path_never_serves_stale_folded_weights(sface):
    """The folded weights are cached by the weights' versions: a weight changed in place, a
    loaded state dict and a randomised copy each get their own folding."""
    import copy

    from falsify.models.base import randomised_copy

    model = copy.deepcopy(sface)
    net = model.backbone
    x = torch.rand(3, 3, 112, 112)

    def agree(m) -> torch.Tensor:
        with torch.no_grad():
            fast, ref = m(x), torch.nn.functional.normalize(_module_path(m.backbone, m.normalise_input(x)), dim=1)
        assert (fast - ref).abs().max() < 1e-5
        return fast

    before = agree(model)
    with torch.no_grad():
        net.conv_2.bn.running_var.mul_(4.0)  # a buffer changed in place
    changed = agree(model)
    assert (changed - before).abs().max() > 1e-3
    with torch.no_grad():
        net.conv_5_dw.conv.weight.add_(0.05)  # a convolution weight changed in place
    agree(model)
    net.load_state_dict(sface.backbone.state_dict())  # back to the original weights
    assert torch.allclose(agree(model), before, atol=1e-6)
    random = randomised_copy(model, seed=0)
    assert "_fold_cache" not in vars(random.backbone)  # a copy folds its own weights
    assert (agree(random) - before).abs().max() > 1e-2
    assert torch.allclose(agree(model), before, atol=1e-6)  # the original's cache untouched


def test_hooks_and_training_mode_run_every_module(sface):
    """A hook anywhere (Grad-CAM's, a user's) or training mode: every module runs as itself."""
    import copy

    net = copy.deepcopy(sface.backbone)
    seen = []
    handle = net.conv_14.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        hooked = net(x)
    handle.remove()
    assert seen == [torch.Size([2, 1024, 7, 7])]
    with torch.no_grad():
        assert torch.allclose(net(x), hooked, atol=1e-5)
    net.train()
    called = []
    net.fast_forward = lambda t: called.append(1)  # must not be taken
    net(torch.rand(2, 3, 112, 112))
    assert not called


def test_fast_path_gradient_after_an_inference_mode_forward(sface):
    """The folded weights cached by an inference_mode forward are ordinary tensors: a gradient
    taken after it works (a run embeds under inference_mode, then the gradient methods run)."""
    import copy

    model = copy.deepcopy(sface)
    x = torch.rand(2, 3, 112, 112)
    with torch.inference_mode():
        model(x)
    g = _input_grad(model, x, torch.ones(2, 128))
    assert g.shape == x.shape and bool(torch.isfinite(g).all())
