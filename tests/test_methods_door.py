"""The door for methods: register_method, module.path:callable, captum:NAME, smoothgrad and
vargrad; their maps checked; their runs (error rows, --sanity, resume refused after the file
changed)."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from falsify.attribution import (AttributionError, Explainer, get_explainer, method_fingerprints, method_options,
                                 register_method)
from falsify.attribution.captum_methods import _ACTIVATIONS, check_rule_modules
from falsify.models.base import FaceEmbedder
from tests.conftest import signal_when, stored_rows


def _refs(model, n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return model(torch.rand(n, 3, *model.input_size, generator=g))


def _images(model, n=2, seed=0):
    return torch.rand(n, 3, *model.input_size, generator=torch.Generator().manual_seed(seed))


def _module(tmp_path, monkeypatch, name, body):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / f"{name}.py"


# --- register_method ----------------------------------------------------------------------------

def test_registered_callable_gives_exactly_its_map(tiny_model):
    fixed = torch.linspace(-1, 2, 32 * 32).view(32, 32)
    seen = {}

    def method(model, images, references):
        seen["args"] = (model, images.shape, references.shape)
        return fixed.expand(images.shape[0], 32, 32).clone()

    register_method("door-fixed", method)
    e = get_explainer("door-fixed", tiny_model)
    x, r = _images(tiny_model), _refs(tiny_model)
    raw = e.attribute(x, r)
    assert torch.equal(raw, fixed.expand(2, 32, 32))
    assert seen["args"][0] is tiny_model and seen["args"][1] == (2, 3, 32, 32) and seen["args"][2] == (2, 16)
    # default normalisation abs: |map| min-max, so |-1| .. |2| -> the known values
    want = (fixed.abs() - fixed.abs().min()) / (fixed.abs().max() - fixed.abs().min())
    assert torch.allclose(e(x, r)[0], want, atol=1e-7)
    assert method_options("door-fixed") == ["normalise"]
    signed = get_explainer("door-fixed", tiny_model, normalise="signed")(x, r)[0]
    assert torch.allclose(signed, (fixed + 1) / 3, atol=1e-6)


def test_registered_class_and_refusals(tiny_model):
    class Half(Explainer):
        name = "whatever"

        def _attribute(self, images, references):
            m = torch.zeros(images.shape[0], *images.shape[-2:])
            m[:, :16] = 1
            return m

    cls = register_method("door-half", Half)
    assert cls.name == "door-half" and cls.source_file == os.path.abspath(__file__)
    assert get_explainer("door-half", tiny_model).attribute(_images(tiny_model))[:, :16].eq(1).all()
    with pytest.raises(AttributionError, match="built-in method name"):
        register_method("saliency", Half)
    with pytest.raises(AttributionError, match="without spaces"):
        register_method("a,b", Half)
    with pytest.raises(AttributionError, match="must be an Explainer subclass or a callable"):
        register_method("door-three", 3)


@pytest.mark.parametrize("body, match", [
    ("return torch.zeros(images.shape[0], 5, 5)", r"returned maps of shape \(2, 5, 5\); expected \(N, H, W\) = \(2, 32, 32\)"),
    ("return torch.full((images.shape[0], 32, 32), float('nan'))", r"returned 2048 non-finite value\(s\)"),
    ("raise RuntimeError('the lab GPU is busy\\nsecond line')", r"raised RuntimeError: the lab GPU is busy second line"),
    ("return 'not a map'", r"returned str"),
])
def test_bad_outputs_are_one_line_naming_the_method(tiny_model, body, match):
    ns: dict = {}
    exec(f"import torch\ndef f(model, images, references):\n    {body}\n", ns)
    register_method("door-bad", ns["f"])
    with pytest.raises(AttributionError, match=match) as info:
        get_explainer("door-bad", tiny_model).attribute(_images(tiny_model), _refs(tiny_model))
    assert "'door-bad'" in str(info.value) and "\n" not in str(info.value)


# --- module.path:callable -----------------------------------------------------------------------

def test_import_path(tiny_model, tmp_path, monkeypatch):
    path = _module(tmp_path, monkeypatch, "door_lab_a", """
        import torch
        LIMIT = 3
        def top(model, images, references):
            m = torch.zeros(images.shape[0], *images.shape[-2:])
            m[:, : images.shape[-2] // 2] = 1
            return m.numpy()           # a NumPy array is taken too
        class Maps:
            @staticmethod
            def bottom(model, images, references):
                return 1 - torch.as_tensor(top(model, images, references))
        """)
    assert "door_lab_a" not in sys.modules
    top = get_explainer("door_lab_a:top", tiny_model).attribute(_images(tiny_model))
    assert "door_lab_a" in sys.modules  # imported because it was named
    assert top[:, :16].eq(1).all() and top[:, 16:].eq(0).all()
    bottom = get_explainer("door_lab_a:Maps.bottom", tiny_model).attribute(_images(tiny_model))
    assert torch.equal(bottom, 1 - top)
    import hashlib

    assert method_fingerprints(["door_lab_a:top", "saliency"]) == {
        "door_lab_a:top": hashlib.sha256(path.read_bytes()).hexdigest()}
    for name, match in [("door_lab_nothere:f", "no module named 'door_lab_nothere'.*PYTHONPATH"),
                        ("door_lab_a:missing", "door_lab_a has no 'missing'"),
                        ("door_lab_a:LIMIT", r"is not callable \(int\)")]:
        with pytest.raises(AttributionError, match=match) as info:
            get_explainer(name, tiny_model)
        assert "\n" not in str(info.value)


def test_import_path_of_a_captum_class_points_to_captum_form(tiny_model):
    with pytest.raises(AttributionError, match="name it captum:Saliency"):
        get_explainer("captum.attr:Saliency", tiny_model)


def test_run_config_refuses_a_bad_method_before_any_work(tmp_path):
    from falsify.experiments import RunConfig

    with pytest.raises(ValueError, match="no module named 'door_nowhere'"):
        RunConfig(methods=["saliency", "door_nowhere:f"], out=str(tmp_path / "o"))
    with pytest.raises(ValueError, match="captum.attr has no attribution class 'Nope'"):
        RunConfig(methods=["captum:Nope"])
    with pytest.raises(ValueError, match="captum:Occlusion is not run by falsify: it needs a sliding window"):
        RunConfig(methods=["captum:Occlusion"])
    assert not (tmp_path / "o").exists()


# --- captum by name -----------------------------------------------------------------------------

def test_captum_input_x_gradient_and_saliency_have_known_answers(dlib_model):
    x, r = _images(dlib_model, seed=4), _refs(dlib_model, seed=5)
    xi = x.clone().requires_grad_(True)
    target = (dlib_model(xi) * torch.nn.functional.normalize(r, dim=1)).sum()
    (grad,) = torch.autograd.grad(target, xi)
    # the same float32 forward and backward pass: only the order of the three-term channel sum
    # (and oneDNN's choice of convolution algorithm across calls) can move the last bits, so
    # 1e-6 of the largest value
    ixg = get_explainer("captum:InputXGradient", dlib_model).attribute(x, r)
    assert torch.allclose(ixg, (x * grad).sum(1), atol=1e-6 * float(ixg.abs().max()), rtol=0)
    assert torch.allclose(ixg, get_explainer("gradient-x-input", dlib_model).attribute(x, r),
                          atol=1e-6 * float(ixg.abs().max()), rtol=0)
    sal = get_explainer("captum:Saliency", dlib_model).attribute(x, r)
    assert torch.allclose(sal, grad.abs().sum(1), atol=1e-6 * float(sal.abs().max()), rtol=0)


def test_guided_backprop_is_not_the_plain_gradient_on_dlib(dlib_model):
    x, r = _images(dlib_model, seed=4), _refs(dlib_model, seed=5)
    xi = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((dlib_model(xi) * torch.nn.functional.normalize(r, dim=1)).sum(), xi)
    gbp = get_explainer("captum:GuidedBackprop", dlib_model).attribute(x, r)
    plain = grad.sum(1)
    corr = torch.corrcoef(torch.stack([gbp.flatten(), plain.flatten()]))[0, 1]
    assert (gbp - plain).abs().max() > 0.5 * plain.abs().max()  # not the gradient with small changes
    assert corr < 0.5, float(corr)
    sal = get_explainer("saliency", dlib_model)(x, r)
    assert (get_explainer("captum:GuidedBackprop", dlib_model)(x, r) - sal).abs().max() > 0.3


def test_captum_layer_methods_take_the_cam_layer_or_layer(dlib_model):
    x, r = _images(dlib_model, n=1), _refs(dlib_model, n=1)
    e = get_explainer("captum:LayerGradCam", dlib_model)
    assert e.layer_name == "backbone.layer2.3"  # dlib-resnet's CAM layer, as gradcam's
    ours = get_explainer("gradcam", dlib_model, normalise="signed").attribute(x, r)
    theirs = e.attribute(x, r)
    assert theirs.shape == (1, 150, 150)
    # captum's LayerGradCam without its ReLU, upsampled bilinearly; falsify's gradcam is the same CAM
    corr = torch.corrcoef(torch.stack([ours.flatten(), theirs.flatten()]))[0, 1]
    assert corr > 0.9, float(corr)
    assert get_explainer("captum:LayerGradCam", dlib_model, layer="layer3.1").layer_name == "backbone.layer3.1"
    with pytest.raises(AttributionError, match="has no option 'layer'"):
        get_explainer("captum:DeepLift", dlib_model, layer="layer3.1")


class _FunctionalReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 16)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class _ReusedReLU(_FunctionalReLU):
    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.fc(self.act(self.conv2(self.act(self.conv(x)))).mean((2, 3)))


def test_rule_based_methods_refuse_models_their_rules_miss(tiny_model):
    for net, match in [(_FunctionalReLU(), r"relu in backbone \(_FunctionalReLU\)"),
                       (_ReusedReLU(), r"reuses backbone.act \(2 times\)")]:
        model = FaceEmbedder(net, input_size=(32, 32), name="toy")
        for m in ("captum:DeepLift", "captum:GuidedBackprop", "captum:Deconvolution"):
            with pytest.raises(AttributionError, match=match):
                get_explainer(m, model)
    for m in ("captum:DeepLift", "captum:GuidedBackprop", "captum:Deconvolution"):
        assert get_explainer(m, tiny_model).attribute(_images(tiny_model), _refs(tiny_model)).shape == (2, 32, 32)


@pytest.mark.parametrize("arch, ok", [("facenet", True), ("iresnet18", False), ("adaface-ir18", False)])
def test_rule_based_methods_on_the_checkpoint_architectures(arch, ok):
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    from falsify.models.checkpoints import architecture

    a = architecture(arch)
    model = FaceEmbedder(a.build(), input_size=a.input_size, mean=a.mean, std=a.std, name=arch).eval()
    if ok:
        check_rule_modules(model, "captum:DeepLift", tuple(SUPPORTED_NON_LINEAR))
        check_rule_modules(model, "captum:GuidedBackprop", (nn.ReLU,), _ACTIVATIONS)
    else:
        with pytest.raises(AttributionError, match=r"prelu in backbone\..* \(PReLU\)"):
            check_rule_modules(model, "captum:GuidedBackprop", (nn.ReLU,), _ACTIVATIONS)


def test_rule_based_methods_refused_on_sface():
    from falsify.models import load_model

    try:
        sface = load_model("sface")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"sface not available: {exc}")
    with pytest.raises(AttributionError, match=r"sface has 27 without one \(prelu in backbone.conv_1.prelu"):
        get_explainer("captum:DeepLift", sface)


# --- smoothgrad, vargrad ------------------------------------------------------------------------

def test_smoothgrad_and_vargrad_known_answers(tiny_model):
    x, r = _images(tiny_model, n=3), _refs(tiny_model, n=3)
    sal = get_explainer("saliency", tiny_model).attribute(x, r)
    # no noise: every sample is the image itself, so SmoothGrad is |gradient| (max over channels)
    # and VarGrad is 0. The noisy batch holds 4 copies, and a batch of another size may take
    # another convolution kernel (another summation order): gradients that are sums of many
    # float32 terms with cancellation then differ by ~1e-6 of the largest (measured 1e-6); 1e-4
    # of it allows for other CPUs, and noise of stdevs 0.15 moves the map by far more (checked below)
    tol = 1e-4 * float(sal.max())
    sg0 = get_explainer("smoothgrad", tiny_model, n_samples=4, stdevs=0.0).attribute(x, r)
    assert torch.allclose(sg0, sal, atol=tol, rtol=0)
    vg0 = get_explainer("vargrad", tiny_model, n_samples=4, stdevs=0.0).attribute(x, r)
    assert float(vg0.abs().max()) <= 1e-6 * float(sal.max()) ** 2
    sg = get_explainer("smoothgrad", tiny_model, n_samples=8)
    a = sg.attribute(x, r)
    assert (a - sal).abs().max() > 100 * tol
    assert torch.equal(a, sg.attribute(x, r))  # seeded
    # each image's noise depends on the seed alone, not on the images beside it in the batch
    assert torch.allclose(sg.attribute(x[1:2], r[1:2])[0], a[1], atol=tol, rtol=0)
    assert not torch.allclose(get_explainer("smoothgrad", tiny_model, n_samples=8, seed=1).attribute(x, r), a)
    assert get_explainer("vargrad", tiny_model, n_samples=8).attribute(x, r).min() >= 0


# --- falsify methods, runs ----------------------------------------------------------------------

def _cli(args, env_path=None, **kw):
    env = dict(os.environ)
    if env_path:
        env["PYTHONPATH"] = os.pathsep.join([str(env_path), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "falsify.cli", *args], capture_output=True, text=True, env=env,
                          timeout=900, **kw)


def test_falsify_methods_lists_every_form():
    out = _cli(["methods"])
    assert out.returncode == 0, out.stderr
    for text in ("smoothgrad", "captum:DeepLift", "captum:GuidedBackprop", "captum:LayerGradCam",
                 "module.path:callable"):
        assert text in out.stdout
    data = json.loads(_cli(["methods", "--json"]).stdout)
    assert "vargrad" in data["builtin"] and "captum:InputXGradient" in data["captum"]


LAB = """
import torch

def left_half(model, images, references):
    n, _, h, w = images.shape
    m = torch.zeros(n, h, w)
    m[:, :, : w // 2] = 1.0
    return m

def bad_shape(model, images, references):
    return torch.zeros(images.shape[0], 7, 7)

def nan(model, images, references):
    return torch.full((images.shape[0], *images.shape[-2:]), float("nan"))

def boom(model, images, references):
    raise KeyError("no such landmark")
"""
FIXED = ["--preset", "plain", "--tau-high", "0.2", "--tau-low", "0.1", "--epsilon", "0.05", "--no-ceiling", "-q"]


@pytest.mark.slow
def test_run_with_user_methods_errors_sanity_and_changed_file(lfw_sample, tmp_path):
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "door_lab_run.py").write_text(LAB)
    out = tmp_path / "run"
    methods = "door_lab_run:left_half,door_lab_run:bad_shape,door_lab_run:nan,door_lab_run:boom,captum:DeepLift,saliency"
    argv = ["run", "6.1", "--methods", methods, "--n-pairs", "2", "--data", str(lfw_sample), "--out", str(out),
            "--sanity", *FIXED]
    res = _cli(argv, env_path=lab)
    assert res.returncode == 0, res.stdout + res.stderr
    with sqlite3.connect(out / "results.sqlite") as c:
        rows = c.execute("SELECT method, pair, verdict, error FROM results").fetchall()
    by = {}
    for m, p, v, e in rows:
        by.setdefault(m, []).append((v, e))
    names = methods.split(",")
    assert set(by) == set(names) | {m + "@random-model" for m in names}
    assert all(len(v) == 2 for v in by.values())
    for m in ("door_lab_run:left_half", "captum:DeepLift", "saliency", "door_lab_run:left_half@random-model"):
        assert all(v in ("passed", "falsified", "untestable") for v, _ in by[m]), by[m]
    for m, what in [("bad_shape", "returned maps of shape (1, 7, 7)"), ("nan", "non-finite value"),
                    ("boom", "raised KeyError: 'no such landmark'")]:
        for v, e in by[f"door_lab_run:{m}"]:
            assert v == "error" and f"'door_lab_run:{m}'" in e and what in e and "\n" not in e, e
    summary = json.loads((out / "summary.json").read_text())
    shown = {m["method"] for m in summary["methods"]}
    assert {"door_lab_run:left_half", "captum:DeepLift"} <= shown
    html = (out / "report.html").read_text()
    assert "door_lab_run:left_half" in html and "captum:DeepLift" in html
    # the method's file changes: resuming is refused in one line, and the rows are kept
    (lab / "door_lab_run.py").write_text(LAB.replace("w // 2", "w // 3"))
    res = _cli(argv, env_path=lab)
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "the file of method 'door_lab_run:left_half'" in err[0] and "changed" in err[0], err
    with sqlite3.connect(out / "results.sqlite") as c:
        assert c.execute("SELECT count(*) FROM results").fetchone()[0] == len(rows)
    # without the changed method the run resumes (nothing to compute)
    argv2 = [a if a != methods else "captum:DeepLift,saliency" for a in argv]
    res = _cli(argv2, env_path=lab)
    assert res.returncode == 0, res.stderr


def centre_square(model, images, references):
    """A registered (not imported) method for the Ray test: Ray workers get it from the driver."""
    n, _, h, w = images.shape
    m = torch.zeros(n, h, w)
    m[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1.0
    return m


@pytest.mark.slow
def test_ray_workers_run_registered_and_imported_methods(lfw_sample, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from falsify.experiments import RunConfig, runner_for

    _module(tmp_path, monkeypatch, "door_lab_ray", LAB)
    register_method("door-centre-square", centre_square)
    settings = dict(data=str(lfw_sample), n_pairs=2, methods=["door_lab_ray:left_half", "door-centre-square",
                                                              "door_lab_ray:boom"],
                    preset="plain", tau_high=0.2, tau_low=0.1, epsilon=0.05, ceiling=False, sanity=True)
    rows = {}
    for executor in ("in-process", "ray"):
        out = tmp_path / executor
        extra = {"workers": 1} if executor == "ray" else {}
        runner_for(RunConfig(out=str(out), executor=executor, **settings, **extra), progress=False,
               log=lambda *a: None).run()
        with sqlite3.connect(out / "results.sqlite") as c:
            rows[executor] = sorted(c.execute("SELECT method, pair, verdict, d_high, d_low, error FROM results"))
    assert len(rows["ray"]) == 2 * 6
    assert [r[:3] + r[5:] for r in rows["ray"]] == [r[:3] + r[5:] for r in rows["in-process"]]
    for a, b in zip(rows["ray"], rows["in-process"]):
        assert (a[3] is None and b[3] is None) or abs(a[3] - b[3]) <= 1e-5


def test_options_of_an_import_path_method(tmp_path, monkeypatch, tiny_model):
    from falsify.cli import _parse_options
    from falsify.experiments import RunConfig

    assert _parse_options(["door_lab_opt.maps:f.normalise=signed", "gradcam.layer=layer4.2.conv2"]) == {
        "door_lab_opt.maps:f": {"normalise": "signed"}, "gradcam": {"layer": "layer4.2.conv2"}}
    (tmp_path / "door_lab_opt").mkdir()
    (tmp_path / "door_lab_opt" / "__init__.py").write_text("")
    (tmp_path / "door_lab_opt" / "maps.py").write_text(LAB.replace("def left_half", "def f"))
    monkeypatch.syspath_prepend(str(tmp_path))
    c = RunConfig(methods=["door_lab_opt.maps:f"], method_options={"door_lab_opt.maps:f": {"normalise": "signed"}})
    assert c.methods == ["door_lab_opt.maps:f"]
    e = get_explainer("door_lab_opt.maps:f", tiny_model, **c.method_options["door_lab_opt.maps:f"])
    assert e.normalise == "signed"
    with pytest.raises(AttributionError, match="has no option 'steps'"):
        get_explainer("door_lab_opt.maps:f", tiny_model, steps=3)


@pytest.mark.slow
def test_changed_method_file_after_a_killed_run_is_refused(lfw_sample, tmp_path):
    import signal

    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "door_lab_kill.py").write_text(LAB)
    out = tmp_path / "run"
    argv = ["run", "6.1", "--methods", "door_lab_kill:left_half,smoothgrad", "--n-pairs", "6", "--batch-pairs", "1",
            "--data", str(lfw_sample), "--out", str(out), *FIXED]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(lab), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "falsify.cli", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    signal_when(proc, lambda: stored_rows(out) >= 1, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"run ended before it could be killed ({stored_rows(out)} rows)"
    with sqlite3.connect(out / "results.sqlite") as c:
        kept = c.execute("SELECT method, pair, verdict FROM results").fetchall()
    (lab / "door_lab_kill.py").write_text(LAB + "\n# changed\n")
    res = _cli(argv, env_path=lab)
    assert res.returncode == 2
    assert "the file of method 'door_lab_kill:left_half'" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    with sqlite3.connect(out / "results.sqlite") as c:
        assert c.execute("SELECT method, pair, verdict FROM results").fetchall() == kept
    (lab / "door_lab_kill.py").write_text(LAB)  # the file as it was: the run resumes and completes
    res = _cli(argv, env_path=lab)
    assert res.returncode == 0, res.stderr
    with sqlite3.connect(out / "results.sqlite") as c:
        assert c.execute("SELECT count(*) FROM results").fetchone()[0] == 2 * 6
