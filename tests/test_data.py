"""Pair sources and image loading, including every kind of bad input a user may have."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from falsify.data import (
    DataError,
    ImageLoadError,
    load_image,
    load_images,
    load_pairs,
    read_lfw_pairs,
)


def _img(path: Path, mode: str = "L", size=(40, 30), value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        im = Image.new("RGB", size, (value, 10, 200)).convert("P")
    else:
        im = Image.new(mode, size, value if mode in ("L",) else (value,) * len(mode))
    im.save(path)
    return path


@pytest.fixture
def lfw_dir(tmp_path) -> Path:
    for name, n in (("Ann_A", 3), ("Bob_B", 2), ("Cid_C", 1)):
        for i in range(1, n + 1):
            _img(tmp_path / name / f"{name}_{i:04d}.jpg", "L", value=40 * i)
    (tmp_path / "pairs.txt").write_text(
        "2\t2\n"
        "Ann_A\t1\t2\n"
        "Bob_B\t1\t2\n"
        "Ann_A\t1\tBob_B\t1\n"
        "Ann_A\t2\tCid_C\t1\n"
        "Ann_A\t2\t3\n"
        "Bob_B\t1\t9\n"  # missing image: skipped and reported
        "Bob_B\t2\tCid_C\t1\n"
        "Cid_C\t1\tAnn_A\t3\n"
    )
    return tmp_path


def test_lfw_pairs_folds_labels_and_skips(lfw_dir):
    ps = load_pairs(lfw_dir)
    assert len(ps) == 7 and ps.n_folds == 2
    assert [p.same for p in ps] == [True, True, False, False, True, False, False]
    assert [p.fold for p in ps] == [0, 0, 0, 0, 1, 1, 1]
    assert ps[0].a == lfw_dir / "Ann_A" / "Ann_A_0001.jpg"
    assert len(ps.skipped) == 1 and ps.skipped[0].where == "pairs.txt:7"
    assert "Bob_B_0009.jpg" in ps.skipped[0].reason
    assert "skipped 1 pairs" in ps.summary()


def test_real_lfw_sample_skips_missing(lfw_sample):
    ps = load_pairs(lfw_sample)
    assert ps.n_folds == 3
    assert len(ps) + len(ps.skipped) == 1800
    assert len(ps.skipped) > 0 and all("missing" in s.reason for s in ps.skipped)
    assert all(p.a.is_file() and p.b.is_file() for p in ps)


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty pairs file"),
        ("a b c\n", "header must be"),
        ("1\t1\nAnn_A\t1\t2\n", "header says 1 folds x 2 pairs = 2 lines, but the file has 1"),
        ("1\t1\nAnn_A\t1\nAnn_A\t1\tBob_B\t1\n", r"pairs.txt:2: expected 'Name i j'"),
        ("1\t1\nAnn_A\tx\t2\nAnn_A\t1\tBob_B\t1\n", r"pairs.txt:2: image number must be a whole number"),
        ("1\t1\nAnn_A\t1\tBob_B\t1\nAnn_A\t1\t2\n", r"pairs.txt:2: a impostor pair where"),
    ],
)
def test_malformed_pairs_name_the_line(lfw_dir, text, match):
    (lfw_dir / "pairs.txt").write_text(text)
    with pytest.raises(DataError, match=match):
        load_pairs(lfw_dir)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_pairs(tmp_path / "nowhere")
    with pytest.raises(DataError, match="does not exist"):
        load_pairs(tmp_path, tmp_path / "pairs.txt")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="is a file"):
        load_pairs(tmp_path / "x.txt")
    with pytest.raises(DataError, match="at least two identity folders"):
        load_pairs(tmp_path)


def test_identity_folders_balanced_and_seeded(tmp_path):
    for k in range(6):
        for i in range(1, 4):
            _img(tmp_path / f"P{k}" / f"P{k}_{i:04d}.png", "RGB", value=20 * k + i)
    a = load_pairs(tmp_path, n_pairs=20, seed=3)
    b = load_pairs(tmp_path, n_pairs=20, seed=3)
    c = load_pairs(tmp_path, n_pairs=20, seed=4)
    assert [(p.a, p.b) for p in a] == [(p.a, p.b) for p in b]
    assert [(p.a, p.b) for p in a] != [(p.a, p.b) for p in c]
    assert a.n_genuine == 10 and a.n_impostor == 10
    assert all((p.a.parent == p.b.parent) == p.same and p.a != p.b for p in a)
    assert len({(p.a, p.b) for p in a}) == 20


def test_csv_pairs(tmp_path, lfw_dir):
    csv = tmp_path / "pairs.csv"
    csv.write_text(
        "a,b,same\n"
        "Ann_A/Ann_A_0001.jpg,Ann_A/Ann_A_0002.jpg,1\n"
        "Ann_A/Ann_A_0001.jpg,Bob_B/Bob_B_0001.jpg,false\n"
        "Ann_A/Ann_A_0001.jpg,nope.jpg,0\n"
    )
    ps = load_pairs(csv)
    assert [p.same for p in ps] == [True, False] and len(ps.skipped) == 1
    assert ps.skipped[0].where == "pairs.csv:4"
    csv.write_text("Ann_A/Ann_A_0001.jpg,Ann_A/Ann_A_0002.jpg,maybe\n")
    with pytest.raises(DataError, match=r"pairs.csv:1: 'same' must be"):
        load_pairs(csv)


def test_sample_is_balanced_and_seeded(lfw_sample):
    ps = load_pairs(lfw_sample)
    s1, s2 = ps.sample(40, seed=7), ps.sample(40, seed=7)
    assert len(s1) == 40 and s1.n_genuine == 20
    assert [p.id for p in s1] == [p.id for p in s2]
    assert [p.id for p in s1] != [p.id for p in ps.sample(40, seed=8)]


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
def test_load_image_any_mode(tmp_path, mode):
    if mode == "I;16":
        path = tmp_path / "x.png"
        Image.fromarray(np.full((30, 40), 65535 // 2, dtype=np.uint16)).save(path)
    else:
        path = _img(tmp_path / f"x.png", mode, value=200)
    x = load_image(path, size=(20, 25))
    assert x.shape == (3, 20, 25) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    assert float(x.max()) > 0.3


def test_corrupt_and_truncated_images(tmp_path):
    good = _img(tmp_path / "good.jpg", "RGB", size=(64, 64))
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg at all")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageLoadError, match="cannot read image"):
        load_image(junk)
    with pytest.raises(ImageLoadError, match="cannot read image"):
        load_image(trunc)
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "none.jpg")
    batch, bad = load_images([good, junk, good, trunc], (16, 16), errors="skip")
    assert batch.shape == (2, 3, 16, 16)
    assert [p for p, _ in bad] == [junk, trunc]


def test_corrupt_image_pair_is_skipped_in_verify(lfw_dir, tiny_model):
    from falsify.verification import verify

    (lfw_dir / "Bob_B" / "Bob_B_0002.jpg").write_bytes(b"\xff\xd8garbage")
    res = verify(tiny_model, read_lfw_pairs(lfw_dir / "pairs.txt", lfw_dir), progress=False)
    # the missing-image pair and the two pairs using the corrupt image are skipped
    assert res.n_skipped == 3 and res.n_pairs == 5
