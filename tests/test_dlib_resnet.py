"""The PyTorch port of dlib's face recognition ResNet against dlib's own descriptors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from falsify.models import dlib_resnet
from falsify.models.dlib_resnet import DlibResNet, default_dat_path, load_dlib_resnet, read_dlib_dat

SHARED_DATA = Path(
    os.environ.get("FALSIFY_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
REFERENCE = SHARED_DATA / "dlib-reference" / "descriptors.json"
IMAGES = SHARED_DATA / "lfw-sample"


@pytest.fixture(scope="module")
def dat_path() -> Path:
    try:
        return default_dat_path()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def model(dat_path: Path, tmp_path_factory: pytest.TempPathFactory):
    return load_dlib_resnet(dat_path, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def reference() -> tuple[torch.Tensor, torch.Tensor]:
    """dlib's raw descriptors and the images they were computed from, prepared the same way."""
    if not REFERENCE.is_file():
        pytest.skip(f"dlib's reference descriptors not found at {REFERENCE} (FALSIFY_SHARED_DATA)")
    items = json.loads(REFERENCE.read_text())["items"]
    images = []
    for item in items:
        image = Image.open(IMAGES / item["image"]).convert("RGB").resize((150, 150), Image.BILINEAR)
        images.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1))
    return torch.stack(images), torch.tensor([item["descriptor"] for item in items])


def test_matches_dlib(model, reference) -> None:
    images, descriptors = reference
    with torch.inference_mode():
        raw = model.embed_raw(images)
        embeddings = model(images)
    expected = F.normalize(descriptors, dim=1)
    diff = (embeddings - expected).abs().max().item()
    raw_diff = (raw - descriptors).abs().max().item()
    print(f"max |diff| over {len(images)} descriptors: {diff:.2e} (unit), {raw_diff:.2e} (raw)")
    torch.testing.assert_close(embeddings, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(raw, descriptors, atol=1e-4, rtol=0)


def test_batch_equals_single_calls(model, reference) -> None:
    images = reference[0][:4]
    with torch.inference_mode():
        batch = model(images)
        singles = torch.cat([model(image[None]) for image in images])
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=0)


def test_module_names() -> None:
    names = dict(DlibResNet().named_modules())
    for name in ("conv1", "affine1", "layer1.0.conv1", "layer2.0.skip", "layer5.0.affine2", "fc"):
        assert name in names
    assert len([m for m in names.values() if isinstance(m, torch.nn.Conv2d)]) == 29


def test_cache_is_reused(dat_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FALSIFY_CACHE", str(tmp_path))
    first = load_dlib_resnet(dat_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1

    def fail(path: Path) -> dict[str, torch.Tensor]:
        raise AssertionError("the .dat file was converted again despite a valid cache")

    monkeypatch.setattr(dlib_resnet, "read_dlib_dat", fail)
    second = load_dlib_resnet(dat_path)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key


@pytest.mark.parametrize("damage", ["garbage", "flipped byte"])
def test_corrupt_cache_is_rebuilt(
    damage: str, dat_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = load_dlib_resnet(dat_path, cache_dir=tmp_path).state_dict()
    (cache,) = tmp_path.glob("*.safetensors")
    if damage == "garbage":
        cache.write_bytes(b"not a safetensors file")
    else:
        data = bytearray(cache.read_bytes())
        data[-1000] ^= 0x40  # inside a tensor's data: only the checksum can tell
        cache.write_bytes(bytes(data))

    calls: list[Path] = []

    def counting_read(path: Path) -> dict[str, torch.Tensor]:
        calls.append(path)
        return read_dlib_dat(path)

    monkeypatch.setattr(dlib_resnet, "read_dlib_dat", counting_read)
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = load_dlib_resnet(dat_path, cache_dir=tmp_path).state_dict()
    assert len(calls) == 1
    for key, value in expected.items():
        assert torch.equal(value, rebuilt[key]), key
    load_dlib_resnet(dat_path, cache_dir=tmp_path)  # the rewritten cache is valid: no reconversion
    assert len(calls) == 1


def test_rejects_files_that_are_not_dlib_networks(dat_path: Path, tmp_path: Path) -> None:
    random_bytes = tmp_path / "random.dat"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(10_000))
    with pytest.raises(ValueError, match=r"not a dlib face recognition network.*byte offset \d+"):
        read_dlib_dat(random_bytes)

    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(dat_path.read_bytes()[:1_000_000])
    with pytest.raises(ValueError, match=r"byte offset \d+ expected .*end of the file.*truncated"):
        read_dlib_dat(truncated)

    empty = tmp_path / "empty.dat"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="byte offset 0 .*end of the file"):
        read_dlib_dat(empty)

    # Another dlib file from the same package, but not this network.
    with pytest.raises(ValueError, match="not a dlib face recognition network"):
        read_dlib_dat(dat_path.with_name("shape_predictor_5_face_landmarks.dat"))
