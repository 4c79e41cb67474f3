"""The LFW protocol, the embedding pass, and `falsify verify` on good and bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from falsify.cli import main
from falsify.geometry import geodesic_distance
from falsify.verification import accuracy_at, best_threshold, embed_paths
from tests.conftest import TinyNet


def test_best_threshold_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 60))
        scores = np.round(rng.normal(size=n), 1)  # ties on purpose
        labels = rng.random(n) < 0.5
        th = best_threshold(scores, labels)
        brute = max(accuracy_at(scores, labels, t) for t in np.concatenate([scores, [np.inf]]))
        assert accuracy_at(scores, labels, th) == pytest.approx(brute)


def test_geodesic_distance_is_stable():
    u = torch.nn.functional.normalize(torch.randn(4, 8, dtype=torch.float64), dim=1)
    v = torch.nn.functional.normalize(torch.randn(4, 8, dtype=torch.float64), dim=1)
    ref = torch.arccos((u * v).sum(1))
    torch.testing.assert_close(geodesic_distance(u, v), ref)
    assert float(geodesic_distance(u, u).max()) == 0.0
    torch.testing.assert_close(geodesic_distance(u, -u), torch.full((4,), torch.pi, dtype=torch.float64))
    # tiny angle, float32: arccos of a dot product rounds to 0, the atan2 form does not
    a = torch.tensor([1.0, 0.0]); b = torch.tensor([np.cos(1e-4), np.sin(1e-4)], dtype=torch.float32)
    assert float(geodesic_distance(a, b)) == pytest.approx(1e-4, rel=1e-3)


def test_embed_paths_once_per_image(tmp_path, tiny_model):
    from PIL import Image

    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(p)
        paths.append(p)
    calls = []
    tiny_model.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    emb, failed = embed_paths(tiny_model, paths + paths[:2], batch_size=2, progress=False)
    assert sorted(calls) == [1, 2, 2] and not failed and len(emb) == 5


@pytest.fixture
def pt_model(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(TinyNet(), path)
    return str(path)


def test_cli_verify_json(lfw_sample, pt_model, capsys):
    rc = main(["verify", "--data", str(lfw_sample), "--model", pt_model, "--trust-pickle", "--input-size", "32", "32",
               "--n-pairs", "20", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_pairs"] == 20 and out["n_folds"] >= 2 and 0 <= out["accuracy_mean"] <= 1
    assert out["n_skipped"] > 0


@pytest.mark.parametrize(
    "argv, match",
    [
        (["verify", "--data", "/nonexistent/dir"], "does not exist"),
        (["verify", "--model", "nonsense-model", "--data", "{lfw}"], "unknown model"),
        (["verify", "--model", "/tmp/none.onnx", "--data", "{lfw}"], "model file not found"),
        (["verify", "--data", "{lfw}", "--pairs", "{bad_pairs}"], "header must be"),
    ],
)
def test_cli_errors_are_one_clear_line(argv, match, lfw_sample, tmp_path, capsys):
    bad = tmp_path / "pairs.txt"
    bad.write_text("this is not\na pairs file\n")
    argv = [a.format(lfw=lfw_sample, bad_pairs=bad) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and err.startswith("falsify verify: error:") and "\n" not in err
