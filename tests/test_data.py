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
    identity_folder_pairs,
    load_image,
    load_images,
    load_pairs,
    read_csv_pairs,
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



def test_every_image_error_names_the_file(tmp_path):
    """Pillow reads from memory, so its own messages name ``<_io.BytesIO object at 0x...>``;
    ours name the path (and where a link points)."""
    from falsify.data.images import decode_image, image_key

    notes = tmp_path / "notes.txt"
    notes.write_text("root:x:0:0:root:/root:/bin/bash\n")
    link = tmp_path / "holiday.jpg"
    link.symlink_to(notes)
    good = _img(tmp_path / "good.jpg", "RGB", size=(64, 64))
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(good.read_bytes()[:300])
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    cases = [(link, r"holiday\.jpg \(a link to .*notes\.txt\): not an image format Pillow can read"),
             (trunc, r"cannot read image .*trunc\.jpg: "), (folder, r"cannot read image .*folder\.jpg"),
             (tmp_path / "gone.png", r"image not found: .*gone\.png")]
    for path, message in cases:
        for read in (load_image, decode_image, image_key):
            with pytest.raises(ImageLoadError, match=message) as err:
                read(path)
            assert "BytesIO" not in str(err.value), (read, str(err.value))
    _, bad = load_images([good, link, trunc], (8, 8), errors="skip")
    assert [p for p, _ in bad] == [link, trunc] and all(str(p) in why for p, why in bad)


def test_decode_image_is_the_loaders_decoder(tmp_path):
    from falsify.data import decode_image

    path = _img(tmp_path / "x.png", "P", size=(40, 30), value=90)
    rgb, key = decode_image(path)
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    import hashlib

    assert key == hashlib.sha256(path.read_bytes()).hexdigest()  # the landmark cache's key, as always
    x = load_image(path)
    assert torch.equal(x, torch.from_numpy(rgb.astype(np.float32).transpose(2, 0, 1) / 255.0))


def test_high_bit_depth_modes_as_before(monkeypatch):
    """16- and 32-bit pixels to 8 bits as the float64 formulas before gave them, value for value,
    now without a float64 copy of the whole photo (a block of rows at a time)."""
    from falsify.data import images

    monkeypatch.setattr(images, "_CHUNK", 7)  # many blocks
    rng = np.random.default_rng(0)
    a16 = rng.integers(0, 65536, (23, 17)).astype(np.uint16)
    a16[0, :3] = [0, 257, 65535]
    out = np.asarray(images._to_rgb(Image.fromarray(a16)))[:, :, 0]
    np.testing.assert_array_equal(out, np.clip(a16.astype(np.float64) / 65535.0 * 255.0, 0, 255).astype(np.uint8))
    a32 = rng.integers(-5, 300_000, (23, 17)).astype(np.int32)
    out = np.asarray(images._to_rgb(Image.fromarray(a32)))[:, :, 0]
    top = max(float(a32.max()), 1.0)
    np.testing.assert_array_equal(out, np.clip(a32.astype(np.float64) / top * 255.0, 0, 255).astype(np.uint8))
    f = rng.random((23, 17)).astype(np.float32)
    out = np.asarray(images._to_rgb(Image.fromarray(f)))[:, :, 0]
    np.testing.assert_array_equal(out, np.clip(f.astype(np.float64) * 255.0, 0, 255).astype(np.uint8))


def test_exif_orientation_is_applied(tmp_path):
    """A phone stores a portrait photo sideways with EXIF orientation 6 ("turn 90 degrees clockwise
    to show"): it is decoded upright, and its key says so (landmarks cached before were found in
    the sideways frame)."""
    from falsify.data.images import decode_image, image_key

    upright = np.zeros((60, 40, 3), np.uint8)
    upright[:20] = (250, 20, 20)  # red on top
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # 40 tall, 60 wide
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    stored.save(path, exif=exif, quality=95)
    rgb, key = decode_image(path)
    assert rgb.shape == (60, 40, 3)
    assert rgb[:15, :, 0].mean() > 200 and rgb[30:, :, 0].mean() < 40
    import hashlib

    assert key == hashlib.sha256(path.read_bytes()).hexdigest() + ":exif6"
    assert image_key(path) == (key, (60, 40))
    assert load_image(path).shape == (3, 60, 40)


def test_large_photos_take_turns(tmp_path, monkeypatch):
    """Photos over LARGE_PIXELS are decoded (and aligned) at most two at a time by load_images'
    threads; a bad one among them gives its slot back."""
    from falsify.data import images

    monkeypatch.setattr(images, "LARGE_PIXELS", 100)
    paths = [_img(tmp_path / f"p{i}.png", "RGB", size=(30, 20), value=20 * i) for i in range(6)]
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(noise)
    bad = tmp_path / "bad.png"
    bad.write_bytes(noise.read_bytes()[:900])  # truncated: fails while decoding, holding a slot
    batch, skipped = load_images(paths + [bad] + paths, (10, 10), workers=4, errors="skip")
    assert batch.shape == (12, 3, 10, 10) and [p for p, _ in skipped] == [bad]
    assert images._large_slots.acquire(blocking=False) and images._large_slots.acquire(blocking=False)
    images._large_slots.release()
    images._large_slots.release()


def test_corrupt_image_pair_is_skipped_in_verify(lfw_dir, tiny_model):
    from falsify.verification import verify

    (lfw_dir / "Bob_B" / "Bob_B_0002.jpg").write_bytes(b"\xff\xd8garbage")
    res = verify(tiny_model, read_lfw_pairs(lfw_dir / "pairs.txt", lfw_dir), progress=False)
    # the missing-image pair and the two pairs using the corrupt image are skipped
    assert res.n_skipped == 3 and res.n_pairs == 5
    # each named by the line that holds it, not by its position ("pair 0")
    assert [e.split(": ")[0] for e in res.skipped_examples] == ["pairs.txt:7", "pairs.txt:3", "pairs.txt:8"]


def test_unreadable_image_in_a_csv_is_reported_as_file_and_line(tmp_path, tiny_model):
    from falsify.verification import verify

    for i in range(3):
        _img(tmp_path / f"{i}.png", "RGB", size=(32, 32), value=30 * i)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    csv = tmp_path / "pairs.csv"
    csv.write_text("a,b,same\n0.png,1.png,1\n0.png,bad.png,0\n1.png,2.png,0\n2.png,0.png,1\n")
    res = verify(tiny_model, read_csv_pairs(csv), progress=False)
    assert res.n_pairs == 3 and res.n_skipped == 1
    assert res.skipped_examples[0].startswith("pairs.csv:3: ") and "bad.png" in res.skipped_examples[0]


# --- names that leave the images folder ----------------------------------------------------------

@pytest.mark.parametrize("name", ["../outside/x", "../../../../tmp/x", "a/b", "a\\b", ".", "..", "a\0b"])
def test_lfw_names_that_are_not_folder_names_are_rejected(tmp_path, name):
    root = tmp_path / "lfw"
    _img(root / "Ann_A" / "Ann_A_0001.jpg")
    for i in (1, 2):  # what '../outside/x 1 2' would read today
        _img(tmp_path / "outside" / f"x_{i:04d}.jpg")
    (root / "pairs.txt").write_text(f"1\t1\n{name}\t1\t2\nAnn_A\t1\tAnn_A\t1\n")
    with pytest.raises(DataError, match=r"pairs\.txt:2: name .* is not a folder name .*LFW names are <Name> folders inside"):
        read_lfw_pairs(root / "pairs.txt", root)


def test_csv_paths_may_point_outside_the_csv_folder(tmp_path):
    a = _img(tmp_path / "imgs" / "P" / "p.jpg")
    b = _img(tmp_path / "imgs" / "Q" / "q.jpg")
    (tmp_path / "lists").mkdir()
    csv = tmp_path / "lists" / "pairs.csv"
    csv.write_text(f"a,b,same\n../imgs/P/p.jpg,{b},0\n")
    ps = read_csv_pairs(csv)
    assert [(p.a.resolve(), p.b) for p in ps] == [(a.resolve(), b)]
    assert ps[0].id == f"{a.resolve().as_posix()}|{b.resolve().as_posix()}"


# --- links that leave the data folder (issue 19): skipped and reported like missing images -------

def _secret(tmp_path: Path) -> Path:
    """A file outside the data folder that a link in it points at (as a link to /etc/passwd would)."""
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    return secret


def test_lfw_link_outside_the_data_folder_is_skipped_and_reported(lfw_dir, tmp_path):
    root = lfw_dir
    secret = _secret(tmp_path.parent / (tmp_path.name + "-outside"))
    link = root / "Bob_B" / "Bob_B_0009.jpg"  # the pair on line 7 names it
    link.symlink_to(secret)
    ps = load_pairs(root)
    assert len(ps) == 7 and len(ps.skipped) == 1
    where, reason = ps.skipped[0].where, ps.skipped[0].reason
    assert where == "pairs.txt:7"
    assert reason == f"link outside the data folder (Bob_B/Bob_B_0009.jpg -> {secret.resolve()})"
    assert "pairs.txt:7: link outside the data folder" in ps.summary()
    assert all(secret.resolve() not in (p.a.resolve(), p.b.resolve()) for p in ps)
    fp = ps.fingerprint()  # the secret is never read, not even to fingerprint the data
    assert len(fp["images"]) == 6 and not any("0009" in k for k in fp["images"])


def test_links_that_stay_inside_the_data_folder_are_fine(lfw_dir, tmp_path):
    # an image linked to another image of the folder, and the folder itself reached through a link
    (lfw_dir / "Bob_B" / "Bob_B_0009.jpg").symlink_to(lfw_dir / "Ann_A" / "Ann_A_0003.jpg")
    ps = load_pairs(lfw_dir)
    assert len(ps) == 8 and not ps.skipped
    alias = tmp_path.parent / (tmp_path.name + "-alias")
    alias.symlink_to(lfw_dir, target_is_directory=True)
    assert len(load_pairs(alias)) == 8


def test_csv_link_outside_the_data_folder_is_skipped_with_its_line(tmp_path):
    root = tmp_path / "data"
    _img(root / "a.jpg"), _img(root / "b.jpg")
    (root / "c.jpg").symlink_to(_secret(tmp_path))
    (root / "pairs.csv").write_text("a,b,same\na.jpg,b.jpg,0\na.jpg,c.jpg,1\nb.jpg,a.jpg,1\n")
    ps = read_csv_pairs(root / "pairs.csv")
    assert len(ps) == 2 and [s.where for s in ps.skipped] == ["pairs.csv:3"]
    assert ps.skipped[0].reason.startswith("link outside the data folder (c.jpg -> ")
    # a path the CSV writes outside its folder is its author's explicit choice, and is read
    (root / "out.csv").write_text(f"a.jpg,{_secret(tmp_path)},1\na.jpg,b.jpg,0\n")
    assert len(read_csv_pairs(root / "out.csv")) == 2


def test_identity_folder_linked_outside_is_skipped(tmp_path):
    root, elsewhere = tmp_path / "ids", tmp_path / "elsewhere"
    for k in range(3):
        for i in range(1, 3):
            _img(root / f"P{k}" / f"P{k}_{i:04d}.png", value=30 * k + i)
            _img(elsewhere / f"Q{k}" / f"Q{k}_{i:04d}.png", value=30 * k + i)
    (root / "Q0").symlink_to(elsewhere / "Q0", target_is_directory=True)
    ps = load_pairs(root, n_pairs=30)
    assert ps.skipped and all("link outside the data folder (Q0/" in s.reason for s in ps.skipped)
    assert not any("Q0" in i for i in ps.ids())
    # a folder made only of such links has no usable pair: one error naming the reason
    only = tmp_path / "only"
    only.mkdir()
    for k in range(3):
        (only / f"Q{k}").symlink_to(elsewhere / f"Q{k}", target_is_directory=True)
    with pytest.raises(DataError, match=r"no usable pairs in .*: \d+ skipped "
                                        r"\(e\.g\. pair 0: link outside the data folder"):
        load_pairs(only)


# --- CSV separators (issue 19) -------------------------------------------------------------------

@pytest.mark.parametrize("sep, name", [(";", "semicolon (;)"), ("\t", "tab"), ("|", "bar (|)")])
def test_csv_with_another_separator_gets_a_hint(tmp_path, sep, name):
    _img(tmp_path / "a.jpg"), _img(tmp_path / "b.jpg")
    csv = tmp_path / "pairs.csv"
    csv.write_text(sep.join(("a", "b", "same")) + "\n" + sep.join(("a.jpg", "b.jpg", "1")) + "\n")
    with pytest.raises(DataError) as exc:
        load_pairs(csv)
    msg = str(exc.value)
    assert msg.startswith("pairs.csv:1: expected columns a,b,same") and "\n" not in msg
    assert f"the file looks {name}-separated, and falsify reads comma-separated rows: re-save it with commas" in msg
    assert f"sep={sep!r}" in msg
    csv.write_text("a,b,same\na.jpg,b.jpg,1\n")  # the fix
    assert len(load_pairs(csv)) == 1


def test_csv_with_too_few_comma_columns_gets_no_separator_hint(tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("a.jpg,b.jpg\nc.jpg,d.jpg\n")
    with pytest.raises(DataError, match=r"pairs.csv:1: expected columns a,b,same, got \['a.jpg', 'b.jpg'\]$"):
        load_pairs(csv)


# --- pair ids ----------------------------------------------------------------------------------

def test_lfw_ids_are_name_folder_and_file(lfw_dir):
    ps = load_pairs(lfw_dir)
    assert ps.ids()[:3] == [
        "Ann_A/Ann_A_0001.jpg|Ann_A/Ann_A_0002.jpg",
        "Bob_B/Bob_B_0001.jpg|Bob_B/Bob_B_0002.jpg",
        "Ann_A/Ann_A_0001.jpg|Bob_B/Bob_B_0001.jpg",
    ]
    assert all(p.root == lfw_dir for p in ps)


def test_csv_ids_are_unique_across_subfolders_and_duplicates_reported(tmp_path):
    for r in ("r1", "r2"):
        _img(tmp_path / r / "P" / "img.jpg")
    _img(tmp_path / "Q" / "ref.jpg")
    csv = tmp_path / "pairs.csv"
    csv.write_text(
        "r1/P/img.jpg,Q/ref.jpg,0\n"
        "r2/P/img.jpg,Q/ref.jpg,0\n"
        "Q/ref.jpg,r1/P/img.jpg,0\n"  # other way round: another probe, another pair
        "./r1/P/img.jpg,Q/../Q/ref.jpg,1\n"  # the first pair again, spelled differently
    )
    ps = load_pairs(csv)
    assert ps.ids() == ["r1/P/img.jpg|Q/ref.jpg", "r2/P/img.jpg|Q/ref.jpg", "Q/ref.jpg|r1/P/img.jpg"]
    assert [(s.where, s.reason) for s in ps.skipped] == [("pairs.csv:4", "duplicate of pairs.csv:1")]
    assert "pairs.csv:4: duplicate of pairs.csv:1" in ps.summary()


def test_lfw_duplicate_line_is_reported(lfw_dir):
    text = (lfw_dir / "pairs.txt").read_text().replace("Bob_B\t1\t2\n", "Ann_A\t1\t2\n", 1)
    (lfw_dir / "pairs.txt").write_text(text)
    ps = load_pairs(lfw_dir)
    assert len(ps) == 6 and len(set(ps.ids())) == 6
    assert ps.skipped[0].where == "pairs.txt:3" and ps.skipped[0].reason == "duplicate of pairs.txt:2"


def test_identity_folder_pairs_have_root_and_unique_ids(tmp_path):
    for k in range(4):
        for i in range(1, 3):
            _img(tmp_path / f"P{k}" / f"P{k}_{i:04d}.png")
    ps = identity_folder_pairs(tmp_path, n_pairs=10)
    assert all(p.root == tmp_path for p in ps) and len(set(ps.ids())) == len(ps)
    assert all(i.count("/") == 2 and i.startswith("P") for i in ps.ids())


# --- n_pairs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, -3, True, False, 2.0, "5"])
def test_bad_n_pairs_is_refused(lfw_dir, n):
    with pytest.raises(DataError, match=r"n_pairs must be a whole number >= 1, got"):
        load_pairs(lfw_dir, n_pairs=n)
    with pytest.raises(DataError, match=r"n_pairs must be a whole number >= 1, got"):
        identity_folder_pairs(lfw_dir, n_pairs=n)


def test_n_pairs_zero_message(lfw_dir):
    with pytest.raises(DataError, match=r"^n_pairs must be a whole number >= 1, got 0$"):
        load_pairs(lfw_dir, n_pairs=0)
    assert len(load_pairs(lfw_dir, n_pairs=2)) == 2


# --- decompression bombs ---------------------------------------------------------------------------

def test_decompression_bomb_is_an_image_load_error(tmp_path, monkeypatch):
    big = _img(tmp_path / "big.png", "RGB", size=(8, 8))
    good = _img(tmp_path / "good.png", "RGB", size=(2, 2))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 64 pixels > 2 x 10: Pillow raises
    with pytest.raises(ImageLoadError, match=r"big\.png.*exceeds Pillow's pixel limit.*MAX_IMAGE_PIXELS"):
        load_image(big)
    batch, bad = load_images([good, big, good], (4, 4), errors="skip")
    assert batch.shape == (2, 3, 4, 4) and [p for p, _ in bad] == [big]


# --- fingerprint --------------------------------------------------------------------------------

def _fp_data(root: Path) -> Path:
    for name, n in (("Ann_A", 2), ("Bob_B", 1)):
        for i in range(1, n + 1):
            path = root / name / f"{name}_{i:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (30 * i, 90, 160)).save(path)
    (root / "pairs.txt").write_text("1\t1\nAnn_A\t1\t2\nAnn_A\t1\tBob_B\t1\n")
    return root


def test_fingerprint_is_stable_across_spellings_and_copies(tmp_path, monkeypatch):
    import shutil

    root = _fp_data(tmp_path / "lfw")
    fp = load_pairs(root).fingerprint()
    assert set(fp) == {"sha256", "pairs_sha256", "images", "n_pairs", "n_images", "basis"}
    assert len(fp["images"]) == 3 and len(fp["pairs_sha256"]) == 64
    assert fp["n_pairs"] == 2 and fp["n_images"] == 3 and len(fp["sha256"]) == 64
    assert load_pairs(root).fingerprint() == fp
    assert load_pairs(str(root) + "/").fingerprint() == fp
    monkeypatch.chdir(tmp_path)
    assert load_pairs("lfw").fingerprint() == fp
    assert load_pairs("./lfw/../lfw", "lfw/pairs.txt").fingerprint() == fp
    shutil.copytree(root, tmp_path / "copy")
    assert load_pairs(tmp_path / "copy").fingerprint() == fp
    # one image reached through two spellings counts once
    (root / "p.csv").write_text("Ann_A/Ann_A_0001.jpg,Ann_A/Ann_A_0002.jpg,1\nBob_B/../Ann_A/Ann_A_0001.jpg,Bob_B/Bob_B_0001.jpg,0\n")
    assert read_csv_pairs(root / "p.csv").fingerprint()["n_images"] == 3


def test_fingerprint_changes_with_bytes_pairs_and_labels(tmp_path):
    root = _fp_data(tmp_path)
    fp = load_pairs(root).fingerprint()["sha256"]
    # one image's bytes
    img = root / "Bob_B" / "Bob_B_0001.jpg"
    original = img.read_bytes()
    img.write_bytes(original + b"\0")
    assert load_pairs(root).fingerprint()["sha256"] != fp
    img.write_bytes(original)
    assert load_pairs(root).fingerprint()["sha256"] == fp
    # a pair removed, a pair added
    ps = load_pairs(root)
    assert ps.sample(1).fingerprint()["sha256"] != fp
    csv = root / "pairs.csv"
    csv.write_text("Ann_A/Ann_A_0001.jpg,Ann_A/Ann_A_0002.jpg,1,0\nAnn_A/Ann_A_0001.jpg,Bob_B/Bob_B_0001.jpg,0,0\n")
    base = read_csv_pairs(csv).fingerprint()
    csv.write_text(csv.read_text() + "Ann_A/Ann_A_0002.jpg,Bob_B/Bob_B_0001.jpg,0,0\n")
    assert read_csv_pairs(csv).fingerprint()["sha256"] != base["sha256"]
    # a label flipped
    csv.write_text("Ann_A/Ann_A_0001.jpg,Ann_A/Ann_A_0002.jpg,0,0\nAnn_A/Ann_A_0001.jpg,Bob_B/Bob_B_0001.jpg,0,0\n")
    assert read_csv_pairs(csv).fingerprint()["sha256"] != base["sha256"]


def test_pairset_data_record_is_the_summary_data_block():
    """``PairSet.data_record``: the ``data`` block every run's summary holds (counts, skipped, and
    with ``examples`` why the first skipped pairs were)."""
    from falsify.data.pairs import Pair, PairSet, SkippedPair

    pairs = [Pair(Path("a/1.jpg"), Path("a/2.jpg"), True), Pair(Path("a/1.jpg"), Path("b/1.jpg"), False, index=1),
             Pair(Path("b/1.jpg"), Path("b/2.jpg"), True, index=2)]
    skipped = [SkippedPair(f"pairs.txt:{i}", "missing x.jpg") for i in range(7)]
    ps = PairSet(pairs, skipped, "src")
    base = {"source": "src", "n_pairs": 3, "n_genuine": 2, "n_impostor": 1, "n_skipped": 7}
    assert ps.data_record() == base
    assert ps.data_record(examples=5) == {**base, "skipped_examples": [f"pairs.txt:{i}: missing x.jpg" for i in range(5)]}
