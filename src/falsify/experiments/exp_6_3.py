"""Experiment 6.3: which facial parts, and which kinds of face, make attributions falsifiable.

``falsify run 6.3`` runs 6.1's rows (whichever are missing) and then, under the experiment key
``6.3``, one row per (method, pair):

- the facial parts of image A in the model's input frame (:func:`part_labels`), drawn from its
  five landmarks (YuNet: eyes, nose tip, mouth corners) mapped through the model's alignment
  (:func:`frame_points`): left eye, right eye, nose, mouth, forehead, cheeks, chin/jaw and
  background, one part per pixel;
- the map's share of attribution mass in each part (:func:`part_shares`);
- the measured effect of each part: the run's fill on that part alone, d_g between f(x) and
  f(x') (the run's ``target``; the mean over K samples for the noise fill), computed once per pair;
- the map's part ranking against the embedding's (:func:`rank_test`): Spearman and Kendall over
  the parts present, and the part-level verdict: the part the map ranks highest must move the
  embedding more than the part it ranks lowest by the calibrated margin epsilon.

Analyses (:func:`part_analysis`, :func:`attribute_rates`, :func:`chi_square`; synthetic rows in the
tests): FR per part the map ranked highest with Wilson CIs and a chi-square test of independence
across those parts (scipy); FR by gender (per image) and race (per person) of image A with
``--labels``; Table 6.3 and the figure "FR by facial part"; a figure of the parts on real faces
(drawn from the section's ``parts_figure``: the first images A and their landmarks).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..choices import is_control
from ..report.labels import fit_titles, quiet
from ..report.tables import fmt_num, fmt_p, fmt_pct, run_description
from .base import Experiment
from .rows import ChunkRows, RowKind

KEY = "experiment_6_3"
ROWS_OF = "6.3"
#: the parts, in label order (label i is PARTS[i])
PARTS: tuple[str, ...] = ("background", "forehead", "left eye", "right eye", "nose", "mouth", "cheeks", "chin/jaw")
BACKGROUND, FOREHEAD, LEFT_EYE, RIGHT_EYE, NOSE, MOUTH, CHEEKS, CHIN = range(len(PARTS))
ATTRIBUTES = ("gender", "race")
#: image A's drawn in the parts figure
FIGURE_FACES = 4
#: pseudo-random stream of the part fills (the test's own streams are 0 and 1)
_STREAM_PARTS = 3
UNFIT_FILLS = ("optimised",)

# The geometry, in face coordinates: u across the face (left eye -> right eye) in units of the
# eye distance, v down the face (eye centre -> mouth centre) in units of that distance; the eye
# centre is (0, 0), the mouth centre (0, 1).
FACE_CENTRE_V, FACE_HALF_WIDTH, FACE_HALF_HEIGHT = 0.3, 1.05, 1.35  # the face ellipse
EYE_HALF_WIDTH, EYE_HALF_HEIGHT = 0.32, 0.22  # ellipses around each eye
NOSE_HALF_WIDTH, NOSE_TOP = 0.25, 0.2  # the nose: a band down to halfway between nose tip and mouth
MOUTH_MARGIN, MOUTH_HALF_HEIGHT = 0.15, 0.22  # the mouth: an ellipse over the corners (+ margin)
FOREHEAD_BELOW = -0.3  # face above this line (brows included) is the forehead
CHIN_BELOW = 1.25  # face below this line is the chin/jaw


def _f(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


# ---------------------------------------------------------------------------------------------
# the parts


def part_labels(points, size: tuple[int, int]) -> np.ndarray:
    """The part of every pixel of an (H, W) = ``size`` image whose five landmarks are ``points``
    ((5, 2) x, y in pixels: left eye, right eye, nose tip, left mouth corner, right mouth corner,
    image order): an (H, W) int array of indices into :data:`PARTS`. Each pixel gets exactly one
    part: the eyes, then the mouth, then the nose, then forehead / chin/jaw / cheeks inside the face
    ellipse, background outside it (see the module's constants and docs/method.md)."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape != (5, 2) or not np.isfinite(p).all():
        raise ValueError(f"five landmarks (5, 2) are needed, got shape {p.shape}")
    le, re, nose, lm, rm = p
    eye_c, mouth_c = (le + re) / 2, (lm + rm) / 2
    d_eyes = np.linalg.norm(re - le)
    d_down = np.linalg.norm(mouth_c - eye_c)
    if d_eyes < 1e-6 or d_down < 1e-6:
        raise ValueError("degenerate landmarks: the eyes, or eyes and mouth, coincide")
    ex = (re - le) / d_eyes
    ey = (mouth_c - eye_c) / d_down
    h, w = int(size[0]), int(size[1])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rel = np.stack([xx + 0.5 - eye_c[0], yy + 0.5 - eye_c[1]], axis=-1)

    def coords(q):  # face coordinates of pixel centres and of point q
        r = rel - (q - eye_c)
        return (r @ ex) / d_eyes, (r @ ey) / d_down

    u, v = coords(eye_c)
    face = (u / FACE_HALF_WIDTH) ** 2 + ((v - FACE_CENTRE_V) / FACE_HALF_HEIGHT) ** 2 <= 1
    eye = [((a / EYE_HALF_WIDTH) ** 2 + (b / EYE_HALF_HEIGHT) ** 2 <= 1) for a, b in (coords(le), coords(re))]
    mu, mv = coords(mouth_c)
    half_mouth = np.linalg.norm(rm - lm) / 2 / d_eyes + MOUTH_MARGIN
    mouth = (mu / half_mouth) ** 2 + (mv / MOUTH_HALF_HEIGHT) ** 2 <= 1
    nu, nv = coords(nose)
    nose_bottom = (1.0 - ((nose - eye_c) @ ey) / d_down) / 2  # halfway from the tip to the mouth centre
    nose_m = (np.abs(nu) <= NOSE_HALF_WIDTH) & (v >= NOSE_TOP) & (nv <= nose_bottom)
    labels = np.full((h, w), BACKGROUND, dtype=np.int8)
    labels[face] = CHEEKS
    labels[face & (v < FOREHEAD_BELOW)] = FOREHEAD
    labels[face & (v > CHIN_BELOW)] = CHIN
    labels[nose_m] = NOSE
    labels[mouth] = MOUTH
    labels[eye[1]] = RIGHT_EYE
    labels[eye[0]] = LEFT_EYE
    return labels


def part_shares(attribution, labels: np.ndarray) -> np.ndarray | None:
    """Each part's share of the map's attribution mass (the maps are >= 0; ``falsify.attribution``
    normalises them to [0, 1]); None when the map has no mass."""
    a = np.clip(np.asarray(attribution, dtype=np.float64), 0, None)
    if a.shape != labels.shape:
        raise ValueError(f"map {a.shape} and part labels {labels.shape} differ in size")
    mass = np.bincount(labels.ravel(), weights=a.ravel(), minlength=len(PARTS))
    total = mass.sum()
    return None if total <= 0 or not math.isfinite(total) else mass / total


def rank_test(shares: Sequence[float], effects: Sequence[float | None], epsilon: float) -> dict:
    """The map's part ranking against the embedding's, over the parts with an effect (None: the
    part is absent from the image). ``top``/``bottom``: the parts with the largest/smallest share
    (the first in :data:`PARTS` order on ties); verdict ``passed`` when d(top) - d(bottom) >=
    ``epsilon``, ``falsified`` otherwise, ``untestable`` when the map gives every part the same share
    or fewer than two parts are present. Spearman and Kendall (tau-b, scipy) over the present parts
    (None with fewer than three parts or a constant ranking)."""
    from scipy.stats import kendalltau, spearmanr

    present = [i for i, e in enumerate(effects) if e is not None]
    out = {"top": None, "bottom": None, "d_top": None, "d_bottom": None, "margin": None, "verdict": "untestable",
           "spearman": None, "kendall": None, "n_parts": len(present)}
    if len(present) < 2:
        return out
    s = np.array([shares[i] for i in present], dtype=float)
    d = np.array([effects[i] for i in present], dtype=float)
    if len(present) >= 3 and np.ptp(s) > 0 and np.ptp(d) > 0:
        out["spearman"] = _f(spearmanr(s, d).statistic)
        out["kendall"] = _f(kendalltau(s, d).statistic)
    if np.ptp(s) == 0:
        return out
    top, bottom = present[int(np.argmax(s))], present[int(np.argmin(s))]
    margin = float(effects[top] - effects[bottom])
    out.update(top=PARTS[top], bottom=PARTS[bottom], d_top=float(effects[top]), d_bottom=float(effects[bottom]),
               margin=margin, verdict="passed" if margin >= epsilon else "falsified")
    return out


# ---------------------------------------------------------------------------------------------
# statistics


def chi_square(table) -> dict:
    """Pearson's chi-square test of independence of a (groups x [falsified, passed]) table:
    scipy's ``chi2_contingency`` without Yates' correction, on the groups with a testable map.
    None with fewer than two such groups; chi2 = 0, p = 1 when every verdict is the same (no
    variation to test)."""
    from scipy.stats import chi2_contingency

    t = np.asarray(table, dtype=np.int64)
    t = t[t.sum(axis=1) > 0] if t.ndim == 2 else t
    out = {"chi2": None, "df": None, "p": None, "n_groups": int(t.shape[0]) if t.ndim == 2 else 0}
    if t.ndim != 2 or t.shape[0] < 2:
        return out
    if (t.sum(axis=0) == 0).any():
        return {**out, "chi2": 0.0, "df": int(t.shape[0] - 1), "p": 1.0}
    res = chi2_contingency(t, correction=False)
    return {**out, "chi2": float(res.statistic), "df": int(res.dof), "p": float(res.pvalue)}


def _rate(verdicts: Sequence[str]) -> dict:
    from ..falsification.stats import wilson

    n_f, n_p = verdicts.count("falsified"), verdicts.count("passed")
    n = n_f + n_p
    lo, hi = wilson(n_f, n)
    return {"n": n, "n_falsified": n_f, "n_untestable": verdicts.count("untestable"),
            "fr": n_f / n if n else None, "ci_low": lo, "ci_high": hi}


def part_analysis(details: Sequence[Mapping]) -> dict:
    """Over rows' details (:func:`rank_test` plus ``shares``, ``effects``, ``areas`` by part): the
    overall FR; per part: the mean share, area and effect (over images where the part is present)
    and the FR of the maps that ranked it highest (Wilson CI); the chi-square test across those
    parts; the mean Spearman and Kendall."""
    verdicts = [d["verdict"] for d in details]
    parts = []
    for name in PARTS:
        present = [d for d in details if d["effects"].get(name) is not None]
        tops = [d["verdict"] for d in details if d.get("top") == name]
        parts.append({"part": name, "n_present": len(present),
                      "share_mean": _f(np.mean([d["shares"][name] for d in present])) if present else None,
                      "area_mean": _f(np.mean([d["areas"][name] for d in present])) if present else None,
                      "d_mean": _f(np.mean([d["effects"][name] for d in present])) if present else None,
                      "n_top": len(tops), **_rate(tops)})
    table = [[p["n_falsified"], p["n"] - p["n_falsified"]] for p in parts]
    corr = {}
    for k in ("spearman", "kendall"):
        xs = [d[k] for d in details if d.get(k) is not None]
        corr[k] = {"mean": _f(np.mean(xs)) if xs else None, "n": len(xs)}
    return {"n_rows": len(details), **_rate(verdicts), "parts": parts, "chi_square": chi_square(table), **corr}


def attribute_rates(pair_verdicts: Sequence[tuple[str, str]], group_of: Mapping[str, str | None]) -> dict:
    """FR per group of image A from (pair, verdict) tuples; unlabelled pairs counted apart."""
    by: dict[str, list[str]] = {}
    unlabelled = 0
    for pair, v in pair_verdicts:
        g = group_of.get(pair)
        if g is None:
            unlabelled += 1
        else:
            by.setdefault(g, []).append(v)
    groups = [{"group": g, **_rate(vs)} for g, vs in sorted(by.items())]
    table = [[g["n_falsified"], g["n"] - g["n_falsified"]] for g in groups]
    return {"groups": groups, "n_unlabelled": unlabelled, "chi_square": chi_square(table)}


# ---------------------------------------------------------------------------------------------
# landmarks in the model's frame, the part effects, the rows


def frame_points(model, path, detector=None) -> tuple[np.ndarray | None, str]:
    """Image ``path``'s five landmarks in the model's input frame: through the model's alignment
    (the similarity that maps the photo onto its template), or, for a model without alignment,
    detected on the photo (``detector``: a :class:`FaceAligner`, used only to detect) and scaled to
    the resized frame. Returns (points, "") or (None, why not)."""
    from ..data.images import decode_image
    from ..models.alignment import similarity_matrix

    rgb, key = decode_image(path)  # as the loaders decode it (ImageLoadError, naming the file)
    aligner = getattr(model, "aligner", None)
    finder = aligner if aligner is not None else detector
    face = finder.landmarks(rgb, key)
    if face is None:
        return None, "no face found in image A, so its facial parts cannot be placed"
    pts = np.asarray(face.landmarks, dtype=np.float64)
    if aligner is not None:
        m = similarity_matrix(pts, aligner.points)
        return pts @ m[:, :2].T + m[:, 2], ""
    h, w = model.input_size
    return pts * np.array([w / rgb.shape[1], h / rgb.shape[0]]), ""


def part_effects(model, image, f_x, ref, labels: np.ndarray, fc, pair_index: int) -> list[float | None]:
    """d_g(f(x), f(x')) (the run's target) of x' = x with one part filled (the run's fill; the mean
    over K samples for the noise fill), per part; None for a part absent from the image."""
    import torch

    from ..falsification.stages import distances, embed, pair_generator
    from ..falsification.counterfactuals import DETERMINISTIC_FILLS, fill_image
    from ..models.base import model_device

    k = 1 if fc.fill in DETERMINISTIC_FILLS else fc.k_effective
    gen = pair_generator(fc.seed, pair_index, _STREAM_PARTS)
    kw = dict(generator=gen, noise_sigma=fc.noise_sigma, blur_sigma=fc.blur_sigma)
    lab = torch.from_numpy(labels.astype(np.int64))
    x = image.unsqueeze(0)
    fixed = fill_image(image, fc.fill, 1, **kw) if fc.fill in DETERMINISTIC_FILLS else None
    present, cfs = [], []
    for i in range(len(PARTS)):
        mask = lab == i
        if not bool(mask.any()):
            continue
        values = fixed if fixed is not None else fill_image(image, fc.fill, k, **kw)
        cfs.append(torch.where(mask.view(1, 1, *mask.shape), values, x).expand(k, -1, -1, -1))
        present.append(i)
    e = embed(model, torch.cat(cfs), fc.batch_size, model_device(model)).double()
    d = distances(f_x.double(), e, ref.double(), fc.target).view(len(present), k).mean(dim=1)
    out: list[float | None] = [None] * len(PARTS)
    for j, i in enumerate(present):
        out[i] = float(d[j])
    return out


class Rows63(RowKind):
    """6.3's rows: one part-level test per (method, pair); a unit is a chunk of pairs and one
    method, so the methods spread over Ray workers (the parts' landmarks and effects are
    computed once per chunk in a process)."""

    rows_of = ROWS_OF

    def keys(self) -> list[str]:
        return list(self.ctx.config.methods)

    def groups(self, keys):
        return [[k] for k in keys]

    def describe(self, n_rows, n_todo, n_pairs, n_keys) -> str:
        return f"experiment 6.3: facial parts of {n_todo} pairs x {n_keys} methods ..."

    def computer(self, model, explainers=None, random_model=None):
        return PartRows(self, model, explainers, random_model)


class FramePoints:
    """For a computer of rows (``self.model``): an image's five landmarks in the model's input frame
    (:func:`frame_points`), with a detector made once for a model without alignment."""

    detector = None

    def points_of(self, path) -> tuple[np.ndarray | None, str]:
        """(points, "") or (None, why not) for the image at ``path``."""
        if self.model.aligner is None and self.detector is None:
            from ..models.alignment import FaceAligner

            self.detector = FaceAligner("arcface-112", tuple(self.model.input_size))
        try:
            return frame_points(self.model, path, self.detector)
        except (OSError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"


class PartRows(FramePoints, ChunkRows):
    """Computes 6.3's units (:class:`Rows63`)."""

    def points(self, p):
        return self.points_of(p.a)

    def parts(self, pairs, images, refs):
        """Per pair: (landmarks, part labels) or the reason none, and the effect of each part."""
        from ..falsification.stages import embed
        from ..models.base import model_device

        model, fc = self.model, self.ctx.fconfig
        h, w = model.input_size
        found = [self.points(p) for p in pairs]
        keep = [i for i, (_, why) in enumerate(found) if not why]
        labels = {i: part_labels(found[i][0], (h, w)) for i in keep}
        effects = {}
        if keep:
            f_x = embed(model, images[keep], self.ctx.config.batch_size, model_device(model))
            for j, i in enumerate(keep):
                effects[i] = part_effects(model, images[i], f_x[j], refs[i], labels[i], fc, pairs[i].index)
        return found, labels, effects

    def compute(self, pairs, images, refs, keys, done):
        import torch.nn.functional as F

        kind, model, fc = self.kind, self.model, self.ctx.fconfig
        h, w = model.input_size
        found, labels, effects = self._images.get("parts", [p.id for p in pairs],
                                                  lambda: self.parts(pairs, images, refs))
        rows = []
        for m in keys:
            idx, maps, new = self.pending_maps(m, pairs, images, refs, done, lambda i, p: kind.error_row(
                m, p, found[i][1]) if found[i][1] else None)
            rows += new
            if maps is None:
                continue
            if tuple(maps.shape[-2:]) != (h, w):
                maps = F.interpolate(maps.unsqueeze(1).float(), size=(h, w), mode="bilinear",
                                     align_corners=False)[:, 0]
            for j, i in enumerate(idx):
                p = pairs[i]
                shares = part_shares(maps[j].double().numpy(), labels[i])
                if shares is None:
                    rows.append(kind.error_row(m, p, "the map has no mass", verdict="untestable"))
                    continue
                r = rank_test(shares, effects[i], fc.epsilon)
                areas = np.bincount(labels[i].ravel(), minlength=len(PARTS)) / labels[i].size
                detail = {"method": m, **r, "epsilon": fc.epsilon,
                          "shares": {n: float(shares[k]) for k, n in enumerate(PARTS)},
                          "effects": {n: effects[i][k] for k, n in enumerate(PARTS)},
                          "areas": {n: float(areas[k]) for k, n in enumerate(PARTS)},
                          "points": np.round(found[i][0], 3).tolist()}
                rows.append({**kind.base_row(m, p), "verdict": r["verdict"], "d_high": r["d_top"],
                             "d_low": r["d_bottom"], "margin": r["margin"],
                             "epsilon": fc.epsilon, "detail": detail})
        yield rows, []


def row_kind(session) -> Rows63:
    """6.3's row kind for a run (``session.RunSession``)."""
    return Rows63(session.context(ROWS_OF))


def parts_faces(model, details: Sequence[Mapping]) -> dict | None:
    """What the parts figure needs, for the summary (so ``falsify report`` redraws it): the model's
    input size, its alignment template (None: a plain resize) and the first :data:`FIGURE_FACES`
    distinct images A of ``details`` with their five landmarks in the model's input frame; None
    without any."""
    seen, faces = set(), []
    for d in details:
        if d["pair_a"] not in seen:
            seen.add(d["pair_a"])
            faces.append({"image": d["pair_a"], "points": [[float(v) for v in p] for p in d["points"]]})
        if len(faces) == FIGURE_FACES:
            break
    if not faces:
        return None
    aligner = getattr(model, "aligner", None)
    return {"size": [int(v) for v in model.input_size], "align": None if aligner is None else aligner.template,
            "faces": faces}


def parts_figure(figure: Mapping):
    """The parts drawn over the images A of ``figure`` (:func:`parts_faces`, the section's
    ``parts_figure``), loaded as the model saw them, with their landmarks; None when an image can
    no longer be read (the figure the run drew is then kept)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from ..data import load_images

    faces, size = list(figure["faces"]), tuple(int(v) for v in figure["size"])
    aligner = None
    if figure.get("align"):
        from ..models.alignment import FaceAligner

        aligner = FaceAligner(figure["align"], size)
    images, bad = load_images([d["image"] for d in faces], size, errors="skip", align=aligner)
    if bad or not faces:
        return None
    colours = ["#00000000", "#e6ab02", "#1b9e77", "#66a61e", "#d95f02", "#e7298a", "#7570b3", "#a6761d"]
    cmap = ListedColormap(colours)
    fig = Figure(figsize=(2.4 * len(faces) + 1.8, 2.9), layout="constrained")
    axes = fig.subplots(1, len(faces), squeeze=False)[0]
    for ax, d, img in zip(axes, faces, images):
        pts = np.asarray(d["points"])
        lab = part_labels(pts, size)
        ax.imshow(img.permute(1, 2, 0).numpy())
        ax.imshow(np.ma.masked_equal(lab, BACKGROUND), cmap=cmap, vmin=-0.5, vmax=len(PARTS) - 0.5, alpha=0.45,
                  interpolation="nearest")
        ax.contour(lab, levels=np.arange(len(PARTS)) + 0.5, colors="white", linewidths=0.4)
        ax.plot(pts[:, 0] - 0.5, pts[:, 1] - 0.5, "o", ms=3, color="red")
        ax.set_title(Path(d["image"]).name, fontsize=7)
        ax.axis("off")
    handles = [Patch(color=colours[i], label=PARTS[i]) for i in range(1, len(PARTS))]
    handles.append(Patch(facecolor="none", edgecolor="grey", label="background"))
    axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    with quiet():  # a file name too long for its panel is shortened (falsify.report.labels)
        fig.get_layout_engine().execute(fig)
        fit_titles(fig, axes, [("{0}", [Path(d["image"]).name]) for d in faces])
    return fig


# ---------------------------------------------------------------------------------------------
# tables and figures


def _section(summary: Mapping) -> Mapping | None:
    s = summary.get(KEY)
    return s if isinstance(s, Mapping) else None


def ranked_items(s: Mapping) -> list[dict]:
    """Table 6.3's rows: the pooled FR per part ranked highest and per attribute group, highest FR first."""
    items = [{"item": p["part"], "category": "facial part (ranked first by the map)", **p}
             for p in s["pooled"]["parts"] if p["n"]]
    for attribute, a in (s.get("attributes") or {}).items():
        items += [{"item": g["group"], "category": f"{attribute} of image A", **g}
                  for g in a["pooled"]["groups"] if g["n"]]
    items.sort(key=lambda r: -r["fr"])
    return [{"rank": i + 1, **r} for i, r in enumerate(items)]


def tables_6_3(summary: Mapping) -> list:
    from ..report.render import Table, frame

    s = _section(summary)
    if s is None:
        return []
    desc = run_description(summary)
    rows = [[str(r["rank"]), r["item"], r["category"], fmt_pct(r["fr"]),
             f"[{fmt_pct(r['ci_low'])}, {fmt_pct(r['ci_high'])}]", str(r["n"])] for r in ranked_items(s)]
    header = ["Rank", "Attribute or part", "Category", "FR %", "95% CI", "n"]
    chi = s["pooled"]["chi_square"]
    caption = ("Experiment 6.3: falsification rate of the part-level test by the part each map ranked highest and by"
               " the group of image A" + (f" ({desc})" if desc else "")
               + f"; maps of {', '.join(s['pooled_methods'])} pooled. A map passes when the part it ranks highest"
               r" moves the embedding more than the part it ranks lowest by $\epsilon$"
               + (rf" = {s['epsilon']:.4f} rad" if s.get("epsilon") is not None else "")
               + r". Wilson 95\% CIs; $n$: testable maps."
               + ("" if chi["p"] is None else rf" Chi-square across parts: $\chi^2$ = {chi['chi2']:.2f}"
                  rf" (df {chi['df']}), $p$ = {fmt_p(chi['p'])}."))
    out = [Table(name="table_6_3", frame=frame(header, rows), label="tab:exp-6-3", caption=caption,
                 html_id="table-6-3", numeric=(0, 3, 5), size=r"\footnotesize")]
    rows = []
    for e in s["methods"]:
        chi = e["chi_square"]
        rows.append([e["method"], str(e["n"]), None if e["fr"] is None else
                     f"{fmt_pct(e['fr'])} [{fmt_pct(e['ci_low'])}, {fmt_pct(e['ci_high'])}]",
                     fmt_num(e["spearman"]["mean"], 2), fmt_num(e["kendall"]["mean"], 2),
                     None if chi["chi2"] is None else f"{chi['chi2']:.2f} (df {chi['df']})", fmt_p(chi["p"])])
    header = ["Method", "n", "FR % [95% CI]", "mean Spearman", "mean Kendall", "chi-square across parts", "p"]
    caption = (r"Experiment 6.3 per method: the part-level falsification rate, the mean over images of the rank"
               r" correlation between the map's share of mass per part and the measured effect of removing that part,"
               r" and the chi-square test of FR across the parts the maps ranked highest.")
    out.append(Table(name="table_6_3_methods", frame=frame(header, rows), label="tab:exp-6-3-methods",
                     caption=caption, html_id="table-6-3-methods", numeric=range(1, len(header)),
                     size=r"\footnotesize"))
    return out


def figure_parts_fr(summary: Mapping):
    """FR by the part the map ranked highest, one bar per method, Wilson whiskers."""
    from matplotlib.figure import Figure

    from ..report.figures import rate_bars

    s = _section(summary)
    fig = Figure(figsize=(7.5, 3.6), layout="constrained")
    ax = fig.add_subplot()
    # a part no pair of the method fell in (n 0) has no rate: no bar
    rate_bars(ax, [(e["method"], e["control"], [p if p["n"] else None for p in e["parts"]]) for e in s["methods"]],
              [f"{p['part']}\n(n={p['n']})" for p in s["pooled"]["parts"]], label_size=7)
    ax.set_title("FR by facial part (the part the map ranked highest)", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


class Experiment63(Experiment):
    name = "6.3"
    title = "Experiment 6.3: facial parts and attributes"
    anchor = "exp-6-3"
    nav = "6.3 facial parts"
    key = KEY
    template = "exp_6_3.html.j2"
    figures = {
        "fig_6_3_parts": ("The facial parts of the first images A of the run, in the model's input frame, drawn from "
                          "their five landmarks (red): each pixel belongs to one part; background uncoloured."),
        "fig_6_3_fr_by_part": ("FR by facial part: the falsification rate of the part-level test among the maps that "
                               "ranked the part highest, per method, with Wilson 95% whiskers; n: pooled maps."),
    }

    def check(self, config) -> None:
        if config.fill in UNFIT_FILLS:
            raise ValueError(f"experiment 6.3 removes each facial part with a fixed fill, not {config.fill}: "
                             "give --fill blur, mean, zero or noise")

    def extend(self, session, store, summary: dict) -> None:
        session.compute_rows(store, row_kind(session))
        c = session.config
        ids = {p.id for p in session.pairs}
        a_of = {p.id: str(p.a) for p in session.pairs}
        rows = store.rows(ROWS_OF, session.model.name, c.methods, pairs=ids)
        by_method = {m: [] for m in c.methods}
        for r in rows:
            if r["detail"]:
                by_method[r["method"]].append({**json.loads(r["detail"]), "pair": r["pair"], "pair_a": a_of[r["pair"]]})
        real = [m for m in c.methods if not is_control(m)] or list(c.methods)
        pooled = [d for m in real for d in by_method[m]]
        methods = [{"method": m, "control": is_control(m),
                    "n_errors": sum(r["verdict"] == "error" and r["method"] == m for r in rows),
                    **part_analysis(by_method[m])} for m in c.methods]
        section = {"parts": list(PARTS), "epsilon": session.fconfig.epsilon, "fill": session.fconfig.fill,
                   "target": session.fconfig.target, "n_pairs": len(session.pairs),
                   "frame": "aligned" if session.model.aligner is not None else "resized (landmarks scaled)",
                   "n_errors": sum(r["verdict"] == "error" for r in rows),
                   "error_examples": sorted({r["error"] for r in rows if r["verdict"] == "error"})[:5],
                   "methods": methods, "pooled_methods": real, "pooled": part_analysis(pooled),
                   "attributes": None, "labels": None}
        labels = session.labels
        if labels is not None:
            attrs = {}
            for attribute in ATTRIBUTES:
                if attribute == "race" and not labels.has_race:
                    continue
                group_of = {p.id: labels.group_of(attribute, p) for p in session.pairs}
                attrs[attribute] = {
                    "pooled": attribute_rates([(d["pair"], d["verdict"]) for d in pooled], group_of),
                    "methods": {m: attribute_rates([(d["pair"], d["verdict"]) for d in by_method[m]], group_of)
                                for m in c.methods}}
            section["attributes"], section["labels"] = attrs, labels.source
        section["parts_figure"] = parts_faces(session.model, [d for m in c.methods for d in by_method[m]])
        summary[KEY] = section

    def tables(self, summary: Mapping) -> list:
        return tables_6_3(summary)

    def drawings(self, summary: Mapping, **kw) -> dict:
        s = _section(summary)
        out = {}
        # an older summary lacks what the parts figure needs: the figure its run drew is kept
        if s is not None and isinstance(s.get("parts_figure"), Mapping):
            out["fig_6_3_parts"] = lambda: parts_figure(s["parts_figure"])
        if s is not None and any(p["n"] for p in s["pooled"]["parts"]):
            out["fig_6_3_fr_by_part"] = lambda: figure_parts_fr(summary)
        return out

    def context(self, summary: Mapping) -> dict:
        s = _section(summary)
        return {"section": s, "ranked": ranked_items(s) if s else []}

    def text(self, summary: Mapping) -> str:
        s = summary[KEY]
        pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
        eps = "n/a" if s["epsilon"] is None else f"{s['epsilon']:.4f}"
        lines = [f"experiment 6.3: part-level test (the part a map ranks highest must move the embedding more than "
                 f"the part it ranks lowest by epsilon {eps}); fill {s['fill']}, frame {s['frame']}"]
        if s["n_errors"]:
            lines.append(f"  {s['n_errors']} error rows, e.g. {s['error_examples'][0]}")
        for e in s["methods"]:
            chi = e["chi_square"]
            lines.append(f"  {e['method']:18s} FR {pct(e['fr'])} (n={e['n']}), Spearman {fmt_num(e['spearman']['mean'], 2) or 'n/a'}"
                         f", Kendall {fmt_num(e['kendall']['mean'], 2) or 'n/a'}, chi-square p {fmt_p(chi['p']) or 'n/a'}")
        lines.append("Table 6.3 (" + ", ".join(s["pooled_methods"]) + " pooled): rank, attribute or part, FR, n")
        for r in ranked_items(s):
            lines.append(f"  {r['rank']:2d}. {r['item']:12s} {r['category']:38s} {pct(r['fr']):>7s} "
                         f"[{pct(r['ci_low'])}, {pct(r['ci_high'])}] n={r['n']}")
        if s["attributes"] is None:
            lines.append("FR by gender and race of image A needs labels: rerun with --labels DIR "
                         "(e.g. ../shared/data/lfw-labels)")
        return "\n".join(lines)


EXPERIMENT = Experiment63()
