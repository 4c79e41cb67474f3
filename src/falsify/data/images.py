"""Image loading: any JPEG/PNG (gray, RGB, RGBA, palette, 16-bit) to the model's input tensor."""
from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


class ImageLoadError(ValueError):
    """An image file is missing, not an image, truncated/corrupt, or over Pillow's pixel limit."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    # Alpha is dropped (as dlib's reference pipeline does: Pillow .convert("RGB")).
    return img.convert("RGB")


#: ``align(rgb, key, name) -> (H, W, 3) uint8``: a model's face aligner (``model.aligner``,
#: see falsify.models.alignment); ``key`` is the sha256 of the file's bytes, ``name`` its path.
Aligner = Callable[[np.ndarray, str, str], np.ndarray]


def load_image(path: str | Path, size: tuple[int, int] | None = None, align: Aligner | None = None) -> torch.Tensor:
    """Read one image as a float32 tensor (3, H, W), RGB in [0, 1].

    ``size=(H, W)`` resizes with Pillow's bilinear filter (the pipeline dlib's reference
    descriptors were made with); ``None`` keeps the image's own size. ``align`` (a model's
    ``aligner``) maps the face onto the model's template instead, at ``size``; the model's own
    loader passes it, so ``load_image(path, model.input_size, model.aligner)`` is what the model
    expects either way.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageLoadError(f"image not found: {path}") from None
    except OSError as exc:
        raise ImageLoadError(f"cannot read image {path}: {exc}") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = _to_rgb(img)
    except FileNotFoundError:
        raise ImageLoadError(f"image not found: {path}") from None
    except Image.DecompressionBombError as exc:  # not an OSError
        raise ImageLoadError(
            f"cannot read image {path}: it exceeds Pillow's pixel limit ({exc}); downscale it, "
            f"or raise PIL.Image.MAX_IMAGE_PIXELS (now {Image.MAX_IMAGE_PIXELS}) if you trust the file"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"cannot read image {path}: {exc}") from None
    if align is not None:
        out = align(np.asarray(rgb), hashlib.sha256(data).hexdigest(), str(path))
        if size is not None and tuple(out.shape[:2]) != tuple(size):
            raise ValueError(f"the aligner makes {out.shape[0]}x{out.shape[1]} crops, not {size[0]}x{size[1]}")
        arr = np.asarray(out, dtype=np.float32) / 255.0
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())
    if size is not None:
        h, w = size
        if rgb.size != (w, h):
            rgb = rgb.resize((int(w), int(h)), Image.BILINEAR)
    arr = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def load_images(
    paths: Sequence[str | Path],
    size: tuple[int, int],
    workers: int | None = None,
    errors: str = "raise",
    align: Aligner | None = None,
) -> tuple[torch.Tensor, list[tuple[Path, str]]]:
    """Load many images (threads; Pillow decodes without the GIL) into one (N, 3, H, W) batch.

    ``errors="raise"`` raises the first ``ImageLoadError``; ``errors="skip"`` leaves the bad
    images out and returns them as ``[(path, reason), ...]`` beside the batch of the good ones,
    in input order. ``align``: as in :func:`load_image`.
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    paths = [Path(p) for p in paths]

    def one(p: Path):
        try:
            return load_image(p, size, align), None
        except ImageLoadError as exc:
            if errors == "raise":
                raise
            return None, str(exc)

    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    if len(paths) <= 2:
        results = [one(p) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, paths))
    good = [t for t, _ in results if t is not None]
    bad = [(p, reason) for p, (t, reason) in zip(paths, results) if t is None]
    h, w = size
    batch = torch.stack(good) if good else torch.empty(0, 3, h, w)
    return batch, bad


def iter_chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
