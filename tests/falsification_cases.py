"""Fixed cases of ``falsification_test`` on the tiny model, and their recorded results.

``tests/data/falsification_golden.json`` holds what ``falsification_test`` returned for
:func:`cases` before the test was split into public stages (issue 20); the staged test must give
the same numbers. Regenerate (only on purpose, when a result is meant to change) with

    PYTHONPATH=src:. python -m tests.falsification_cases tests/data/falsification_golden.json
"""
from __future__ import annotations

import hashlib
import json
import sys

import torch

from falsify.falsification import FalsificationConfig, falsification_test
from falsify.models.base import FaceEmbedder

from .conftest import TinyNet

THRESHOLDS = dict(tau_high=0.05, tau_low=0.03, epsilon=0.01)
N = 5
SIZE = 32


def _images(n: int = N, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, SIZE // 4, SIZE // 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1)


def _maps(n: int = N, seed: int = 1) -> torch.Tensor:
    maps = torch.rand(n, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    if n > 2:
        maps[2] = 0.5  # a constant map: untestable
    return maps


def _refs(model, seed: int = 2) -> torch.Tensor:
    with torch.inference_mode():
        return model(_images(N, seed)).float()


def _prior() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    low = torch.rand(1, 1, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0]


OPT = dict(K=2, opt_steps=4, opt_patience=2)

#: name -> (config changes, call options)
CASES: dict[str, tuple[dict, dict]] = {
    "blur": ({}, {}),
    "mean": (dict(fill="mean"), {}),
    "zero-pixel": (dict(fill="zero", granularity="pixel", q=0.3), {}),
    "blur-superpixel": (dict(granularity="superpixel", n_segments=20), {}),
    "mean-threshold": (dict(fill="mean", region="threshold", theta_high=0.7, theta_low=0.3), {}),
    "noise": (dict(fill="noise", K=3), {}),
    "noise-batch5": (dict(fill="noise", K=3, batch_size=5), {"pair_ids": [7, 3, 11, 0, 42]}),
    "optimised": (dict(fill="optimised", **OPT), {}),
    "optimised-batch3": (dict(fill="optimised", batch_size=3, **OPT), {"pair_ids": [4, 5, 6, 7, 8]}),
    "blur-pair": (dict(target="pair"), {"refs": True}),
    "noise-pair": (dict(fill="noise", K=2, target="pair"), {"refs": True}),
    "mean-prior": (dict(fill="mean", q=0.1, criterion="beyond-prior", delta=0.0), {"prior": True}),
    "blur-prior-pair": (dict(criterion="beyond-prior", delta=0.001, target="pair"), {"prior": True, "refs": True}),
    "noise-prior": (dict(fill="noise", K=2, criterion="beyond-prior", delta=0.0), {"prior": True, "refs": True}),
    "optimised-prior": (dict(fill="optimised", criterion="beyond-prior", delta=0.0, **OPT), {"prior": True}),
    "mean-examples": (dict(fill="mean", seed=5), {"keep_examples": True, "refs": True}),
    "noise-examples": (dict(fill="noise", K=2, seed=9), {"keep_examples": True}),
    "optimised-examples": (dict(fill="optimised", **OPT), {"keep_examples": True}),
}


def model() -> FaceEmbedder:
    return FaceEmbedder(TinyNet(), input_size=(SIZE, SIZE), mean=0.5, std=0.25, name="tiny")


def _digest(t: torch.Tensor | None) -> str | None:
    if t is None:
        return None
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def run_case(name: str, m=None) -> list[dict]:
    """The results of case ``name`` as JSON-ready dicts (masks and examples as sums and digests)."""
    m = m or model()
    changes, opts = CASES[name]
    config = FalsificationConfig.preset("plain", **{**THRESHOLDS, **changes})  # blur, q 0.2, absolute
    out = falsification_test(
        m, _images(), _refs(m) if opts.get("refs") else None, _maps(), config,
        pair_ids=opts.get("pair_ids"), keep_examples=bool(opts.get("keep_examples")),
        prior=_prior() if opts.get("prior") else None,
    )
    rows = []
    for r in out:
        d = r.to_dict()
        for key in ("high_mask", "low_mask", "example_high", "example_low"):
            t = getattr(r, key)
            d[key] = None if t is None else {"sum": float(t.double().sum()), "sha": _digest(t)}
        rows.append(d)
    return rows


def run_all() -> dict[str, list[dict] | str]:
    m = model()
    out: dict[str, list[dict] | str] = {}
    for name in CASES:
        try:
            out[name] = run_case(name, m)
        except ValueError as e:
            out[name] = f"ValueError: {e}"
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    with open(sys.argv[1], "w") as fh:
        json.dump(run_all(), fh, indent=1, sort_keys=True)
        fh.write("\n")
