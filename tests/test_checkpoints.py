"""Researchers' own checkpoints (``--model ARCH:PATH``): key names as the references write them,
facenet against facenet-pytorch, the layouts read, the refusals (one line, nothing written), and
every command on a checkpoint saved in the reference layout (random weights)."""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from falsify.cli import main
from falsify.models import ARCHITECTURES, builtin_name, load_model, resolve_align
from falsify.models.adaface import adaface_ir
from falsify.models.checkpoints import expected_shapes, load_checkpoint
from falsify.models.facenet import InceptionResnetV1
from falsify.models.iresnet import IResNet, iresnet


def _estimate_bn_statistics(net: torch.nn.Module, size: int, seed: int = 0) -> torch.nn.Module:
    """BatchNorm running statistics averaged over random input (a deep network at its default init
    otherwise maps every input to nearly the same embedding), then eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.rand(6, 3, size, size, generator=g) * 2 - 1)
    return net.eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints in the reference layouts: ``torch.save(net.state_dict(), path)``."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    out = {}
    for name in ("iresnet18", "iresnet50"):
        out[name] = d / f"{name}" / "backbone.pth"  # arcface_torch names every checkpoint so
        out[name].parent.mkdir()
        torch.save(iresnet(name).state_dict(), out[name])
    out["facenet"] = d / "20180402-114759-vggface2.pt"
    torch.save(_estimate_bn_statistics(InceptionResnetV1(), 160).state_dict(), out["facenet"])
    return out


def _images(lfw_sample: Path, n: int = 2) -> list[Path]:
    return sorted(lfw_sample.glob("*/*.jpg"))[:n]


# --- the architectures: key names and shapes of the references ---------------------------------

# Counts and keys measured on the references' own modules (insightface arcface_torch
# backbones/iresnet.py, facenet-pytorch InceptionResnetV1, AdaFace net.py build_model), whose
# state_dict key lists equal these modules' (and their forward passes, these, exactly).
@pytest.mark.parametrize("name, n_keys, keys", [
    ("iresnet18", 187, {"conv1.weight": (64, 3, 3, 3), "layer1.0.downsample.0.weight": (64, 64, 1, 1),
                        "layer4.1.bn3.running_var": (512,), "bn2.weight": (512,), "fc.weight": (512, 25088),
                        "fc.bias": (512,), "features.weight": (512,), "prelu.weight": (64,)}),
    ("iresnet50", 475, {"layer3.13.conv2.weight": (256, 256, 3, 3), "layer2.0.downsample.1.running_mean": (128,),
                        "layer4.2.prelu.weight": (512,), "features.num_batches_tracked": ()}),
    ("iresnet100", 925, {"layer3.29.bn1.weight": (256,), "layer2.12.conv1.weight": (128, 128, 3, 3)}),
    ("facenet", 714, {"conv2d_1a.conv.weight": (32, 3, 3, 3), "conv2d_1a.bn.running_mean": (32,),
                      "repeat_1.4.branch2.2.conv.weight": (32, 32, 3, 3), "repeat_2.9.conv2d.bias": (896,),
                      "mixed_6a.branch1.2.conv.weight": (256, 192, 3, 3),
                      "mixed_7a.branch0.1.conv.weight": (384, 256, 3, 3),
                      "repeat_2.0.branch1.1.conv.weight": (128, 128, 1, 7), "block8.conv2d.weight": (1792, 384, 1, 1),
                      "last_linear.weight": (512, 1792), "last_bn.running_var": (512,)}),
    ("adaface-ir50", 467, {"input_layer.0.weight": (64, 3, 3, 3), "body.3.shortcut_layer.0.weight": (128, 64, 1, 1),
                           "body.23.res_layer.4.weight": (512, 512, 3, 3), "body.0.res_layer.3.weight": (64,),
                           "output_layer.0.weight": (512,), "output_layer.3.weight": (512, 25088),
                           "output_layer.4.running_mean": (512,)}),
    ("adaface-ir101", 917, {"body.48.res_layer.5.running_var": (512,)}),
])
def test_key_names_and_shapes_follow_the_references(name, n_keys, keys):
    shapes = expected_shapes(name)
    assert len(shapes) == n_keys
    for key, shape in keys.items():
        assert shapes[key] == shape, key
    if name == "facenet":
        assert "last_linear.bias" not in shapes and not any(k.startswith("logits.") for k in shapes)
    if name.startswith("adaface"):  # a width-preserving shortcut is MaxPool2d(1, 2), no weights; BN1d affine=False
        assert not any(k.startswith("body.0.shortcut_layer") for k in shapes)
        assert "output_layer.4.weight" not in shapes


def test_iresnet18_embeds_as_arcface_torch(ckpts):
    """(x - 0.5) / 0.5 on RGB, the network, L2 normalisation; ArcFace alignment; layer4 for CAMs."""
    model = load_model(f"iresnet18:{ckpts['iresnet18']}", device="cpu")
    assert model.name == "iresnet18:backbone.pth" and model.input_size == (112, 112)
    assert model.align == "arcface-112" and model.aligner is not None and model.threshold is None
    net = iresnet("iresnet18").eval()
    net.load_state_dict(torch.load(ckpts["iresnet18"], weights_only=True))
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), F.normalize(net((x - 0.5) / 0.5), dim=1), atol=1e-6, rtol=0)
    from falsify.attribution.base import find_layer

    assert find_layer(model, None)[0] == "backbone.layer4"


def _facenet_pytorch(monkeypatch):
    """facenet-pytorch's ``inception_resnet_v1`` module, imported from its file: the package's
    ``__init__`` imports its MTCNN, which needs torchvision (not installed beside the CPU torch)."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("facenet-pytorch is not installed (make venv installs it with --no-deps)")
    root = Path(spec.submodule_search_locations[0])
    for name, path in (("_facenet_pytorch_ref", root), ("_facenet_pytorch_ref.models", root / "models")):
        stub = types.ModuleType(name)
        stub.__path__ = [str(path)]
        monkeypatch.setitem(sys.modules, name, stub)
    name = "_facenet_pytorch_ref.models.inception_resnet_v1"
    mod_spec = importlib.util.spec_from_file_location(name, root / "models" / "inception_resnet_v1.py")
    module = importlib.util.module_from_spec(mod_spec)
    monkeypatch.setitem(sys.modules, name, module)
    try:
        mod_spec.loader.exec_module(module)
    except ImportError as exc:
        pytest.skip(f"facenet-pytorch's InceptionResnetV1 cannot be imported here: {exc}")
    return module


def test_facenet_equals_facenet_pytorch(monkeypatch, tmp_path):
    """The same random weights, saved from facenet-pytorch's InceptionResnetV1 (with a classifier,
    as its vggface2.pt has), loaded by falsify: the same embeddings within 1e-5."""
    ref_module = _facenet_pytorch(monkeypatch)
    torch.manual_seed(3)
    ref = _estimate_bn_statistics(ref_module.InceptionResnetV1(), 160, seed=3)
    state = ref.state_dict()
    state["logits.weight"], state["logits.bias"] = torch.randn(8631, 512), torch.randn(8631)
    path = tmp_path / "20180402-114759-vggface2.pt"
    torch.save(state, path)
    model = load_model(f"facenet:{path}", align="none", device="cpu")
    assert model.input_size == (160, 160) and model.cam_layer == "repeat_3"
    x = torch.rand(4, 3, 160, 160, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = ref((x * 255 - 127.5) / 128.0)  # fixed_image_standardization; its forward L2-normalises
        got = model(x)
    assert (want @ want.T).min() < 0.99  # the embeddings differ between images: the comparison means something
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


# --- the layouts read -------------------------------------------------------------------------


def test_training_wrappers_and_extra_tensors_are_read(tmp_path, ckpts):
    state = torch.load(ckpts["iresnet18"], weights_only=True)
    layouts = {
        # arcface_torch's checkpoint_gpu_N.pt (resuming training)
        "checkpoint_gpu_0.pt": {"epoch": 3, "global_step": 100, "state_dict_backbone": state,
                                "state_dict_softmax_fc": {"weight": torch.zeros(4, 512)},
                                "state_optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}},
        "ddp.pth": {f"module.{k}": v for k, v in state.items()},  # saved from DistributedDataParallel
        "half.pth": {k: v.half() if v.is_floating_point() else v for k, v in state.items()},
        "old.pth": {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")},
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
        loaded = load_checkpoint("iresnet18", tmp_path / name).backbone.state_dict()
        assert list(loaded) == list(state)
        for key, value in state.items():
            got = loaded[key]
            assert got.dtype == value.dtype  # float32 whatever the file's float type
            if name == "old.pth" and key.endswith("num_batches_tracked"):
                assert int(got) == 0
            else:
                torch.testing.assert_close(got, value, atol=2e-3 if name == "half.pth" else 0, rtol=0)


def _lightning_checkpoint(net, hyper_parameters) -> dict:
    """A PyTorch Lightning checkpoint as AdaFace's training writes it."""
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    state["head.kernel"], state["head.t"] = torch.randn(512, 10), torch.zeros(1)
    return {"epoch": 25, "global_step": 1000, "pytorch-lightning_version": "1.8.6", "state_dict": state,
            "callbacks": {"ModelCheckpoint{'monitor': 'val_acc', 'mode': 'max'}": {"best_model_score": torch.tensor(0.9),
                                                                                 "best_model_path": "last.ckpt"}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0]}]}],
            "lr_schedulers": [{"milestones": collections.Counter({12: 1, 20: 1}), "last_epoch": 25}],
            "hparams_name": "kwargs", "hyper_parameters": hyper_parameters}


def test_adaface_lightning_checkpoint(tmp_path):
    """AdaFace's .ckpt: the network under state_dict / model., read when it holds plain values
    only; the input is BGR (x - 0.5) / 0.5; one holding an argparse.Namespace is refused."""
    torch.manual_seed(5)
    net = adaface_ir("adaface-ir18").eval()
    path = tmp_path / "adaface_ir18_casia.ckpt"
    torch.save(_lightning_checkpoint(net, {"arch": "ir_18", "head": "adaface", "m": 0.4, "lr": 0.1}), path)
    model = load_model(f"adaface-ir18:{path}", device="cpu")
    assert model.align == "arcface-112" and model.channel_order == "BGR" and model.cam_layer == "body.7"
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(model(x), F.normalize(net((x.flip(1) - 0.5) / 0.5), dim=1), atol=1e-6, rtol=0)
    pickled = tmp_path / "adaface_ir18_namespace.ckpt"
    torch.save(_lightning_checkpoint(net, argparse.Namespace(arch="ir_18")), pickled)
    with pytest.raises(ValueError, match=r"pickled Python objects \(e\.g\. argparse\.Namespace\).*"
                                         r"k\.startswith\('model\.'\)"):
        load_model(f"adaface-ir18:{pickled}", device="cpu")


# --- refusals ---------------------------------------------------------------------------------


def test_mismatches_name_the_first_difference(tmp_path, ckpts):
    r18 = ckpts["iresnet18"]
    with pytest.raises(ValueError, match=r"^iresnet50:.*: key layer1\.2\.bn1\.weight is missing from the "
                                         r"checkpoint; is it iresnet18\?"):
        load_model(f"iresnet50:{r18}", device="cpu")
    with pytest.raises(ValueError, match=r"key layer1\.2\.bn1\.weight is in the checkpoint but not in iresnet18; "
                                         r"is it iresnet50\?"):
        load_model(f"iresnet18:{ckpts['iresnet50']}", device="cpu")
    narrow = tmp_path / "r18_256.pth"  # trained with embedding_size 256
    torch.save(IResNet((2, 2, 2, 2), embedding_dim=256).state_dict(), narrow)
    with pytest.raises(ValueError, match=r"key fc\.weight has shape \(256, 25088\) in the checkpoint, "
                                         r"\(512, 25088\) in iresnet18"):
        load_model(f"iresnet18:{narrow}", device="cpu")
    with pytest.raises(ValueError, match=r"key conv1\.weight is missing from the checkpoint \(its first key is "
                                         r"conv2d_1a\.conv\.weight\); is it facenet\?"):
        load_model(f"iresnet18:{ckpts['facenet']}", device="cpu")
    other = tmp_path / "resnet.pth"
    torch.save({"stem.weight": torch.zeros(3), "head.weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="nor one of another architecture falsify knows"):
        load_model(f"facenet:{other}", device="cpu")


def test_files_that_are_not_weights_are_refused(tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save(iresnet("iresnet18"), whole)  # a whole pickled module
    with pytest.raises(ValueError, match=r"holds pickled Python objects \(e\.g\. falsify\.models\.iresnet\.IResNet\)"
                                         r", and falsify does not unpickle checkpoints.*torch\.save\(model\.state_dict"):
        load_model(f"iresnet18:{whole}", device="cpu")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint, or it is damaged"):
        load_model(f"iresnet18:{text}", device="cpu")
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        load_model(f"iresnet18:{listed}", device="cpu")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(f"iresnet18:{tmp_path / 'missing.pth'}", device="cpu")
    with pytest.raises(ValueError, match=r"iresnet50 is an architecture without weights: give its checkpoint, "
                                         r"--model iresnet50:PATH"):
        load_model("iresnet50")
    with pytest.raises(ValueError, match="without weights"):
        load_model("facenet:random")
    with pytest.raises(ValueError, match="give the checkpoint's path after the colon"):
        load_model("iresnet50:")


def test_preprocessing_is_fixed(ckpts):
    with pytest.raises(ValueError, match=r"iresnet18 has fixed preprocessing \(112x112 RGB in \[0, 1\]\); drop the mean"):
        load_model(f"iresnet18:{ckpts['iresnet18']}", mean=0.5)


def _refused(argv, capsys, *expect):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"falsify {argv[0]}: error: "), err
    for text in expect:
        assert text in err, err
    return err


def test_cli_refusals_are_one_line_and_write_nothing(ckpts, lfw_sample, tmp_path, capsys):
    pickled = tmp_path / "trainer.ckpt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, pickled)
    out = tmp_path / "run"
    run = ["run", "6.1", "--data", str(lfw_sample), "--n-pairs", "2", "--methods", "gradcam", "--out", str(out), "-q"]
    _refused([*run, "--model", f"iresnet50:{ckpts['iresnet18']}"], capsys, "is it iresnet18?")
    _refused([*run, "--model", f"iresnet50:{pickled}"], capsys, "pickled Python objects (e.g. argparse.Namespace)",
             "save the weights alone")
    _refused([*run, "--model", f"iresnet50:{ckpts['facenet']}"], capsys, "is it facenet?")
    assert not out.exists()
    runs = ["run", "6.4", "--data", str(lfw_sample), "--n-pairs", "2", "--methods", "gradcam", "--out", str(out), "-q"]
    _refused([*runs, "--models", f"dlib-resnet,iresnet50:{pickled}"], capsys, "pickled Python objects")
    assert not out.exists()
    fig = tmp_path / "fig.png"
    a, b = _images(lfw_sample)
    _refused(["explain", str(a), str(b), "--model", f"facenet:{ckpts['iresnet18']}", "--out", str(fig)], capsys,
             "is it iresnet18?")
    _refused(["verify", "--data", str(lfw_sample), "--model", f"iresnet18:{ckpts['iresnet50']}"], capsys,
             "is it iresnet50?")
    assert not fig.exists()


# --- names, paths, experiment 6.4 ---------------------------------------------------------------


def test_arch_path_names(tmp_path, ckpts):
    """ARCH:PATH splits at the first colon: a path may hold colons; a trailing :random is the
    randomised control."""
    odd = tmp_path / "run:3" / "backbone.pth"
    odd.parent.mkdir()
    odd.write_bytes(ckpts["iresnet18"].read_bytes())
    model = load_model(f"iresnet18:{odd}", device="cpu")
    assert model.name == "iresnet18:backbone.pth"
    rand = load_model(f"iresnet18:{odd}:random", device="cpu")
    assert rand.name == "iresnet18:backbone.pth:random" and rand.threshold is None and rand.align == "arcface-112"
    assert not torch.equal(rand.backbone.fc.weight, model.backbone.fc.weight)
    assert builtin_name(f"iresnet50:{odd}") == "iresnet50" and builtin_name("iresnet50") is None
    assert resolve_align(f"facenet:{odd}") == "arcface-112" and resolve_align(f"facenet:{odd}:random", "none") is None
    assert set(ARCHITECTURES) >= {"iresnet18", "iresnet34", "iresnet50", "iresnet100", "facenet", "adaface-ir50",
                                  "adaface-ir101"}


def test_experiment_6_4_takes_checkpoints(ckpts):
    from falsify.experiments import configure
    from falsify.experiments.exp_6_4 import slug

    a, b = f"iresnet18:{ckpts['iresnet18']}", f"iresnet50:{ckpts['iresnet50']}"
    c = configure(experiment="6.4", models=f"dlib-resnet,{a},{a}:random,{b}")
    assert c.models == ["dlib-resnet", a, f"{a}:random", b]
    slugs = [slug(m) for m in c.models]
    assert len(set(slugs)) == 4  # both files are called backbone.pth
    assert slugs[1].startswith("iresnet18_backbone.pth_") and slugs[2] == slugs[1] + "_random"


# --- every command, end to end ----------------------------------------------------------------


@pytest.mark.parametrize("arch, n_pairs", [("iresnet18", 4), ("facenet", 4), ("iresnet50", 2)])
def test_verify_end_to_end(arch, n_pairs, ckpts, lfw_sample, capsys):
    argv = ["verify", "--model", f"{arch}:{ckpts[arch]}", "--data", str(lfw_sample), "--n-pairs", str(n_pairs),
            "--device", "cpu", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["model"] == f"{arch}:{ckpts[arch].name}" and result["n_pairs"] == n_pairs
    assert result["align"] == "arcface-112" and result["alignment"]["aligned"] >= 2
    assert "comes with no decision threshold" in captured.err


def test_explain_and_test_end_to_end(ckpts, lfw_sample, tmp_path, capsys):
    model = f"iresnet18:{ckpts['iresnet18']}"
    a, b = map(str, _images(lfw_sample))
    maps = tmp_path / "maps.npz"
    # the default methods, without biometric-gradcam: the model has no threshold of its own
    assert main(["explain", a, b, "--model", model, "--device", "cpu", "--option", "ig.steps=4",
                 "--save-maps", str(maps), "-q"]) == 0
    captured = capsys.readouterr()
    assert "biometric-gradcam left out" in captured.err and maps.is_file()
    import numpy as np

    with np.load(maps) as z:
        assert not any("biometric" in k for k in z.files) and any("gradcam" in k for k in z.files)
    _refused(["explain", a, b, "--model", model, "--methods", "biometric-gradcam"], capsys,
             "--option biometric-gradcam.threshold=T")
    _refused(["explain", a, b, "--model", model, "--methods", "xssab"], capsys, "--option xssab.threshold=T")
    # falsify test calibrates the thresholds, and biometric-gradcam takes the calibrated decision threshold
    assert main(["test", a, b, "--method", "biometric-gradcam", "--model", model, "--preset", "plain", "--data",
                 str(lfw_sample), "--calibration-pairs", "6", "--device", "cpu", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "iresnet18:backbone.pth" and out["calibration"]["threshold_cos"] is not None
    assert out["results"][0]["verdict"] in ("passed", "falsified", "untestable")


@pytest.mark.slow
def test_run_6_1_end_to_end(ckpts, lfw_sample, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "run.toml"
    config.write_text("calibration_pairs = 8\n")
    argv = ["run", "6.1", "--model", f"iresnet18:{ckpts['iresnet18']}", "--data", str(lfw_sample), "--n-pairs", "2",
            "--methods", "gradcam,biometric-gradcam,saliency", "--preset", "plain", "--out", str(out), "--device",
            "cpu", "-q", "--config", str(config)]
    assert main(argv) == 0  # biometric-gradcam takes the calibrated threshold: the weights have none
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "iresnet18:backbone.pth" and summary["n_rows"] == 6 and summary["n_errors"] == 0
    assert summary["calibration"]["threshold_cos"] is not None
    assert summary["alignment"]["template"] == "arcface-112"


def test_models_command_lists_the_architectures(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "--model ARCH:CHECKPOINT" in out and "weights_only=True" in out
    for name, arch in ARCHITECTURES.items():
        assert name in out and arch.cam_layer in out
    assert "(v - 127.5) / 128" in out and "BGR" in out
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    archs = {m["name"]: m for m in listed if m["kind"] == "architecture"}
    assert set(archs) == set(ARCHITECTURES)
    assert archs["iresnet50"]["input_size"] == [112, 112] and archs["facenet"]["input_size"] == [160, 160]
