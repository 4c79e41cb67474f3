"""Whether a run folder's store can be resumed: the settings, data and model fingerprints a run
records, how they are compared, and the default output folder that finds a run to resume."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from pathlib import Path

import torch

from .. import __version__
from .config import RunConfig
from .store import inspect_store


#: Key of the data fingerprint in the stored settings.
FINGERPRINT = "pairs_fingerprint"
#: Key of the models' fingerprints in the stored settings: {model as given: sha256 of its file}
#: (``falsify.models.model_sha256``; 6.4 records every model it compares).
MODEL_FINGERPRINT = "model_sha256"
#: How a model file replaced at the same path is named among the settings that differ.
_MODEL_CHANGED = "the model file of "


def model_fingerprints(models) -> dict:
    """{model: the sha256 of the file its weights come from (None: no file)} for a run's settings,
    each file hashed once per process (``falsify.fingerprints``)."""
    from ..models import model_sha256

    return {m: model_sha256(m) for m in models}


def model_changes(have: dict, want: dict) -> list[str]:
    """The models whose file's sha256 differs between a stored run's settings (``have``) and this
    run's (``want``), one item each; a store made before falsify recorded them differs as a whole."""
    if MODEL_FINGERPRINT not in want:
        return []
    if MODEL_FINGERPRINT not in have:
        return ["the model file's sha256 (not recorded by the older falsify that made the store)"]
    old, new = have[MODEL_FINGERPRINT] or {}, want[MODEL_FINGERPRINT] or {}
    short = lambda h: "none" if h is None else h[:12]  # noqa: E731
    return [f"{_MODEL_CHANGED}{m} (sha256 {short(old[m])} when the store was made, {short(new[m])} now)"
            for m in new if m in old and old[m] != new[m]]


def conflict_message(out, diff: list[str]) -> str:
    """The one line refusing to resume ``out`` whose settings differ on ``diff``: a model file
    replaced at the same path is said as such, with how to start a new folder."""
    if diff and all(d.startswith(_MODEL_CHANGED) for d in diff):
        return (f"{out} holds rows of other weights: {'; '.join(d[len('the '):] for d in diff)}, so the file at that "
                "path was replaced; nothing was changed there. Start a new folder for these weights (--out NEW), "
                "or put the old file back to resume")
    return (f"{out} holds results made with other settings ({', '.join(diff)} differ); nothing was changed there. "
            "Use another --out, or the same settings to resume")


def data_changes(have: dict | None, want: dict) -> tuple[bool, list[str]]:
    """How this run's data fingerprint ``want`` differs from a stored one ``have``: (whether the
    pairs themselves - ids, labels, folds - differ, the image keys whose bytes changed)."""
    have = have or {}
    if have.get("sha256") == want.get("sha256"):
        return False, []
    if "pairs_sha256" not in have or have.get("pairs_sha256") != want.get("pairs_sha256"):
        return True, []
    old, new = have.get("images", {}), want.get("images", {})
    return False, sorted(k for k in new if old.get(k) != new[k])


def changed_settings(have: dict, want: dict) -> list[str]:
    """The settings other than the data on which ``have`` and ``want`` differ."""
    legacy = {**RunConfig.LEGACY, **have}
    keys = (set(legacy) | set(want)) - {"data", "pairs", FINGERPRINT, MODEL_FINGERPRINT}
    return sorted(k for k in keys if legacy.get(k) != want.get(k)) + model_changes(have, want)


def settings_conflicts(have: dict, want: dict) -> list[str]:
    """The settings on which a stored run (``have``) and this one (``want``) differ. The data is
    compared by its fingerprint (pair ids, labels, folds and image contents), so the same data
    reached through another spelling of its path is the same run and other data behind the
    same path is not; a store without a fingerprint (made by an older falsify) never matches.
    The model's file is compared by its sha256 as well (``MODEL_FINGERPRINT``), so other weights
    behind the same path are another run; a store without it never matches either."""
    diff = changed_settings(have, want)
    pairs_changed, images = data_changes(have.get(FINGERPRINT), want[FINGERPRINT])
    if pairs_changed:
        diff.append("data (the pairs or their images)")
    elif images:
        diff.append(f"data ({len(images)} image{'s' * (len(images) != 1)} changed, e.g. {images[0]})")
    return diff


def environment(device: torch.device) -> dict:
    import captum
    import cv2
    import numpy
    import PIL

    return {
        "falsify": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "captum": captum.__version__,
        "opencv": cv2.__version__,  # the face detector: its landmarks decide the aligned crops
        "pillow": PIL.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_out(config: RunConfig, settings: dict | None = None, runs_dir: Path = Path("runs")) -> Path:
    """``runs/<experiment>-<timestamp>``, or the newest such folder made with the same result
    settings (``settings``: ``result_settings()`` plus the data fingerprint), so that running the
    same command again resumes it."""
    wanted = settings or config.result_settings()
    if runs_dir.is_dir():
        for d in sorted(runs_dir.glob("*-*"), reverse=True):
            try:
                stored = inspect_store(d / "results.sqlite")
            except ValueError:
                continue
            have = stored["meta"].get("settings") if stored else None
            if have is not None and not settings_conflicts(have, wanted):
                return d
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return runs_dir / f"{config.experiment}-{stamp}"
