"""The default data source: LFW through scikit-learn's downloader and cache.

scikit-learn keeps LFW under ``$SCIKIT_LEARN_DATA/lfw_home`` (default ``~/scikit_learn_data``):
``lfw_funneled/<Name>/<Name>_NNNN.jpg`` and the official ``pairs.txt``. falsify reads that
folder with its own LFW-layout loader, so the default run and ``--data DIR`` behave the same.
"""
from __future__ import annotations

from pathlib import Path

from .errors import DataError

OFFLINE_HINT = (
    "pass your own data with --data DIR (an LFW-layout folder <Name>/<Name>_NNNN.jpg with "
    "pairs.txt, a folder of identity folders, or a CSV a,b,same), or run once with a network "
    "so scikit-learn can cache LFW (set SCIKIT_LEARN_DATA to choose where)"
)


def sklearn_lfw_paths(download_if_missing: bool = True) -> tuple[Path, Path]:
    """Return (image root, pairs.txt) of scikit-learn's LFW cache, downloading it if needed."""
    from sklearn.datasets import get_data_home

    home = Path(get_data_home()) / "lfw_home"
    root, pairs = home / "lfw_funneled", home / "pairs.txt"
    if root.is_dir() and pairs.is_file():
        return root, pairs
    if not download_if_missing:
        raise DataError(f"LFW is not in scikit-learn's cache ({home}); {OFFLINE_HINT}")
    try:
        from sklearn.datasets import _lfw

        lfw_home, folder = _lfw._check_fetch_lfw(funneled=True, download_if_missing=True)
        root, pairs = Path(folder), Path(lfw_home) / "pairs.txt"
    except AttributeError:  # the private helper moved: the public loader downloads the same files
        from sklearn.datasets import fetch_lfw_pairs

        try:
            fetch_lfw_pairs(subset="10_folds", download_if_missing=True)
        except OSError as exc:
            raise DataError(f"could not download LFW with scikit-learn ({exc}); {OFFLINE_HINT}") from None
    except OSError as exc:  # URLError, timeouts, no route: offline
        raise DataError(f"could not download LFW with scikit-learn ({exc}); {OFFLINE_HINT}") from None
    if not (root.is_dir() and pairs.is_file()):
        raise DataError(f"scikit-learn's LFW cache at {home} is incomplete; {OFFLINE_HINT}")
    return root, pairs
