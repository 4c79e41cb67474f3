"""Shared fixtures: the shared LFW sample, a tiny CNN embedder, and (lazily) the dlib model."""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from falsify.models.base import FaceEmbedder


def _shared_data() -> Path:
    env = os.environ.get("FALSIFY_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


SHARED = _shared_data()
LFW_SAMPLE = SHARED / "lfw-sample"
DLIB_REFERENCE = SHARED / "dlib-reference"


def stored_rows(out: Path) -> int:
    """The rows in ``out/results.sqlite``, read-only, as a run writes them (-1 while the store
    cannot be read yet)."""
    try:
        with sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True, timeout=1) as c:
            return c.execute("SELECT count(*) FROM results").fetchone()[0]
    except sqlite3.Error:
        return -1


def signal_when(proc, ready, sig, timeout: float = 300) -> bool:
    """Send ``sig`` to the running ``proc`` as soon as ``ready()`` holds; False when the process
    ended, or ``timeout`` seconds passed, first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            proc.send_signal(sig)
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def small_csv(tmp_path) -> Path:
    """12 pairs (6 genuine, 6 impostor; two folds) of 6 noise images: data that needs neither the
    shared sample nor a face."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "small"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    rows = [(i, (i + 1) % 6, int(i % 2 == 0), i % 2) for i in range(6)]
    rows += [(i, (i + 2) % 6, int(i % 2), i % 2) for i in range(6)]
    path = folder / "pairs.csv"
    path.write_text("a,b,same,fold\n" + "".join(f"{a}.png,{b}.png,{s},{f}\n" for a, b, s, f in rows))
    return path


@pytest.fixture(scope="session")
def lfw_sample() -> Path:
    if not (LFW_SAMPLE / "pairs.txt").is_file():
        pytest.skip(f"shared LFW sample not found at {LFW_SAMPLE} (set FALSIFY_SHARED_DATA)")
    return LFW_SAMPLE


class TinyNet(nn.Module):
    """A small CNN embedder: conv layers to hook, global pooling, a linear head."""

    def __init__(self, dim: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture
def tiny_model() -> FaceEmbedder:
    return FaceEmbedder(TinyNet(), input_size=(32, 32), mean=0.5, std=0.25, name="tiny")


@pytest.fixture(scope="session")
def dlib_model():
    from falsify.models import load_model

    return load_model("dlib-resnet", device="cpu")
