"""benchmarks/profile_6_1.py's PassCounter, which the pass counts of docs/results.md ("Fewer passes
per pair") rest on: inference images and autograd images are counted apart, by bucket, and
attaching twice does not count twice."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from falsify.attribution import get_explainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from profile_6_1 import PassCounter  # noqa: E402


def test_pass_counter_counts_inference_and_autograd_images(tiny_model):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        refs = tiny_model(x.flip(0)).clone()
    counter = PassCounter()
    counter.attach(tiny_model)
    counter.attach(tiny_model)  # once only
    saliency = get_explainer("saliency", tiny_model)  # built first: a probe forward pass is not the map's
    ig = get_explainer("ig", tiny_model, steps=4, tolerance=None)
    counter.bucket = "saliency"
    saliency(x, refs)
    counter.bucket = "ig"
    ig(x, refs)
    counter.bucket = "embed"
    with torch.inference_mode():
        tiny_model(x)
    with torch.no_grad():
        tiny_model(x[:1])
    assert counter.grad["saliency"] == 2  # one gradient per image
    assert counter.grad["ig"] == 2 * 5  # 4 intervals: 5 points per image
    assert (counter.fwd["embed"], counter.grad["embed"]) == (3, 0)
