"""Model loading: wrapping, ONNX conversion (checked against onnxruntime), errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from onnx import TensorProto, helper, numpy_helper

from falsify.models import conv_layer_names, load_model, wrap_model
from falsify.models.base import FaceEmbedder
from tests.conftest import TinyNet


def _tiny_onnx(path, size=(24, 20), dim=12, seed=0, dynamic=False):
    """A small face-embedder-like CNN written directly as an ONNX graph."""
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
    assert model.input_size == (24, 20)
    assert len(conv_layer_names(model)) == 2  # real nn.Conv2d layers, hookable
    x = torch.rand(5, 3, 24, 20, generator=torch.Generator().manual_seed(1))
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
    model = load_model(path, input_size=(16, 16), device="cpu")
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 12)


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
