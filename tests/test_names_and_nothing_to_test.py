"""Issue 26, items 4 and 6: figures that hold any name, and images that carry nothing to test.

- titles built from file names are shortened with an ellipsis to fit their panels, characters no
  font has are replaced, and no matplotlib warning reaches the terminal (``falsify explain``,
  ``falsify test --figure``), checked on the drawn figure's layout;
- ``explain`` and ``test`` say when no face was found, with ``verify``'s line;
- a test in which no counterfactual moves f(x) beyond float32 rounding is *untestable*.
"""
from __future__ import annotations

import json
import math
import shutil
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from falsify.cli import main
from falsify.falsification import FalsificationConfig, falsification_test
from falsify.geometry import FLOAT32_EPS, ROUNDING_ULPS, angle_rounding, geodesic_distance
from falsify.models.alignment import no_face_line
from falsify.models.base import FaceEmbedder
from falsify.report import labels as L

LONG_STEM = "Abel_Pacheco_" + "x" * 218 + "_0001"  # 236 characters; 240 with .jpg
UNICODE_NAME = "Zoë_Ångström_顔_😀.jpg"
THRESHOLDS = ["--tau-high", "0.1", "--tau-low", "0.05", "--epsilon", "0.05"]


# --- the helpers ------------------------------------------------------------------------------------

def test_shorten_keeps_the_start_and_end_around_an_ellipsis():
    assert L.shorten("George_W_Bush_0007", 30) == "George_W_Bush_0007"
    assert L.shorten("abcdefghij", 5) == "abc\u2026j"
    assert L.shorten("abcdefghij", 7) == "abcd\u2026ij"
    assert L.shorten("abcdefghij", 1) == "\u2026"
    for n in range(1, 12):
        assert len(L.shorten("abcdefghij", n)) == min(n, 10)


def test_displayable_replaces_what_no_font_has():
    shown = L.displayable("Zoe\u0308_\u00c5ngstr\u00f6m_\u9854_\U0001F600\nend")  # NFD e + diaeresis
    assert shown.startswith("Zoë_Ångström_") and shown.endswith("end")
    assert "\n" not in shown and shown[-4] == L.REPLACEMENT  # a control character is replaced
    points = L._codepoints()
    assert ord(L.REPLACEMENT) in points  # DejaVu Sans has U+FFFD
    assert all(ord(c) in points for c in shown)
    assert L.font_families()[0] == "DejaVu Sans"
    # 顔 is drawn where a CJK font is installed, replaced otherwise: never a box
    assert shown[13] == ("\u9854" if ord("\u9854") in points else L.REPLACEMENT)


def test_quiet_logs_matplotlibs_warnings_and_leaves_others(caplog):
    import logging

    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.text(0.5, 0.5, "\U0010FFFD")  # private use: a glyph no font has
    caplog.set_level(logging.DEBUG, logger="falsify.figures")
    with warnings.catch_warnings(record=True) as outside:
        warnings.simplefilter("always")
        with L.quiet():
            L.renderer_of(fig)
            fig.canvas.draw()
            warnings.warn("not matplotlib's", DeprecationWarning)
    assert [str(w.message) for w in outside] == ["not matplotlib's"]
    assert any("missing from font" in r.getMessage() for r in caplog.records)


# --- layout ------------------------------------------------------------------------------------------

def _overlap(a, b) -> bool:
    return min(a.x1, b.x1) > max(a.x0, b.x0) and min(a.y1, b.y1) > max(a.y0, b.y0)


def assert_laid_out(fig) -> list[str]:
    """Every title, axis label and figure text lies within the figure and overlaps no other text
    and no axes (colour bars included); every character drawn is one some font has. Returns the
    texts."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for ax in fig.axes for t in (ax.title, ax.yaxis.label) if t.get_text() and t.get_visible()]
    texts += [t for t in fig.texts if t.get_text()]
    boxes = [t.get_window_extent(renderer) for t in texts]
    width, height = fig.bbox.width, fig.bbox.height
    for t, b in zip(texts, boxes):
        assert b.x0 >= 0 and b.y0 >= 0 and b.x1 <= width and b.y1 <= height, t.get_text()
        for ax in fig.axes:
            assert not _overlap(b, ax.bbox), (t.get_text(), ax.get_label())
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not _overlap(boxes[i], boxes[j]), (texts[i].get_text(), texts[j].get_text())
    points = L._codepoints()
    for t in texts:
        assert all(ord(c) in points for c in t.get_text().replace("\n", "")), t.get_text()
    return [t.get_text() for t in texts]


@pytest.fixture(scope="module")
def named_faces(lfw_sample, tmp_path_factory):
    folder = tmp_path_factory.mktemp("names")
    src = sorted((lfw_sample / "Abel_Pacheco").glob("*.jpg"))[:2]
    long, uni = folder / (LONG_STEM + ".jpg"), folder / UNICODE_NAME
    shutil.copy(src[0], long)
    shutil.copy(src[1], uni)
    assert len(long.name) == 240
    return str(long), str(uni)


def _capture(monkeypatch, module, name: str) -> list:
    figs = []
    real = getattr(module, name)

    def keep(*args, **kwargs):
        figs.append(real(*args, **kwargs))
        return figs[-1]

    monkeypatch.setattr(module, name, keep)
    return figs


def test_explain_with_a_long_and_a_unicode_name(named_faces, tmp_path, capsys, monkeypatch):
    import falsify.report.explain as E

    figs = _capture(monkeypatch, E, "explanation_figure")
    out = tmp_path / "fig.png"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["explain", *named_faces, "--methods", "saliency,gradcam", "--out", str(out), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and [str(w.message) for w in caught] == []
    assert out.is_file()
    texts = assert_laid_out(figs[0])
    assert any(t.startswith("Abel_Pacheco_x") and t.endswith("_0001") and "\u2026" in t for t in texts)
    assert any(t.startswith("Zoë_Ångström_") for t in texts)
    assert {"saliency", "gradcam"} <= set(texts)


def test_test_figure_with_a_long_and_a_unicode_name(named_faces, tmp_path, capsys, monkeypatch):
    import falsify.report.falsification_figure as F

    figs = _capture(monkeypatch, F, "falsification_figure")
    out = tmp_path / "test.png"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["test", *named_faces, "--method", "saliency", "--preset", "plain", *THRESHOLDS, "--both",
                     "--figure", str(out), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and [str(w.message) for w in caught] == []
    assert out.is_file()
    texts = assert_laid_out(figs[0])
    assert any(t.startswith("Abel_Pacheco_x") and "\u2026" in t.split("\n")[0] for t in texts)
    assert any(t.startswith("Zoë_Ångström_") for t in texts)


def test_saliency_grid_shortens_a_long_method_name():
    from falsify.report.figures import saliency_grid

    from .test_report import fake_explanations

    long = "my_registered_method_" + "y" * 120
    expl = fake_explanations(2, methods=("gradcam", long), size=32)
    fig = saliency_grid(expl, ["gradcam", long])
    texts = assert_laid_out(fig)
    assert "gradcam" in texts and any(t.startswith("my_registered") and "\u2026" in t for t in texts)


# --- nothing to test ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def blank_images(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("blank")
    flat, dot = folder / "flat.png", folder / "dot.png"
    Image.new("RGB", (200, 200), (128, 100, 90)).save(flat)
    Image.new("RGB", (1, 1), (40, 200, 90)).save(dot)
    return str(flat), str(dot)


@pytest.mark.parametrize("options", [
    ["--preset", "plain", "--fill", "mean", *THRESHOLDS],
    ["--preset", "plain", *THRESHOLDS],  # fill blur
    ["--calibration-pairs", "24", "--prior-images", "4"],  # the default test: beyond-prior, fill mean
], ids=["mean", "blur", "default"])
def test_a_flat_image_under_test_is_untestable_and_no_face_is_said(blank_images, lfw_sample, capsys, options):
    face = str(sorted((lfw_sample / "Abel_Pacheco").glob("*.jpg"))[0])
    flat = blank_images[0]
    assert main(["test", flat, face, "--method", "saliency", "--data", str(lfw_sample), *options,
                 "--json", "-q"]) == 0
    captured = capsys.readouterr()
    (result,) = json.loads(captured.out)["results"]
    assert result["verdict"] == "untestable"
    (reason,) = result["failed"]
    assert "float32 rounding" in reason and "nothing to test" in reason
    assert max(result["d_high"], result["d_low"]) <= angle_rounding(128)
    assert f"falsify test: warning: no face was found in 1 of 2 images; it was resized without alignment ({flat})" \
        in captured.err


def test_explain_says_no_face_was_found(blank_images, capsys):
    flat, dot = blank_images
    assert main(["explain", flat, dot, "--methods", "saliency", "-q"]) == 0
    err = capsys.readouterr().err
    assert f"no face was found in 2 of 2 images; they were resized without alignment ({dot}, {flat})" in err


def test_no_face_line():
    assert no_face_line(0, 2, []) is None
    assert no_face_line(1, 2, ["a.jpg"]) == "no face was found in 1 of 2 images; it was resized without alignment (a.jpg)"
    # verify's line over many images, as docs/results.md quotes it
    assert no_face_line(2, 2202, ["x/J_0001.jpg", "x/A_0002.jpg"]) == \
        "no face was found in 2 of 2202 images; they were resized without alignment (e.g. x/A_0002.jpg)"


class StillNet(nn.Module):
    """An embedder whose output does not depend on the image at all: every distance is exactly 0."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.v = nn.Parameter(torch.linspace(-1, 1, dim))

    def forward(self, x):
        return self.v.expand(x.shape[0], -1) + 0 * self.conv(x).mean()


class NudgeNet(nn.Module):
    """An embedder that turns by about ``gain`` * (mean change of the image) radians."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        base = torch.zeros(x.shape[0], 16)
        base[:, 0] = 1.0
        base[:, 1] = self.gain * m
        return base


def _images(n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=g)


@pytest.mark.parametrize("changes", [
    dict(),
    dict(fill="noise", K=3),
    dict(target="pair"),
    dict(criterion="beyond-prior", delta=0.0),
])
def test_the_core_gives_untestable_when_nothing_moves(changes):
    model = FaceEmbedder(StillNet(), input_size=(32, 32), mean=0.5, std=0.25, name="still")
    images = _images()
    maps = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    refs = torch.nn.functional.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(2)), dim=1)
    config = FalsificationConfig.preset("plain", tau_high=0.05, tau_low=0.03, epsilon=0.01).replace(**changes)
    prior = torch.rand(32, 32) if config.criterion == "beyond-prior" else None
    results = falsification_test(model, images, refs, maps, config, prior=prior, keep_examples=True)
    for r in results:
        assert r.d_high == 0.0 and r.d_low == 0.0
        assert r.verdict == "untestable" and not r.testable
        assert "within float32 rounding" in r.failed[0] and "16-d" in r.failed[0]
        assert "UNTESTABLE" in r.format() and r.high_mask is not None


def test_a_move_beyond_rounding_gets_a_verdict():
    images = _images()
    maps = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    config = FalsificationConfig.preset("plain", fill="zero", tau_high=0.05, tau_low=0.03, epsilon=0.01)
    # zero fill over a tenth of the pixels lowers the image's mean by about 0.02-0.05
    loud = FaceEmbedder(NudgeNet(1e-2), input_size=(32, 32), mean=0.5, std=0.25, name="nudge")
    quiet = FaceEmbedder(NudgeNet(1e-6), input_size=(32, 32), mean=0.5, std=0.25, name="nudge")
    for r in falsification_test(loud, images, None, maps, config):
        assert max(r.d_high, r.d_low) > angle_rounding(16) and r.verdict in ("passed", "falsified")
    for r in falsification_test(quiet, images, None, maps, config):
        assert 0 < max(r.d_high, r.d_low) <= angle_rounding(16) and r.verdict == "untestable"


def test_angle_rounding_bounds_the_angle_of_rounded_unit_vectors():
    """float32 unit vectors whose components differ by up to ROUNDING_ULPS spacings of 1 are
    within angle_rounding(D), measured with the package's own geodesic distance."""
    g = torch.Generator().manual_seed(0)
    for dim in (16, 128, 512):
        u = torch.nn.functional.normalize(torch.randn(200, dim, generator=g), dim=1).float()
        steps = torch.randint(-ROUNDING_ULPS, ROUNDING_ULPS + 1, (200, dim), generator=g).float()
        v = u + steps * FLOAT32_EPS  # within ROUNDING_ULPS spacings of 1 (<= spacings of |u_i| < 1)
        worst = float(geodesic_distance(u.double(), v.double()).max())
        assert worst <= angle_rounding(dim)
        extreme = u + ROUNDING_ULPS * FLOAT32_EPS  # every component off by the most
        assert float(geodesic_distance(u.double(), extreme.double()).max()) <= angle_rounding(dim) * (1 + 1e-6)
    assert math.isclose(angle_rounding(128), 4 * 2**-23 * math.sqrt(128))


def test_the_same_face_embedded_alone_and_in_a_batch_is_within_rounding(dlib_model, lfw_sample):
    """The premise of angle_rounding: dlib's embeddings of one image, alone and in a batch, differ
    by float rounding only, and by less than angle_rounding(128)."""
    from falsify.data import load_image

    paths = sorted((lfw_sample / "Abel_Pacheco").glob("*.jpg"))[:2]
    faces = [load_image(p, dlib_model.input_size, dlib_model.aligner) for p in paths]
    with torch.inference_mode():
        alone = dlib_model(faces[0][None]).float()
        batch = dlib_model(torch.stack([faces[1]] * 7 + [faces[0]])).float()
    angle = float(geodesic_distance(alone[0].double(), batch[-1].double()))
    assert angle <= angle_rounding(128)
    assert float((alone[0] - batch[-1]).abs().max()) <= ROUNDING_ULPS * FLOAT32_EPS
    assert np.isfinite(angle)


def test_experiment_figures_shorten_names(named_faces):
    """6.3's parts figure titles each face with its file name; the known-truth figure titles its
    columns with the methods' names."""
    from falsify.experiments.exp_6_3 import parts_figure
    from falsify.experiments.known_truth import draw_figure

    points = [[38.0, 52.0], [74.0, 52.0], [56.0, 74.0], [42.0, 94.0], [70.0, 94.0]]
    fig = parts_figure({"size": [112, 112], "align": None,
                        "faces": [{"image": p, "points": points} for p in (*named_faces, named_faces[0])]})
    texts = assert_laid_out(fig)
    assert any(t.startswith("Abel_Pacheco_x") and t.endswith("_0001.jpg") and "\u2026" in t for t in texts)
    assert any(t.startswith("Zoë_Ångström_") for t in texts)

    truth = np.zeros((8, 8))
    truth[2:5, 2:5] = 1
    long = "my_method_" + "z" * 100
    rng = np.random.default_rng(0)
    comp = {"truth": truth.tolist(), "image": rng.random((8, 8, 3)).tolist(), "effect": 0.1,
            "maps": {"saliency": rng.random((8, 8)).tolist(), long: rng.random((8, 8)).tolist()}}
    texts = assert_laid_out(draw_figure({"composites": [comp, comp], "maps": ["saliency", long]}))
    assert "saliency" in texts and any(t.startswith("my_method_") and "\u2026" in t for t in texts)
