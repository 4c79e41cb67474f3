"""Embedding images once, in batches, and the LFW verification protocol."""
from __future__ import annotations

import math

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.images import iter_chunks, load_images
from .data.pairs import PairSet
from .geometry import cosine_similarity, geodesic_distance
from .models.alignment import no_face_line
from .models.base import FaceEmbedder, model_device

#: ``falsify verify`` warns that a model is near chance when its accuracy is below this (eigenfaces,
#: LFW's weakest baseline, score 60.02% in the LFW technical report; docs/method.md) ...
NEAR_CHANCE_ACCURACY = 0.60
#: ... or when the Wilson interval of its accuracy over all pairs, at this confidence, reaches 50%
NEAR_CHANCE_CONFIDENCE = 0.95


def embed_paths(
    model: FaceEmbedder,
    paths: Sequence[Path],
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[dict[Path, torch.Tensor], dict[Path, str]]:
    """Embed each distinct image once, in batches.

    Returns ``({path: embedding (D,) on the CPU}, {path: reason})``: unreadable images are
    reported in the second dict instead of stopping the run.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths = list(dict.fromkeys(Path(p) for p in paths))
    device = model_device(model)
    embeddings: dict[Path, torch.Tensor] = {}
    failed: dict[Path, str] = {}
    bar = tqdm(total=len(paths), desc="embedding", unit="img", disable=not progress, leave=False)
    with torch.inference_mode():
        for chunk in iter_chunks(paths, batch_size):
            batch, bad = load_images(chunk, model.input_size, errors="skip", align=getattr(model, "aligner", None))
            failed.update(bad)
            good = [p for p in chunk if p not in failed]
            if good:
                out = model(batch.to(device)).float().cpu()
                embeddings.update(zip(good, out))
            bar.update(len(chunk))
    bar.close()
    return embeddings, failed


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The similarity threshold with the highest accuracy (same when score >= threshold).

    Candidates are midpoints between consecutive distinct sorted scores, plus one below the
    lowest and one above the highest; the first best is taken.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    if scores.size == 0:
        raise ValueError("no scores to choose a threshold from")
    uniq = np.unique(scores)
    cands = np.concatenate([[uniq[0] - 1e-6], (uniq[:-1] + uniq[1:]) / 2, [uniq[-1] + 1e-6]])
    order = np.argsort(scores)
    s_sorted, l_sorted = scores[order], labels[order]
    # number of pairs below each candidate (predicted "different")
    below = np.searchsorted(s_sorted, cands, side="left")
    pos_below = np.concatenate([[0], np.cumsum(l_sorted)])[below]
    n_pos = labels.sum()
    tn = below - pos_below  # negatives below the threshold
    tp = n_pos - pos_below
    acc = (tp + tn) / scores.size
    return float(cands[int(np.argmax(acc))])


def accuracy_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    return float(np.mean((np.asarray(scores) >= threshold) == np.asarray(labels, dtype=bool)))


@dataclass
class VerificationResult:
    model: str
    source: str
    n_pairs: int
    n_genuine: int
    n_impostor: int
    n_folds: int
    accuracy_mean: float
    accuracy_std: float
    fold_accuracy: list[float]
    fold_threshold: list[float]
    roc_auc: float
    threshold: float  # chosen on all pairs: the model's operating point on this data
    threshold_angle: float  # the same threshold as a geodesic angle (radians)
    n_skipped: int
    skipped_examples: list[str] = field(default_factory=list)
    #: the alignment template (None: a plain resize) and, with one, the photos in which no face
    #: was found (they were resized instead): {"aligned", "no_face_found", "no_face_examples", ...}
    align: str | None = None
    alignment: dict | None = None
    #: Wilson 95% interval of the accuracy over all pairs (each pair decided once, by the
    #: threshold chosen on the other folds), [low, high]
    accuracy_ci95: list[float] | None = None
    #: for a checkpoint (``ARCH:PATH``) whose state dict is nested in the file: the key it was under
    checkpoint_key: str | None = None

    def near_chance(self) -> str | None:
        """Why the accuracy is near chance (50%), or None: below NEAR_CHANCE_ACCURACY, or its
        Wilson interval includes 50% (too few pairs, or a model that does not tell faces apart)."""
        ci = self.accuracy_ci95
        if self.accuracy_mean < NEAR_CHANCE_ACCURACY:
            return f"below {NEAR_CHANCE_ACCURACY:.0%}"
        if ci is not None and ci[0] <= 0.5:
            return (f"its Wilson {NEAR_CHANCE_CONFIDENCE:.0%} interval over the {self.n_pairs} pairs, "
                    f"{ci[0]:.1%}-{ci[1]:.1%}, includes 50% (more pairs, --n-pairs, narrow it)")
        return None

    def to_dict(self) -> dict:
        """As JSON-safe values: an undefined number (e.g. ROC AUC of one-class pairs) is None."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    def warnings(self) -> list[str]:
        """What a reader of the numbers must know: an optimistic 1-fold accuracy, an undefined AUC,
        an accuracy near chance (``near_chance``), photos without a face found."""
        out = []
        if self.n_folds < 2:
            out.append("the pairs have one fold, so the threshold was chosen on the same pairs it is tested on "
                       "(the accuracy is optimistic); use a pairs file with folds (LFW: 10) for the protocol")
        if not math.isfinite(self.roc_auc):
            out.append(f"ROC AUC is undefined: the pairs are all {'genuine' if self.n_genuine else 'impostor'}")
        why = self.near_chance()
        if why:
            out.append(f"accuracy {self.accuracy_mean:.2%} is near chance (50%): {why}; is the model "
                       f"({self.model}) a face embedder, fed the input it was trained on (--input-size, --mean, "
                       "--std, --align)?")
        if self.alignment and self.alignment.get("no_face_found"):
            a = self.alignment
            out.append(no_face_line(a["no_face_found"], a["no_face_found"] + a["aligned"], a["no_face_examples"]))
        return out

    def format(self) -> str:
        folds = ", ".join(f"{a:.2%}" for a in self.fold_accuracy)
        lines = [
            f"model        {self.model}"
            + (f" (weights under the checkpoint's key {self.checkpoint_key!r})" if self.checkpoint_key else ""),
            f"data         {self.source}",
            f"pairs        {self.n_pairs} ({self.n_genuine} genuine, {self.n_impostor} impostor), "
            f"{self.n_skipped} skipped",
            f"accuracy     {self.accuracy_mean:.2%} +- {self.accuracy_std:.2%} "
            f"({self.n_folds}-fold; per fold: {folds})"
            + (", threshold chosen on the test pairs (optimistic)" if self.n_folds < 2 else ""),
            f"ROC AUC      {self.roc_auc:.4f}" if math.isfinite(self.roc_auc) else "ROC AUC      undefined (one class)",
            f"threshold    cos >= {self.threshold:.4f} (angle <= {self.threshold_angle:.4f} rad), "
            "best on all pairs",
        ]
        if self.align is None:
            lines.append("alignment    none (plain resize)")
        else:
            a = self.alignment or {}
            lines.append(f"alignment    {self.align}: {a.get('aligned', 0)} images aligned, "
                         f"{a.get('no_face_found', 0)} without a face found (resized)")
        if self.skipped_examples:
            lines.append("skipped e.g. " + "; ".join(self.skipped_examples))
        return "\n".join(lines)


def pair_similarities(
    model: FaceEmbedder, pairs: PairSet, batch_size: int = 64, progress: bool = True
) -> tuple[PairSet, np.ndarray, np.ndarray]:
    """Embed every image once and return (usable pairs, cosine similarities, angles)."""
    emb, failed = embed_paths(model, pairs.image_paths(), batch_size=batch_size, progress=progress)
    if failed:
        pairs = pairs.drop_images(failed)
    if not pairs.pairs:
        raise ValueError("no pair has two readable images")
    a = torch.stack([emb[p.a] for p in pairs])
    b = torch.stack([emb[p.b] for p in pairs])
    return pairs, cosine_similarity(a, b).numpy(), geodesic_distance(a, b).numpy()


def verify(
    model: FaceEmbedder, pairs: PairSet, batch_size: int = 64, progress: bool = True
) -> VerificationResult:
    """The LFW protocol: for each fold, the threshold is chosen on the other folds."""
    from sklearn.metrics import roc_auc_score
    from statsmodels.stats.proportion import proportion_confint

    aligner = getattr(model, "aligner", None)
    before = set(aligner.stats.not_found) if aligner is not None else set()
    pairs, sims, _ = pair_similarities(model, pairs, batch_size, progress)
    alignment = None
    if aligner is not None:
        used = {str(p) for p in pairs.image_paths()}
        found = {n for n in aligner.stats.aligned if n in used}
        missed = {n for n in aligner.stats.not_found | before if n in used}
        alignment = {"aligned": len(found), "no_face_found": len(missed), "no_face_examples": sorted(missed)[:10],
                     "detector_runs": aligner.stats.detections}
    labels = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    fold_ids = sorted(set(folds.tolist()))
    accs, ths, n_correct = [], [], 0
    if len(fold_ids) < 2:  # one fold: threshold and accuracy on the same pairs (optimistic)
        th = best_threshold(sims, labels)
        accs, ths = [accuracy_at(sims, labels, th)], [th]
        n_correct = int(np.sum((sims >= th) == labels))
    else:
        for f in fold_ids:
            train, test = folds != f, folds == f
            th = best_threshold(sims[train], labels[train])
            accs.append(accuracy_at(sims[test], labels[test], th))
            ths.append(th)
            n_correct += int(np.sum((sims[test] >= th) == labels[test]))
    # statsmodels' Wilson interval, as falsification.stats.wilson_interval computes it (not imported from
    # there: falsification's calibration builds on this module, so this module imports nothing of it)
    ci = np.clip(proportion_confint(n_correct, len(labels), alpha=1.0 - NEAR_CHANCE_CONFIDENCE, method="wilson"),
                 0.0, 1.0) if len(labels) else None
    auc = float(roc_auc_score(labels, sims)) if 0 < labels.sum() < len(labels) else float("nan")
    th_all = best_threshold(sims, labels)
    return VerificationResult(
        model=getattr(model, "name", type(model).__name__),
        source=pairs.source,
        n_pairs=len(pairs),
        n_genuine=int(labels.sum()),
        n_impostor=int((~labels).sum()),
        n_folds=len(fold_ids),
        accuracy_mean=float(np.mean(accs)),
        accuracy_std=float(np.std(accs)),
        fold_accuracy=[float(a) for a in accs],
        fold_threshold=[float(t) for t in ths],
        roc_auc=auc,
        threshold=th_all,
        threshold_angle=float(np.arccos(np.clip(th_all, -1.0, 1.0))),
        n_skipped=len(pairs.skipped),
        skipped_examples=[f"{s.where}: {s.reason}" for s in pairs.skipped[:3]],
        align=getattr(model, "align", None),
        alignment=alignment,
        accuracy_ci95=None if ci is None else [float(ci[0]), float(ci[1])],
        checkpoint_key=getattr(model, "checkpoint_key", None),
    )
