"""Model loading: wrapping, ONNX conversion (checked against onnxruntime), errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from onnx import TensorProto, helper, numpy_helper

from falsify.models import NotAFaceEmbedder, check_face_embedder, conv_layer_names, load_model, wrap_model
from falsify.models.base import FaceEmbedder, check_output_shape
from tests.conftest import TinyNet


def _tiny_onnx(path, size=(40, 36), dim=16, seed=0, dynamic=False):
    """A small face-embedder-like CNN written directly as an ONNX graph (within what
    ``check_face_embedder`` admits: sides >= 32, >= 16 numbers out)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 6).astype(np.float32)
    w2 = rng.normal(0, 0.3, (8, 6, 3, 3)).astype(np.float32)
    wf = rng.normal(0, 0.3, (dim, 8)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (wf, "wf"))]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1),
    ]
    h, w = ("H", "W") if dynamic else size
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = _tiny_onnx(tmp_path / "tiny.onnx")
    model = load_model(path, mean=0.5, std=0.5, device="cpu")
    assert model.input_size == (40, 36)
    assert len(conv_layer_names(model)) == 2  # real nn.Conv2d layers, hookable
    x = torch.rand(5, 3, 40, 36, generator=torch.Generator().manual_seed(1))
    ours = model(x)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": ((x.numpy() - 0.5) / 0.5).astype(np.float32)})[0]
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(ours.detach().numpy(), ref, atol=1e-5)
    assert torch.allclose(ours.norm(dim=1), torch.ones(5), atol=1e-6)


def test_onnx_dynamic_size_needs_input_size(tmp_path):
    path = _tiny_onnx(tmp_path / "dyn.onnx", dynamic=True)
    with pytest.raises(ValueError, match="input_size"):
        load_model(path)
    model = load_model(path, input_size=(32, 32), device="cpu")
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 16)


def test_onnx_not_a_model(tmp_path):
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ValueError, match="not a valid ONNX model"):
        load_model(bad)


def test_missing_and_unknown_models(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(ValueError, match="unknown model"):
        load_model("resnet-9000")


# --- is it a face embedder? (issue 19) -------------------------------------------------------------

def _graph_onnx(path, in_dims, out_dims, head="conv", channels=4, extra_output=False):
    """A one-layer ONNX graph: ``conv`` (3x3 Conv, keeps the size: a feature-map output) or
    ``gemm`` (GlobalAveragePool, Flatten, Gemm to ``channels`` numbers), with the input and output
    shapes it declares (names for dynamic dims)."""
    rng = np.random.default_rng(0)
    c_in = in_dims[1] if isinstance(in_dims[1], int) and len(in_dims) == 4 else 3
    w = numpy_helper.from_array(rng.normal(0, 0.3, (channels, c_in, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y" if head == "conv" else "c"], pads=[1, 1, 1, 1])]
    inits = [w]
    if head == "gemm":
        wf = numpy_helper.from_array(rng.normal(0, 0.3, (channels, channels)).astype(np.float32), "wf")
        inits.append(wf)
        nodes += [helper.make_node("GlobalAveragePool", ["c"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
                  helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)]
    if extra_output:
        nodes.append(helper.make_node("Identity", ["y"], ["y2"]))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, out_dims))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_dims)],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("in_dims, out_dims, head, kw, match", [
    # the user's model: an 8 x 8 input and a 4-d output
    (["N", 3, 8, 8], ["N", 4, 8, 8], "conv", {}, "it takes 8x8 images, and falsify needs face crops of 32 to 1024"),
    (["N", 3, 2048, 64], ["N", 4, 2048, 64], "conv", {}, "it takes 2048x64 images"),
    (["N", 3, 64, 64], ["N", 4, 64, 64], "conv", {},
     r"outputs a 4x64x64 feature map per image \(shape \(N, 4, 64, 64\)\)"),
    # the output's shape left dynamic in the graph: found by the forward pass of zero images
    (["N", 3, 64, 64], ["N", "C", "H", "W"], "conv", {},
     r"outputs a 4x64x64 feature map per image \(shape \(2, 4, 64, 64\)\)"),
    (["N", 3, 64, 64], ["N", "D"], "gemm", {"channels": 4}, "it outputs 4 numbers per image .* at least 16"),
    (["N", 1, 64, 64], ["N", 16], "gemm", {"channels": 16}, r"it takes 1-channel images \(N, 1, 64, 64\)"),
    (["N", 64, 64, 3], ["N", 16], "gemm", {"channels": 16},
     "takes channels-last images .* export the model channels-first"),
    (["N", 784], ["N", 16], "gemm", {"channels": 16}, r"its input has shape \(N, 784\), not an image batch"),
    (["N", 3, 64, 64], ["N", 16], "gemm", {"channels": 16, "extra_output": True}, r"it has 2 outputs \(y, y2\)"),
])
def test_onnx_that_is_not_a_face_embedder_is_refused(tmp_path, in_dims, out_dims, head, kw, match):
    path = _graph_onnx(tmp_path / "net.onnx", in_dims, out_dims, head, **kw)
    with pytest.raises(NotAFaceEmbedder, match=match) as exc:
        load_model(path, device="cpu")
    assert str(exc.value).startswith("model net.onnx ") and "\n" not in str(exc.value)


def test_onnx_with_a_face_embedders_shapes_loads(tmp_path):
    """The same one-layer graphs, with an input and output a face embedder has, are accepted."""
    for dims, out in ((["N", 3, 112, 112], ["N", 16]), (["N", 3, 32, 1024], ["N", "D"]), (["N", 3, 64, 64], None)):
        path = _graph_onnx(tmp_path / "ok.onnx", dims, out or ["N", 16], "gemm", channels=16)
        model = load_model(path, device="cpu")
        assert model.embedding_dim == 16 and model.input_size == tuple(dims[2:])
    # a 1x1-convolution head, (N, D, 1, 1), is a vector per image
    assert check_output_shape("head", ("N", 32, 1, 1)) == 32
    head = torch.nn.Sequential(FeatureMapNet(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(8, 24, 1))
    assert load_model(head, input_size=(32, 32), device="cpu").embedding_dim == 24


def test_onnx_input_size_must_match_a_fixed_graph(tmp_path):
    path = _tiny_onnx(tmp_path / "tiny.onnx")
    with pytest.raises(ValueError, match=r"takes 40x36 images \(fixed in the graph\), but the input size given is "
                                         r"112x112"):
        load_model(path, input_size=(112, 112))
    assert load_model(path, input_size=(40, 36), device="cpu").input_size == (40, 36)


class FeatureMapNet(torch.nn.Module):
    """An image model that is not an embedder: it returns its feature map."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class TupleNet(TinyNet):
    """An embedder that also returns its logits, as some training code does."""

    def forward(self, x):
        emb = super().forward(x)
        return emb, emb[:, :2]


@pytest.mark.parametrize("module, size, match", [
    (FeatureMapNet(), (32, 32), r"outputs a 8x32x32 feature map per image \(shape \(2, 8, 32, 32\)\)"),
    (TinyNet(dim=4), (32, 32), "outputs 4 numbers per image"),
    (TinyNet(), (16, 16), "it takes 16x16 images"),
    (TinyNet(), (32, 2000), "it takes 32x2000 images"),
    (FeatureMapNet(in_channels=1), (32, 32), r"fails on two zero images \(2, 3, 32, 32\): RuntimeError: .*channels"),
    (TupleNet(), (32, 32), "it returns a tuple of 2, not one embedding tensor"),
])
def test_module_that_is_not_a_face_embedder_is_refused(tmp_path, module, size, match):
    with pytest.raises(NotAFaceEmbedder, match=match) as exc:
        load_model(module, input_size=size, device="cpu")
    assert "\n" not in str(exc.value)
    path = tmp_path / "net.pt"  # the same through a pickled file (--trust-pickle)
    torch.save(module, path)
    with pytest.raises(NotAFaceEmbedder, match="model net.pt is not a face embedder"):
        load_model(path, input_size=size, device="cpu", trust_pickle=True)


def test_a_non_finite_output_is_refused():
    class NaNNet(TinyNet):
        def forward(self, x):
            return super().forward(x) * float("nan")

    with pytest.raises(NotAFaceEmbedder, match=r"not finite \(NaN or inf\)"):
        load_model(NaNNet(), input_size=(32, 32), device="cpu")


def test_tiny_models_and_the_built_in_models_pass_the_check(tiny_model, dlib_model):
    assert check_face_embedder(tiny_model) == 16  # tests' 32x32 -> 16-d model: the smallest admitted
    assert check_face_embedder(dlib_model) == 128 and dlib_model.input_size == (150, 150)
    assert load_model(TinyNet(), input_size=(32, 32), device="cpu").embedding_dim == 16


def test_the_check_changes_nothing_in_the_model():
    net = torch.nn.Sequential(TinyNet(), torch.nn.BatchNorm1d(16))
    model = FaceEmbedder(net, input_size=(32, 32)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert check_face_embedder(model) == 16
    assert model.training and net[1].training  # modes restored, BatchNorm statistics untouched
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_sface_passes_the_check():
    model = load_model("sface", device="cpu")
    assert check_face_embedder(model) == 128 and model.input_size == (112, 112)


def test_model_that_is_a_directory(tmp_path):
    for name in ("dir.onnx", "weights"):
        (tmp_path / name).mkdir()
        with pytest.raises(ValueError, match=r"is a directory; expected a model file \(an \.onnx, a dlib \.dat, "
                                             r"or a \.pt/\.pth .*--trust-pickle\) or a built-in name \(dlib-resnet"):
            load_model(tmp_path / name)


def test_wrap_module_and_input_checks():
    net = TinyNet()
    model = wrap_model(net, input_size=(32, 32), mean=(0.4, 0.5, 0.6), std=0.2)
    assert isinstance(model, FaceEmbedder)
    x = torch.rand(3, 3, 32, 32)
    expected = torch.nn.functional.normalize(
        net((x - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / 0.2), dim=1
    )
    torch.testing.assert_close(model(x), expected)
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        model(torch.rand(3, 3, 40, 40))
    with pytest.raises(TypeError, match="float"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="input_size"):
        load_model(net)
    bgr = wrap_model(net, input_size=(32, 32), channel_order="BGR")
    torch.testing.assert_close(bgr(x), torch.nn.functional.normalize(net(x.flip(1)), dim=1))


def test_pt_file(tmp_path):
    net = TinyNet()
    torch.save(net, tmp_path / "net.pt")
    with pytest.raises(ValueError, match="--trust-pickle"):
        load_model(tmp_path / "net.pt", input_size=(32, 32), device="cpu")
    model = load_model(tmp_path / "net.pt", input_size=(32, 32), device="cpu", trust_pickle=True)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x), torch.nn.functional.normalize(net(x), dim=1))
    torch.save({"w": torch.zeros(1)}, tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="state dict"):
        load_model(tmp_path / "sd.pt", input_size=(32, 32))
    torch.save(42, tmp_path / "int.pt")
    with pytest.raises(ValueError, match="not an nn.Module"):
        load_model(tmp_path / "int.pt", input_size=(32, 32), trust_pickle=True)


class _Payload:
    """Unpickling this writes a file: what a malicious .pt does (here harmlessly)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


def test_malicious_pt_runs_no_code(tmp_path, capsys):
    """A pickled payload must not run unless the user opts in with --trust-pickle."""
    from falsify.cli import main

    target = tmp_path / "pwned.txt"
    evil = str(tmp_path / "evil.pt")
    torch.save(_Payload(target), evil)
    with pytest.raises(ValueError, match="pickled Python objects"):
        load_model(evil, input_size=(32, 32))
    img = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(img)
    (tmp_path / "pairs.csv").write_text("a,b,same\nx.png,x.png,1\nx.png,x.png,0\n")
    size = ["--input-size", "32", "32"]
    for argv in (["explain", str(img), str(img), "--model", evil, *size],
                 ["verify", "--data", str(tmp_path / "pairs.csv"), "--model", evil, *size],
                 ["test", str(img), str(img), "--method", "saliency", "--model", evil, *size,
                  "--tau-high", "0.2", "--tau-low", "0.1", "--epsilon", "0.05"],
                 ["run", "--data", str(tmp_path / "pairs.csv"), "--model", evil, "--out", str(tmp_path / "run")]):
        assert main(argv) == 2, argv
        assert "--trust-pickle" in capsys.readouterr().err
    assert not target.exists()
    assert not (tmp_path / "run").exists()
    # the opt-in really unpickles (the payload is not an nn.Module, so loading then fails)
    with pytest.raises(ValueError, match="not an nn.Module"):
        load_model(evil, input_size=(32, 32), trust_pickle=True)
    assert target.read_text() == "pwned"


def test_device_validation():
    from falsify.models import resolve_device

    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="unknown device 'foo'"):
        resolve_device("foo")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_dlib_refuses_preprocessing_options():
    for kw in ({"mean": 0.5}, {"std": 0.5}, {"input_size": (112, 112)}):
        with pytest.raises(ValueError, match="fixed preprocessing"):
            load_model("dlib-resnet", **kw)
    with pytest.raises(ValueError, match="std must be > 0"):
        load_model("dlib-resnet", std=0.0)
    with pytest.raises(ValueError, match="input size"):
        load_model(TinyNet(), input_size=(0, 0))
