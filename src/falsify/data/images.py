"""Image decoding and loading: photos as cameras and phones save them (JPEG/PNG/..., gray, RGB,
RGBA, palette, 16-bit, any size, EXIF orientation) to RGB pixels and to the model's input tensor.

:func:`decode_image` is the one decoder: the loaders, the alignment survey and Experiment 6.3's
landmarks all read images through it, so a photo is the same pixels wherever it is read.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


class ImageLoadError(ValueError):
    """An image file is missing, not an image, truncated/corrupt, or over Pillow's pixel limit;
    the message names the file."""


#: EXIF orientation -> the transposition that shows the photo upright (ImageOps.exif_transpose's table)
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112
#: 16-bit gray to 8 bits, value by value exactly as the float64 formula before (v / 65535 * 255, truncated)
_LUT16 = np.clip(np.arange(65536, dtype=np.float64) / 65535.0 * 255.0, 0, 255).astype(np.uint8)
_CHUNK = 1 << 20  # pixels converted at a time from 32-bit modes: no float64 copy of a whole photo


def _scaled_uint8(arr: np.ndarray, top: float, factor: float) -> np.ndarray:
    """``clip(arr / top * factor, 0, 255)`` as uint8, in float64 as before, a block of rows at a time."""
    out = np.empty(arr.shape, np.uint8)
    step = max(1, _CHUNK // max(1, arr.shape[1]))
    for r in range(0, arr.shape[0], step):
        block = arr[r : r + step].astype(np.float64)
        block /= top
        block *= factor
        out[r : r + step] = np.clip(block, 0, 255)
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; an RGB image is returned as it is (no copy)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        img = Image.fromarray(_LUT16[np.asarray(img)])
    elif img.mode == "I":
        arr = np.asarray(img)
        img = Image.fromarray(_scaled_uint8(arr, max(float(arr.max()), 1.0), 255.0))
    elif img.mode == "F":
        arr = np.asarray(img)
        img = Image.fromarray(_scaled_uint8(arr, 1.0, 255.0 if arr.max() <= 1.0 else 1.0))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "RGB":
        return img
    # Alpha is dropped (as dlib's reference pipeline does: Pillow .convert("RGB")).
    return img.convert("RGB")


def _name(path: Path) -> str:
    """How errors name a file: its path, and where a link points (a link named .jpg to /etc/passwd)."""
    if path.is_symlink():
        try:
            return f"{path} (a link to {path.resolve()})"
        except OSError:
            return str(path)
    return str(path)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageLoadError(f"image not found: {_name(path)}") from None
    except OSError as exc:
        raise ImageLoadError(f"cannot read image {_name(path)}: {exc.strerror or exc}") from None


def _reason(exc: BaseException) -> str:
    """Pillow's message without the in-memory file object it names (``<_io.BytesIO object at 0x...>``)."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image format Pillow can read (JPEG, PNG, TIFF, BMP, GIF, WebP, ...)"
    text = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the file", str(exc)) or type(exc).__name__
    return text if isinstance(exc, (OSError, SyntaxError, ValueError)) else f"{type(exc).__name__}: {text}"


@contextmanager
def _opened(data: bytes, path: Path) -> Iterator[Image.Image]:
    """The image in ``data`` opened (header read, pixels not yet decoded); any error while it is
    open, decoding included, is an :class:`ImageLoadError` that names ``path``."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            yield img
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:  # not an OSError
        raise ImageLoadError(
            f"cannot read image {_name(path)}: it exceeds Pillow's pixel limit ({exc}); downscale it, "
            f"or raise PIL.Image.MAX_IMAGE_PIXELS (now {Image.MAX_IMAGE_PIXELS}) if you trust the file"
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt file can make a Pillow plugin raise anything
        raise ImageLoadError(f"cannot read image {_name(path)}: {_reason(exc)}") from None


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - unreadable EXIF: the pixels as stored
        return 1
    return value if value in _EXIF_TRANSPOSE else 1


def _key(data: bytes, orientation: int) -> str:
    sha = hashlib.sha256(data).hexdigest()
    return sha if orientation == 1 else f"{sha}:exif{orientation}"


def _rgb_array(img: Image.Image) -> tuple[np.ndarray, int]:
    """The opened ``img`` decoded to an RGB array, upright; and its EXIF orientation."""
    img.load()
    orientation = _orientation(img)
    rgb = _to_rgb(img)
    if rgb is not img:
        img.close()  # frees the decoded original now
    if orientation != 1:
        turned = rgb.transpose(_EXIF_TRANSPOSE[orientation])
        rgb.close()
        rgb = turned
    arr = np.asarray(rgb)
    rgb.close()
    return arr, orientation


@contextmanager
def _decoding(path: Path, large_slot: bool = False) -> Iterator[tuple[np.ndarray, str]]:
    """:func:`decode_image`, as a context; with ``large_slot`` a photo of more than
    :data:`LARGE_PIXELS` pixels waits for one of the two slots for large photos and keeps it until
    the context ends (the loaders align inside it)."""
    data = _read(path)
    with ExitStack() as slot:
        with _opened(data, path) as img:
            if large_slot and img.size[0] * img.size[1] > LARGE_PIXELS:
                slot.enter_context(_large_slots)
            arr, orientation = _rgb_array(img)
        yield arr, _key(data, orientation)


def decode_image(path: str | Path) -> tuple[np.ndarray, str]:
    """The one image decoder: ``path`` as an (H, W, 3) uint8 RGB array (read-only: it shares
    Pillow's buffer, so a camera-sized photo is not held twice), and its landmark-cache key.

    - Any mode Pillow reads: gray, RGB, CMYK, palette (with transparency), alpha (dropped, as
      Pillow's ``convert("RGB")`` and dlib's reference pipeline drop it), 16-bit gray (scaled
      v / 65535 * 255), 32-bit integer (scaled by its maximum) and float (x 255 when <= 1).
      Multi-frame files (GIF, TIFF, MPO) give their first frame.
    - EXIF orientation is applied, as Pillow's ``ImageOps.exif_transpose`` does (a phone's
      portrait photo, stored sideways with orientation 6, comes out upright: YuNet finds no
      face lying on its side).
    - Any size: the full-resolution pixels, with no float copy of the whole photo; Pillow's
      decompression-bomb guard stays as it is (more than ``2 * PIL.Image.MAX_IMAGE_PIXELS``
      pixels is an error, more than ``MAX_IMAGE_PIXELS`` a warning).
    - The key is the sha256 of the file's bytes (hex), as falsify has always keyed its landmark
      cache, so landmarks cached before stay valid; a photo with an EXIF orientation gets
      ``":exif<N>"`` appended, since earlier versions read it unrotated and cached landmarks
      in that frame.

    Every error is an :class:`ImageLoadError` whose message names ``path``.
    """
    with _decoding(Path(path)) as (arr, key):
        return arr, key


def image_key(path: str | Path) -> tuple[str, tuple[int, int]]:
    """:func:`decode_image`'s key for ``path`` and the (H, W) it decodes to, from the file's bytes
    and header, without decoding the pixels. (A PNG's EXIF is read only where it comes before the
    pixels, where Pillow writes it: one after them would need a decode; there the key can differ
    from decode_image's, which costs a decode, not a wrong answer.) Errors as in
    :func:`decode_image`."""
    path = Path(path)
    data = _read(path)
    with _opened(data, path) as img:
        orientation = 1 if img.format == "PNG" and "exif" not in img.info else _orientation(img)
        w, h = img.size
    if orientation in (5, 6, 7, 8):  # a quarter turn: width and height swap
        w, h = h, w
    return _key(data, orientation), (h, w)


#: ``align(rgb, key, name) -> (H, W, 3) uint8``: a model's face aligner (``model.aligner``,
#: see falsify.models.alignment); ``key`` is :func:`decode_image`'s key, ``name`` the path.
Aligner = Callable[[np.ndarray, str, str], np.ndarray]

#: Photos of more pixels than this are decoded and aligned at most two at a time by the loaders'
#: threads, so that a folder of camera photos does not hold one full-size copy per thread.
LARGE_PIXELS = 16_000_000
_large_slots = threading.BoundedSemaphore(2)


def load_image(path: str | Path, size: tuple[int, int] | None = None, align: Aligner | None = None) -> torch.Tensor:
    """Read one image as a float32 tensor (3, H, W), RGB in [0, 1] (decoded by :func:`decode_image`).

    ``size=(H, W)`` resizes with Pillow's bilinear filter (the pipeline dlib's reference
    descriptors were made with); ``None`` keeps the image's own size. ``align`` (a model's
    ``aligner``) maps the face onto the model's template instead, at ``size``; the model's own
    loader passes it, so ``load_image(path, model.input_size, model.aligner)`` is what the model
    expects either way.
    """
    path = Path(path)
    with _decoding(path, large_slot=True) as (rgb, key):
        if align is not None:
            try:
                out = align(rgb, key, str(path))
            except (ValueError, ArithmeticError) as exc:  # e.g. degenerate landmarks
                raise ImageLoadError(f"cannot align image {_name(path)}: {exc}") from None
            if size is not None and tuple(out.shape[:2]) != tuple(size):
                raise ValueError(f"the aligner makes {out.shape[0]}x{out.shape[1]} crops, not {size[0]}x{size[1]}")
            arr = np.asarray(out, dtype=np.float32) / 255.0
            return torch.from_numpy(arr.transpose(2, 0, 1).copy())
        if size is not None:
            h, w = size
            if rgb.shape[:2] != (h, w):
                rgb = np.asarray(Image.fromarray(rgb).resize((int(w), int(h)), Image.BILINEAR))
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
