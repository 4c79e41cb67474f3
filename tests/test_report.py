"""Tables, figures and the HTML report from a synthetic summary.json (no model needed).

The browser test opens the report in headless Chromium; it is skipped when Chromium, chromedriver
or selenium are missing (``tests/setup_browser.sh`` installs the first two).
"""
from __future__ import annotations

import base64
import copy
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from falsify.experiments import exp_6_1 as E61
from falsify.experiments import exp_6_2 as E62
from falsify.experiments import registry as R
from falsify.report import figures as F
from falsify.report import html as H
from falsify.report import tables as T
from falsify.report.explain import PairExplanation, explanation_figure
from falsify.report.render import Table, frame, to_html

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# method -> (passed, falsified, untestable, error); lime never testable, one custom name to escape
COUNTS = {
    "gradcam": (30, 8, 2, 0),
    "gradcam++": (28, 10, 2, 0),
    "biometric-gradcam": (33, 5, 2, 0),
    "ig": (20, 18, 2, 0),
    "occlusion": (25, 12, 3, 0),
    "lime": (0, 0, 39, 1),
    "my_method#1": (22, 16, 2, 0),
    "random": (5, 33, 2, 0),
}
EDGES = [-0.3, -0.1, 0.02, 0.1, 0.4]


def _wilson(k: int, n: int) -> tuple[float, float]:
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return float(lo), float(hi)


def make_summary(with_6_2: bool = True) -> dict:
    """A realistic summary.json: 8 methods, comparisons against random and gradcam, 6.2 strata,
    one error, and null values where the runner writes NaN."""
    methods = []
    for i, (m, (p, f, u, e)) in enumerate(COUNTS.items()):
        n = p + f
        fr, (lo, hi) = (f / n, _wilson(f, n)) if n else (None, (None, None))
        methods.append({
            "method": m, "n": 40, "n_passed": p, "n_falsified": f, "n_untestable": u, "n_error": e,
            "fr": fr, "ci_low": lo, "ci_high": hi,
            "mean_d_high": None if not n else 0.30 + 0.02 * i, "mean_d_low": None if not n else 0.12 - 0.005 * i,
            "mean_margin": None if not n else 0.2, "margin_ci": [0.15, 0.25] if n else [None, None],
            "mean_d_prime": None if m in ("lime", "my_method#1") else 3.1 - 0.3 * i,
            "seconds_per_pair": 1.9 + i,
        })
    comparisons = []
    p_by = {"gradcam": 0.0004, "gradcam++": 0.002, "biometric-gradcam": 0.00001, "ig": 0.04, "occlusion": 0.003,
            "my_method#1": 0.02}
    for m in ("gradcam", "gradcam++", "biometric-gradcam", "ig", "occlusion", "my_method#1"):
        comparisons.append({"method": m, "against": "random", "n_paired": 36, "n01": 2, "n10": 20,
                            "p": p_by[m] / 3, "p_holm": p_by[m], "cohens_h": -1.1, "significant": p_by[m] < 0.05})
    for m in ("gradcam++", "biometric-gradcam", "ig", "occlusion"):
        comparisons.append({"method": m, "against": "gradcam", "n_paired": 36, "n01": 4, "n10": 6,
                            "p": 0.035, "p_holm": 0.42, "cohens_h": 0.1, "significant": False})
    # the runner could not compute this one: p is NaN -> null
    comparisons.append({"method": "my_method#1", "against": "gradcam", "n_paired": 0, "n01": 0, "n10": 0,
                        "p": None, "p_holm": None, "cohens_h": None, "significant": None})
    summary = {
        "experiment": "6.1",
        "created": "2026-11-25T20:30:00Z",
        "model": "dlib-resnet",
        "config": {"data": "/data/lfw", "pairs": None, "model": "dlib-resnet", "methods": list(COUNTS),
                   "n_pairs": 40, "K": 8, "seed": 0, "fill": "blur", "granularity": "grid", "grid": 14, "q": 0.2,
                   "tau_high": 0.3, "tau_low": 0.1, "epsilon": 0.1, "options": {"ig": {"steps": 64}}},
        "environment": {"falsify": "0.1.0", "python": "3.11.7", "torch": "2.13.0+cpu",
                        "platform": "Linux-6.1-x86_64", "cpu_count": 2, "device": "cpu"},
        "data": {"source": "/data/lfw/pairs.txt", "n_pairs": 40, "n_genuine": 20, "n_impostor": 20,
                 "n_skipped": 118, "skipped_examples": ["pairs.txt:45: missing <b>A/A_0009.jpg</b>",
                                                        "pairs.txt:46: unreadable B/B_0001.jpg"]},
        "n_errors": 1,
        "errors": [{"method": "lime", "pair": "A/A_0001.jpg|B/B_0002.jpg",
                    "error": "RuntimeError: <boom> & 'quotes' \"double\""}],
        "elapsed_s": 412.3,
        "methods": methods,
        "comparisons": comparisons,
    }
    if with_6_2:
        strata, corr = [], []
        for j, m in enumerate(COUNTS):
            for q in range(1, 5):
                if m == "lime":
                    p, f, u = 0, 0, 10
                else:
                    f = [6, 3, 2, 1][q - 1] if m != "random" else 8
                    p, u = 10 - f - (q == 2), int(q == 2)
                n = p + f
                fr, (lo, hi) = (f / n, _wilson(f, n)) if n else (None, (None, None))
                strata.append({"method": m, "quartile": q, "margin_low": EDGES[q - 1], "margin_high": EDGES[q],
                               "n_passed": p, "n_falsified": f, "n_untestable": u, "fr": fr,
                               "ci_low": lo, "ci_high": hi})
            corr.append({"method": m, "n": 38, "spearman_rho": None if m == "lime" else -0.21 - 0.01 * j,
                         "p": None if m == "lime" else 0.2 / (j + 1)})
        summary["experiment_6_2"] = {"quartile_edges": EDGES, "strata": strata, "correlation": corr, "unit": "pair"}
    return summary


#: Control rows added by make_control_summary: method -> (passed, falsified, untestable)
CONTROL_COUNTS = {
    "centre": (24, 14, 2),
    "edge": (12, 26, 2),
    "gradcam@random-model": (9, 29, 2),
    "ig@random-model": (8, 30, 2),
}
IG_SENTENCE = ("ig is not falsified significantly less often than the centre prior (McNemar, Holm-corrected): "
               "its falsification rate does not show that it explains this model on these images.")


def make_control_summary(criterion: str = "beyond-prior", all_beat: bool = False) -> dict:
    """make_summary (no 6.2) with the schema's control information: a ``control`` flag per row, the
    controls centre, edge and two @random-model rows (centre placed among the methods, to be grouped
    below them), comparisons against centre and each method's own @random-model, the verdicts of
    ``summary["controls"]`` (ig does not beat centre unless ``all_beat``), the prior and the criterion."""
    s = make_summary(with_6_2=False)
    rows = {r["method"]: r for r in s["methods"]}
    for m, (p, f, u) in CONTROL_COUNTS.items():
        lo, hi = _wilson(f, p + f)
        rows[m] = {"method": m, "n": 40, "n_passed": p, "n_falsified": f, "n_untestable": u, "n_error": 0,
                   "fr": f / (p + f), "ci_low": lo, "ci_high": hi, "mean_d_high": 0.25, "mean_d_low": 0.14,
                   "mean_d_prime": 1.2}
    order = ["gradcam", "centre"] + [m for m in COUNTS if m != "gradcam"] + [m for m in CONTROL_COUNTS if m != "centre"]
    s["methods"] = [{**rows[m], "control": m in ("random", "centre", "edge") or "@" in m} for m in order]
    ig_p = 0.6 if all_beat else 0.30

    def comp(m, against, p_holm, fr, fr_against):
        sig = p_holm < 0.05
        return {"method": m, "against": against, "n_paired": 36, "n_excluded": 4, "n10": 3, "n01": 12,
                "fr": fr, "fr_against": fr_against, "p": p_holm / 4, "cohens_h": -0.5, "p_holm": p_holm,
                "significant": sig, "beats": sig and fr < fr_against}

    s["comparisons"] += [
        comp("gradcam", "centre", 0.0002, 0.21, 0.37),
        comp("ig", "centre", 0.03 if all_beat else ig_p, 0.47 if not all_beat else 0.30, 0.37),
        comp("biometric-gradcam", "centre", 0.001, 0.13, 0.37),
        comp("edge", "centre", 0.01, 0.68, 0.37),
        comp("gradcam", "gradcam@random-model", 0.002, 0.21, 0.76),
        comp("ig", "ig@random-model", 0.04, 0.47, 0.79),
    ]
    s["controls"] = [
        {"method": "gradcam", "checked": ["centre", "gradcam@random-model"], "beats_all": True, "not_beaten": [],
         "sentence": None},
        {"method": "biometric-gradcam", "checked": ["centre"], "beats_all": True, "not_beaten": [], "sentence": None},
        {"method": "ig", "checked": ["centre", "ig@random-model"], "beats_all": all_beat,
         "not_beaten": [] if all_beat else ["centre"], "sentence": None if all_beat else IG_SENTENCE},
    ]
    s["prior"] = {"cells": [0.1 * i for i in range(100)], "grid": 10, "size": [150, 150], "n_images": 40,
                  "fill": "blur", "delta": None}
    s["falsification"] = {"fill": "blur", "K": 8, "tau_high": 0.3, "tau_low": 0.1, "epsilon": 0.1,
                          "criterion": criterion, "delta": None}
    if criterion == "beyond-prior":
        s["prior"]["delta"] = {"delta": 0.031, "quantile": 0.95, "n": 160, "excess_median": 0.004}
        s["falsification"]["delta"] = 0.031
    return s


#: A calibration as the runner stores it (dlib on the shared sample; angles in radians).
CALIBRATION = {
    "model": "dlib-resnet", "source": "/data/lfw/pairs.txt", "n_genuine": 300, "n_impostor": 300,
    "threshold_cos": 0.9096036829313741, "threshold_angle": 0.4284671476816761, "accuracy": 0.9816666666666667,
    "genuine_quantiles": {"p5": 0.2205, "p10": 0.2420, "p25": 0.2665, "p50": 0.3086, "p75": 0.3470, "p90": 0.3854,
                          "p95": 0.4106},
    "impostor_quantiles": {"p5": 0.4728, "p10": 0.4890, "p25": 0.5309, "p50": 0.5733, "p75": 0.6217, "p90": 0.6595,
                           "p95": 0.6829},
    "high_fraction": 0.5, "low_fraction": 0.25, "tau_high": 0.21423357384083805, "tau_low": 0.10711678692041902,
    "epsilon": 0.26472239196300507,
}


def make_calibrated_summary() -> dict:
    """make_control_summary as a default 'falsify run' writes it: thresholds calibrated (null in the
    config, the calibrated values in the test's settings and ``calibration``), fill mean for the test
    and blur for the prior, delta 0 given, no d' (one counterfactual per region: an all-empty
    column) and the alignment survey."""
    s = make_control_summary()
    s["config"].update(tau_high=None, tau_low=None, epsilon=None, fill="mean", q=0.1, criterion="beyond-prior",
                       delta=0.0, calibration_pairs=600, prior_images=40)
    s["falsification"].update(fill="mean", K=16, q=0.1, delta=0.0,
                              **{k: CALIBRATION[k] for k in ("tau_high", "tau_low", "epsilon")})
    s["prior"]["delta"] = None
    s["calibration"] = dict(CALIBRATION)
    for r in s["methods"]:
        r["mean_d_prime"] = None
    s["alignment"] = {"template": "dlib-150", "images": 80, "aligned": 79, "no_face_found": 1,
                      "no_face_examples": ["/data/lfw/John_Thune/John_Thune_0001.jpg"], "detector_runs": 905}
    return s


def write_summary(out: Path, summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


# The report's toolkit takes the experiments' sections; the registry makes them from a summary.
def write_tables(summary: dict, out: Path) -> list[Path]:
    return T.write_tables(R.sections(summary), out)


def write_figures(summary: dict, out: Path, explanations=None, pair_labels=None) -> list[Path]:
    return F.write_figures(R.sections(summary, explanations, pair_labels), out)


def write_report(out: Path) -> Path:
    """report.html alone, from OUT/summary.json (as ``falsify report`` reads it)."""
    return R.write_page(out, H.load_summary(out))


def render_report(summary: dict, out) -> str:
    return H.render_report(summary, R.sections(summary), out)


def fake_explanations(n: int = 2, methods=("gradcam", "ig", "random"), size: int = 24) -> list[PairExplanation]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        e = PairExplanation(torch.rand(3, size, size, generator=g), torch.rand(3, size, size, generator=g),
                            cosine=0.7 - 0.5 * i, angle=math.acos(0.7 - 0.5 * i))
        for m in methods:
            e.maps_a[m] = torch.rand(size, size, generator=g)
            e.maps_b[m] = torch.rand(size, size, generator=g)
        out.append(e)
    return out


@pytest.fixture(scope="module")
def summary() -> dict:
    return make_summary()


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, summary) -> Path:
    """A full output folder: summary.json, tables, figures (with a saliency grid) and report.html."""
    out = tmp_path_factory.mktemp("run")
    write_summary(out, summary)
    write_tables(summary, out)
    expl = fake_explanations()
    write_figures(summary, out, explanations=expl, pair_labels=["genuine\ncos 0.700", "impostor\ncos 0.200"])
    write_report(out)
    return out


# ---------------------------------------------------------------------------------------------
# formatting


def test_formatting_helpers():
    assert T.fmt_p(0.0004) == "<0.001"
    assert T.fmt_p(0.035) == "0.035"
    assert T.fmt_p(0.42) == "0.42"
    assert T.fmt_p(1.0) == "1.00"
    assert T.fmt_p(None) is None and T.fmt_p(float("nan")) is None
    assert T.fmt_rate_ci(0.2105, 0.11, 0.36) == "21.1 [11.0, 36.0]"
    assert T.fmt_rate_ci(0.5, None, 0.7) == "50.0"
    assert T.fmt_rate_ci(None, 0.1, 0.2) is None
    assert T.fmt_num(float("inf")) is None and T.fmt_num("x") is None and T.fmt_num(True) is None
    assert T.latex_escape("a_b#c%d&e+f") == r"a\_b\#c\%d\&e+f"
    assert T.latex_escape("{x}$^~\\") == r"\{x\}\$\textasciicircum{}\textasciitilde{}\textbackslash{}"
    for k, n in ((0, 10), (3, 10), (10, 10), (8, 38)):
        assert T.wilson_ci(k, n) == pytest.approx(_wilson(k, n), abs=1e-9)
    assert T.wilson_ci(0, 0) is None
    assert H.format_elapsed(412.3) == "6 min 52 s"
    assert H.format_elapsed(12.34) == "12.3 s"
    assert H.format_elapsed(7322) == "2 h 02 min"
    assert H.format_elapsed(None) is None


def test_rate_falls_back_to_counts():
    fr, lo, hi = T.rate_of({"n_passed": 30, "n_falsified": 10})
    assert fr == pytest.approx(0.25) and (lo, hi) == pytest.approx(_wilson(10, 40))
    assert T.rate_of({"fr": None, "n_passed": 0, "n_falsified": 0}) == (None, None, None)


# ---------------------------------------------------------------------------------------------
# LaTeX tables


def _unescaped(tex: str, ch: str) -> int:
    return len(re.findall(r"(?<!\\)" + re.escape(ch), tex))


def _check_structure(tex: str, n_rows: int, n_header_rows: int = 1) -> list[str]:
    """Balanced braces and environments, booktabs rules in order; returns the body rows."""
    stripped = tex.replace(r"\{", "").replace(r"\}", "")
    depth = 0
    for c in stripped:
        depth += {"{": 1, "}": -1}.get(c, 0)
        assert depth >= 0, "a } closes nothing"
    assert depth == 0, "unbalanced braces"
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, f"\\end{{{env}}} closes nothing"
    assert not stack, f"unclosed environments {stack}"
    assert tex.count(r"\begin{table}") == 1 and len(re.findall(r"\\begin\{tabular\}\{", tex)) == 1
    i_top, i_mid, i_bot = tex.index(r"\toprule"), tex.index(r"\midrule"), tex.index(r"\bottomrule")
    assert i_top < i_mid < i_bot
    assert tex.index(r"\caption") < tex.index(r"\begin{tabular}")
    n_cols = len(re.search(r"\\begin\{tabular\}\{([lrc]+)\}", tex).group(1))
    header = [ln for ln in tex[i_top:i_mid].splitlines() if ln.endswith(r"\\")]
    body = [ln for ln in tex[i_mid:i_bot].splitlines() if ln.endswith(r"\\")]
    assert len(header) == n_header_rows
    for ln in header + body:
        spans = sum(int(k) - 1 for k in re.findall(r"\\multicolumn\{(\d+)\}", ln))
        assert _unescaped(ln, "&") + spans == n_cols - 1, ln
        assert _unescaped(ln, "%") == 0 and _unescaped(ln, "#") == 0, ln
    body = [ln for ln in body if not ln.startswith(r"\multicolumn")]  # group rows ("Controls") span all columns
    assert len(body) == n_rows
    return body


def test_table_6_1(summary):
    tex = E61.table_6_1_tex(summary)
    body = _check_structure(tex, n_rows=len(COUNTS), n_header_rows=2)
    assert r"\multicolumn{4}{c}{Pairs}" in tex and r"\cmidrule(lr){2-5}" in tex
    assert r"\label{tab:exp-6-1}" in tex
    caption = re.search(r"\\caption\{(.*)\}\n\\label", tex, re.S).group(1)
    for part in ("40 pairs", "dlib-resnet", "K = 1 (deterministic fill)", "fill blur"):
        assert part in caption
    rows = {ln.split(" & ")[0]: ln.split(" & ") for ln in body}
    assert list(rows) == [T.latex_escape(m) for m in COUNTS]  # summary order, names escaped
    assert r"my\_method\#1" in rows and "gradcam++" in rows
    # method, passed, falsified, untestable, errors (lime had one), FR, d_high, d_low, d', p random, p gradcam
    g = rows["gradcam"]
    assert g[1:5] == ["30", "8", "2", "0"]
    lo, hi = _wilson(8, 38)
    assert g[5] == f"21.1 [{100 * lo:.1f}, {100 * hi:.1f}]"
    assert g[6:9] == ["0.300", "0.120", "3.10"]
    assert g[9] == r"\textless{}0.001*" and g[10].startswith("--")
    assert rows["lime"][5] == "--" and rows["lime"][4] == "1"
    assert rows["random"][9] == "--" and rows["random"][10].startswith(r"\textless{}0.001*")
    assert rows["ig"][9] == "0.040*" and rows["ig"][10].startswith("0.42 ")
    assert rows[r"my\_method\#1"][8] == "--" and rows[r"my\_method\#1"][10].startswith("--")


def test_table_6_1_without_errors_or_comparisons(summary):
    s = copy.deepcopy(summary)
    for r in s["methods"]:
        r["n_error"] = 0
    del s["comparisons"]
    tex = E61.table_6_1_tex(s)
    body = _check_structure(tex, n_rows=len(COUNTS), n_header_rows=2)
    assert "error" not in tex and r"\multicolumn{3}{c}{Pairs}" in tex
    assert all(ln.split(" & ")[-1].startswith("--") and ln.split(" & ")[-2] == "--" for ln in body)


NON_CONTROLS = [m for m in COUNTS if m != "random"]
CONTROLS_IN_ORDER = ["centre", "random", "edge", "gradcam@random-model", "ig@random-model"]


def _caption(tex: str) -> str:
    return re.search(r"\\caption\{(.*)\}\n\\label", tex, re.S).group(1)


def test_table_6_1_controls():
    s = make_control_summary()
    header, cells = E61.table_6_1_cells(s)
    assert header[-5:] == ["p vs random", "p vs gradcam", "p vs centre", "p vs own random model", "Beats controls"]
    # the methods in the summary's order, then the controls (centre was listed second)
    assert [c[0] for c in cells] == NON_CONTROLS + CONTROLS_IN_ORDER
    assert [c for _, c in E61.table_6_1_rows(s)] == [False] * len(NON_CONTROLS) + [True] * len(CONTROLS_IN_ORDER)
    row = {c[0]: dict(zip(header, c)) for c in cells}
    assert row["gradcam"]["p vs centre"] == "<0.001*" and row["gradcam"]["p vs own random model"] == "0.002*"
    assert row["gradcam"]["Beats controls"] == "yes" and row["biometric-gradcam"]["Beats controls"] == "yes"
    assert row["ig"]["p vs centre"] == "0.30" and row["ig"]["p vs own random model"] == "0.040*"
    assert row["ig"]["Beats controls"] == "no (centre)"
    assert row["biometric-gradcam"]["p vs own random model"] is None  # its @random-model was not run
    assert row["lime"]["Beats controls"] is None and row["centre"]["p vs centre"] is None
    assert row["edge"]["p vs centre"] == "0.010*" and row["edge"]["Beats controls"] is None
    assert E61.beats_cell({"beats_all": False, "not_beaten": ["centre", "ig@random-model"]}) == \
        "no (centre, own random model)"

    tex = E61.table_6_1_tex(s)
    body = _check_structure(tex, n_rows=len(cells), n_header_rows=2)
    assert [ln.split(" & ")[0] for ln in body] == [T.latex_escape(m) for m in NON_CONTROLS + CONTROLS_IN_ORDER]
    n_cols = len(header)
    group = rf"\multicolumn{{{n_cols}}}{{l}}{{\textit{{Controls}}}} \\"
    lines = tex.splitlines()
    i = lines.index(group)
    assert lines[i - 2].startswith(r"my\_method\#1 & ") and lines[i - 1] == r"\midrule"
    assert lines[i + 1].startswith("centre & ")
    assert r"& $p$ vs & $p$ vs own & Beats \\" in tex and r"& centre & rand.\ model & controls \\" in tex
    assert body[NON_CONTROLS.index("ig")].endswith(r"& 0.30 & 0.040* & no (centre) \\")
    caption = _caption(tex)
    for part in ("Criterion: beyond the prior", r"$\delta = 0.031$ rad", r"calibrated: the 95\% quantile",
                 "160 tests", "Controls (below the rule) cannot be right about the model on this image",
                 "centre, the model's image-independent prior map", "edge, the Sobel gradient magnitude",
                 "random, a random map", "METHOD@random-model, the method's map computed on a randomised copy",
                 "Beats controls: FR significantly (Holm) lower"):
        assert part in caption, part
    assert "absolute" not in caption and "other-reference" not in caption

    # absolute thresholds, with their values; a delta given rather than calibrated
    caption = _caption(E61.table_6_1_tex(make_control_summary(criterion="absolute")))
    assert "Criterion: absolute thresholds" in caption and r"$\tau_{\mathrm{high}} = 0.300$" in caption
    assert r"$\epsilon = 0.100$ rad" in caption and "delta" not in caption
    given = make_control_summary()
    given["prior"]["delta"], given["falsification"]["delta"] = None, 0.05
    caption = _caption(E61.table_6_1_tex(given))
    assert r"$\delta = 0.050$ rad." in caption and "calibrated" not in caption
    assert T.criterion_of(given)["calibration"] is None


def test_table_6_1_of_an_old_summary(summary):
    """A summary from before controls and criteria: no control columns, absolute criterion, random
    (recognised by name) grouped as a control."""
    assert all("control" not in r for r in summary["methods"]) and "controls" not in summary
    header, cells = E61.table_6_1_cells(summary)
    assert header[-2:] == ["p vs random", "p vs gradcam"] and "Beats controls" not in header
    assert [c[0] for c in cells] == NON_CONTROLS + ["random"]
    tex = E61.table_6_1_tex(summary)
    caption = _caption(tex)
    assert "Criterion: absolute thresholds" in caption and r"$\tau_{\mathrm{low}} = 0.100$" in caption
    assert "Controls (below the rule) cannot be right about the model on this image: random, a random map." in caption
    assert "Beats controls" not in caption and "vs centre" not in caption
    assert rf"\multicolumn{{{len(header)}}}{{l}}{{\textit{{Controls}}}} \\" in tex
    assert T.criterion_of({}) == {"criterion": "absolute", "delta": None, "calibration": None, "tau_high": None,
                                  "tau_low": None, "epsilon": None}
    # a control flag in the summary wins over the name
    flagged = copy.deepcopy(summary)
    flagged["methods"][-1]["control"] = False
    assert [c for _, c in E61.table_6_1_rows(flagged)] == [False] * len(COUNTS)
    assert r"\textit{Controls}" not in E61.table_6_1_tex(flagged)


def test_table_6_2(summary):
    tex = E62.table_6_2_tex(summary)
    body = _check_structure(tex, n_rows=len(COUNTS), n_header_rows=2)
    assert r"\label{tab:exp-6-2}" in tex
    rows = {ln.split(" & ")[0]: ln.split(" & ") for ln in body}
    lo, hi = _wilson(6, 10)
    # two-line cells: FR with n, then the CI ("\\\\{}" keeps "[" from being read as an argument of "\\\\")
    assert rows["gradcam"][1] == (r"\begin{tabular}[t]{@{}r@{}}" + f"60.0 (n=10)\\\\{{}}[{100 * lo:.1f}, {100 * hi:.1f}]"
                                  + r"\end{tabular}")
    assert rows["lime"][1] == "n/a (n=0)" and rows["lime"][5].startswith("--")
    assert "$-$0.21" in rows["gradcam"][5] and "p=0.20" in rows["gradcam"][5]
    assert "[$-$0.10, +0.02]" in tex  # Q2's margin range under its name, with minus signs
    header, sub, cells = E62.table_6_2_cells(summary)
    assert header == ["Method", "Q1", "Q2", "Q3", "Q4", "Spearman rho"]
    assert sub[2] == "[-0.10, +0.02]"
    assert cells[0][1] == ("60.0 (n=10)", f"[{100 * lo:.1f}, {100 * hi:.1f}]") and cells[0][5] == ("-0.21", "p=0.20")
    assert E62.table_6_2_tex(make_summary(with_6_2=False)) is None


def test_write_tables(tmp_path, summary):
    paths = write_tables(summary, tmp_path)
    assert [p.name for p in paths] == ["table_6_1.tex", "table_6_2.tex"]
    assert all(p.parent == tmp_path / "tables" and r"\begin{table}" in p.read_text() for p in paths)
    paths = write_tables(make_summary(with_6_2=False), tmp_path / "b")
    assert [p.name for p in paths] == ["table_6_1.tex"]


def test_tables_compile_with_pdflatex(tmp_path, summary):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    write_tables(summary, tmp_path)
    (tmp_path / "tables" / "controls.tex").write_text(E61.table_6_1_tex(make_control_summary()))
    doc = tmp_path / "doc.tex"
    doc.write_text(
        "\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n"
        "\\begin{document}\n"
        "\\input{tables/table_6_1.tex}\n\\input{tables/table_6_2.tex}\n\\input{tables/controls.tex}\n"
        "\\end{document}\n"
    )
    res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    log = (tmp_path / "doc.log").read_text(errors="replace") if (tmp_path / "doc.log").exists() else res.stdout
    assert res.returncode == 0, log[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000
    assert "Overfull \\hbox" not in log, "a table is wider than the text"


# ---------------------------------------------------------------------------------------------
# figures


def test_fr_bar_chart(summary):
    fig = E61.fr_bar_chart(summary)
    ax = fig.axes[0]
    bars = [p for p in ax.patches if p.get_height() > 0]
    assert len(bars) == len(COUNTS) - 1  # lime has no testable pair: no bar, an "n/a"
    assert [p.get_hatch() for p in bars].count("///") == 1  # random is hatched
    assert bars[-1].get_hatch() == "///" and bars[-1].get_height() == pytest.approx(33 / 38)
    assert any(t.get_text() == "n/a" for t in ax.texts)
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(33 / 38)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "gradcam (n=38)" and labels[5] == "lime (n=0)"  # rotated: one line each
    assert any(t.get_text() == "random\n86.8%" for t in ax.texts)
    few = {**summary, "methods": summary["methods"][:2]}
    labels = [t.get_text() for t in E61.fr_bar_chart(few).axes[0].get_xticklabels()]
    assert labels == ["gradcam\nn=38", "gradcam++\nn=38"]
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 1
    assert ax.yaxis.get_major_formatter()(0.5, 0) == "50%"


def test_fr_bar_chart_controls():
    s = make_control_summary()
    fig = E61.fr_bar_chart(s)
    ax = fig.axes[0]
    labels = [t.get_text().split(" (n=")[0] for t in ax.get_xticklabels()]
    assert labels == NON_CONTROLS + CONTROLS_IN_ORDER
    bars = sorted((p for p in ax.patches if p.get_height() > 0), key=lambda p: p.get_x())
    grey = F._RANDOM_COLOUR
    from matplotlib.colors import to_rgb

    controls = [p for p in bars if p.get_hatch() == "///"]
    assert len(controls) == len(CONTROLS_IN_ORDER)
    assert all(to_rgb(p.get_facecolor()) == pytest.approx(to_rgb(grey)) for p in controls)
    n_methods = len(NON_CONTROLS)
    assert all(p.get_x() > n_methods - 0.5 for p in controls)  # right of the separator
    assert all(p.get_hatch() is None and p.get_x() < n_methods - 0.5 for p in bars if p not in controls)
    (sep,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert sep.get_xdata()[0] == pytest.approx(n_methods - 0.5)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["control"]
    assert legend.legend_handles[0].get_hatch() == "///"
    # only methods: no separator, no legend; only controls: a legend, no separator
    only = {**s, "methods": [r for r in s["methods"] if not r["control"]]}
    fig = E61.fr_bar_chart(only)
    assert not fig.legends and not [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == ":"]
    fig = E61.fr_bar_chart({**s, "methods": [r for r in s["methods"] if r["control"]]})
    assert len(fig.legends) == 1 and not [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == ":"]
    # 6.2: controls drawn dashed
    s62 = make_summary()
    s62["methods"] = [{**r, "control": r["method"] in ("random", "ig")} for r in s62["methods"]]
    handles, labels = E62.fr_vs_margin(s62).axes[0].get_legend_handles_labels()
    style = {label: h.lines[0].get_linestyle() for h, label in zip(handles, labels) if hasattr(h, "lines")}
    assert style["ig"] == style["random"] == "--" and style["gradcam"] == "-"


def test_fr_vs_margin(summary):
    fig = E62.fr_vs_margin(summary)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()][1] == "Q2\n[-0.10, +0.02]"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[: len(COUNTS)] == [m if m != "lime" else "lime (no testable pair)" for m in COUNTS] and "margin 0 (decision threshold)" in legend
    (vline,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert vline.get_xdata()[0] == pytest.approx(1.5 + 0.1 / 0.12)  # margin 0 inside Q2 = [-0.10, 0.02]
    with pytest.raises(ValueError, match="6_2"):
        E62.fr_vs_margin(make_summary(with_6_2=False))


def test_saliency_grid():
    expl = fake_explanations(3, methods=("gradcam", "ig"))
    del expl[1].maps_a["ig"]
    fig = F.saliency_grid(expl, ["gradcam", "ig"], ["genuine\ncos 0.700", "impostor\ncos 0.200", "x"])
    image_axes = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(image_axes) == 3 * 3 and len(fig.axes) == 3 * 3 + 1  # + colour bar
    assert [a.get_title() for a in image_axes[:3]] == ["face", "gradcam", "ig"]
    assert image_axes[0].get_ylabel() == "genuine\ncos 0.700"
    assert any(t.get_text() == "n/a" for t in image_axes[5].texts)  # pair 2 has no ig map
    fig = F.saliency_grid(expl[:1], ["gradcam"])
    assert fig.axes[0].get_ylabel() == "pair 1\ncos 0.700"
    with pytest.raises(ValueError):
        F.saliency_grid(expl, ["gradcam"], ["only one label"])


def test_method_colours_are_stable():
    a = F.method_colours(["gradcam", "ig", "random"])
    b = F.method_colours(["ig", "random", "saliency", "gradcam", "custom"])
    assert a["ig"] == b["ig"] and a["gradcam"] == b["gradcam"] and a["random"] == b["random"] == "#9a9a9a"
    assert len({str(v) for v in b.values()}) == 5


def test_the_report_is_a_toolkit_of_sections(tmp_path):
    """Sections made by hand, without any experiment: their tables are written and shown (the
    page's LaTeX sources from the tables in memory, not read back), the figures that can be drawn
    are, and the section's key and figure stems are not listed as "Other"."""
    from matplotlib.figure import Figure

    from falsify.report.section import FigureSpec, Section

    def draw():
        fig = Figure(figsize=(2, 2))
        fig.add_subplot().plot([0, 1])
        return fig

    table = Table(name="table_x", frame=frame(["Method", "n"], [["a_b", "1"]]), label="tab:x", caption="X.",
                  html_id="table-x")
    section = Section(title="X", anchor="exp-x", nav="X", key="experiment_x", tables=[table],
                      figures=[FigureSpec("fig_x", "An x.", draw), FigureSpec("fig_y", "Not drawable.")])
    assert [p.name for p in T.write_tables([section], tmp_path)] == ["table_x.tex"]
    assert [p.name for p in F.write_figures([section], tmp_path)] == ["fig_x.png", "fig_x.pdf"]
    assert (tmp_path / "tables" / "table_x.tex").read_text() == table.latex
    shutil.rmtree(tmp_path / "tables")  # the page does not read the .tex back
    summary = {"experiment": "x", "model": "m", "data": {}, "methods": [], "experiment_x": {"v": 1}, "extra": 2}
    page = H.write_report(summary, [section], tmp_path).read_text()
    assert "table_x.tex" in page and r"a\_b &amp; 1" in page
    other = page.split('id="config"')[1]
    assert "extra" in other and "experiment_x" not in other
    assert 'id="other-figures"' not in page  # fig_x is the section's


def test_each_table_is_rendered_once(tmp_path, summary, monkeypatch):
    """The .tex files, the page's tables and the page's LaTeX sources come from one rendering each."""
    from falsify.report import render

    counts: dict[tuple[str, str], int] = {}

    def counting(kind, real):
        def f(table):
            counts[kind, table.name] = counts.get((kind, table.name), 0) + 1
            return real(table)
        return f

    monkeypatch.setattr(render, "to_latex", counting("latex", render.to_latex))
    monkeypatch.setattr(render, "to_html", counting("html", render.to_html))
    R.write_report(tmp_path, summary)
    assert counts and set(counts.values()) == {1}
    assert {name for kind, name in counts if kind == "latex"} == {"table_6_1", "table_6_2"}


def test_write_figures(tmp_path, summary):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    paths = write_figures(summary, tmp_path)  # no explanations: no saliency grid
    assert sorted(p.name for p in paths) == sorted(
        ["fig_6_1_fr.png", "fig_6_1_fr.pdf", "fig_6_2_fr_vs_margin.png", "fig_6_2_fr_vs_margin.pdf"])
    for p in paths:
        head = p.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if p.suffix == ".png" else head.startswith(b"%PDF")
    img = plt.imread(tmp_path / "figures" / "fig_6_1_fr.png")
    assert img.shape[0] > 400 and img.shape[1] > 700  # 150 dpi
    assert plt.get_fignums() == before
    paths = write_figures(make_summary(with_6_2=False), tmp_path / "b", explanations=fake_explanations(1))
    assert sorted(p.stem for p in paths) == ["fig_6_1_fr", "fig_6_1_fr", "fig_6_1_saliency", "fig_6_1_saliency"]
    # save_figure replaces a suffix and closes pyplot figures
    fig = plt.figure()
    out = F.save_figure(fig, tmp_path / "c" / "x.png")
    assert [p.name for p in out] == ["x.png", "x.pdf"] and fig.number not in plt.get_fignums()


# ---------------------------------------------------------------------------------------------
# HTML report


def _images(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]+)"', page)


def test_report_content(report_dir):
    page = (report_dir / "report.html").read_text()
    assert "<title>falsify report: experiment 6.1 (dlib-resnet)</title>" in page
    assert "<h1>falsify report: experiment 6.1 (dlib-resnet)</h1>" in page
    # self-contained: inline CSS, every image a PNG data URI, no external resource
    assert "<style>" in page and "<link" not in page and "<script" not in page
    srcs = _images(page)
    assert len(srcs) == 3  # 6.1 bar chart, saliency grid, 6.2 figure
    for s in srcs:
        assert s.startswith("data:image/png;base64,")
        assert base64.b64decode(s.split(",", 1)[1]).startswith(b"\x89PNG")
    assert not re.search(r'(src|href)="(https?:)?//', page) and "url(" not in page
    # 150-dpi figures are shown at their intended size: 96/150 of their pixel width
    png = (report_dir / "figures" / "fig_6_1_fr.png").read_bytes()
    width = int.from_bytes(png[16:20], "big")
    shown = H.png_display_width(png)
    assert abs(shown - width * 96 / 150) <= 1
    assert f'style="width:{shown}px"' in page
    assert H.png_display_width(b"not a png") is None
    # escaping of text from the summary
    assert "RuntimeError: &lt;boom&gt; &amp; &#x27;quotes&#x27; &quot;double&quot;" in page
    assert "missing &lt;b&gt;A/A_0009.jpg&lt;/b&gt;" in page and "<b>A/A_0009" not in page
    assert "my_method#1" in page
    # metadata, data counts, config
    for text in ("/data/lfw/pairs.txt", "2026-11-25T20:30:00Z", "6 min 52 s", "2.13.0+cpu", "118",
                 "First 2 of 118".lower(), "Errors", "A/A_0001.jpg|B/B_0002.jpg", "tau_high", "{&quot;ig&quot;"):
        assert text in page, text
    assert "Calibration" not in page  # no calibration key: no section
    # the 6.1 table carries the same cells as the LaTeX one
    t61 = re.search(r'<table id="table-6-1">(.*?)</table>', page, re.S).group(1)
    _, cells = E61.table_6_1_cells(make_summary())
    assert t61.count("<tr") == 2 + len(cells)  # the header, the units, the rows
    for row in cells:
        for c in row:
            if c is not None:
                assert f">{c.replace('<', '&lt;')}</td>" in t61, c
    assert '<tr class="control">' in t61
    assert re.search(r'<table id="comparisons-table">', page)
    # how to read
    for text in ("falsified / (passed + falsified)", "Wilson", "McNemar", "Holm", "<b>pairs</b>"):
        assert text in page, text
    # 6.2 section with the strata, the correlations and its figure
    assert 'id="exp-6-2"' in page and 'id="table-6-2"' in page and 'id="correlation-table"' in page
    assert 'id="fig_6_2_fr_vs_margin"' in page and ">60.0 (n=10)<br>[31.3, 83.2]</td>" in page
    # the LaTeX sources
    assert "table_6_1.tex" in page and r"\toprule" in page


def test_report_without_6_2_and_sparse_summary(tmp_path):
    s = make_summary(with_6_2=False)
    write_summary(tmp_path, s)
    write_figures(s, tmp_path)
    page = write_report(tmp_path).read_text()
    assert 'id="exp-6-2"' not in page and len(_images(page)) == 1
    # extra sections the runner may add: falsification settings, calibration, unknown keys
    s.update(falsification={"K": 16, "opt_steps": 100}, calibration=None, started="2026-11-25T20:00:00Z",
             n_rows=320, extra_key={"long": "x" * 5000})
    write_summary(tmp_path, s)
    page = write_report(tmp_path).read_text()
    for text in ("Falsification test settings", "opt_steps", "the thresholds were given", "2026-11-25T20:00:00Z",
                 "result rows", "extra_key", "(5012 characters)"):
        assert text in page, text
    assert "x" * 1001 not in page
    # almost nothing recorded: still a page
    bare = tmp_path / "bare"
    write_summary(bare, {"experiment": None, "model": None, "data": None,
                         "methods": [{"method": "gradcam", "fr": float("nan")}]})
    page = write_report(bare).read_text()
    assert "<h1>falsify report: experiment 6.1</h1>" in page and "gradcam" in page
    with pytest.raises(FileNotFoundError, match="summary.json"):
        write_report(tmp_path / "nothing")


def _section(page: str, start: str, end: str) -> str:
    i = page.index(start)
    return page[i : page.index(end, i)]


def test_report_controls(tmp_path):
    s = make_control_summary()
    write_summary(tmp_path, s)
    write_figures(s, tmp_path)
    page = write_report(tmp_path).read_text()
    assert "<script" not in page and "<link" not in page
    assert all(src.startswith("data:image/png;base64,") for src in _images(page)) and len(_images(page)) == 1
    # the 6.1 table: the methods, then the controls in their own body, each row marked
    t61 = _section(page, '<table id="table-6-1">', "</table>")
    methods, controls = t61.split('<tbody class="controls">')
    assert "control" not in methods.split("<tbody>")[1]
    names = re.findall(r'<tr class="control"><td class="method">([^<]+)</td>', controls)
    assert names == CONTROLS_IN_ORDER and controls.count("<tr") == len(CONTROLS_IN_ORDER)
    assert "<th>Beats<br>controls</th>" in t61
    assert "<td>no (centre)</td>" in t61 and "<td>yes</td>" in t61
    assert "Grey rows below the rule are controls" in page
    # the controls: what they are, and the methods that do not beat theirs, in plain sentences
    section = _section(page, '<h3 id="controls">', '<h3 id="comparisons">')
    for text in ("cannot be right about the model on this image", "<code>centre</code>, the model&#x27;s "
                 "image-independent prior map", "<code>edge</code>, the Sobel", "<code>METHOD@random-model</code>"):
        assert text in section, text
    callout = _section(section, 'id="controls-not-beaten"', "</div>")
    assert "Methods that do not beat their controls" in callout and f"<li>{IG_SENTENCE}</li>" in callout
    assert callout.count("<li>") == 1 and "controls-all-beaten" not in page and "controls-not-run" not in page
    comps = _section(page, '<table id="comparisons-table">', "</table>")
    assert "<th>Beats</th>" in comps
    # the criterion, and how delta was calibrated
    criterion = _section(page, '<p id="criterion">', "</p>")
    for text in ("Criterion: <b>beyond the prior</b>", "over 40 untested images", "by more than &delta; = 0.031 rad",
                 "&delta; was calibrated", "the 95% quantile", "(160 tests, median excess 0.004 rad)"):
        assert text in criterion, text
    assert "absolute" not in criterion
    # the prior in the configuration, without its cells; no new key left for "Other"
    prior = _section(page, '<h3 id="prior">', "</table>")
    assert "<th>n_images</th><td>40 images</td>" in prior and "<th>cells</th>" not in page
    assert "<h3>Other</h3>" not in page
    for key in ("criterion", "delta"):
        assert f"<th>{key}</th>" in _section(page, "<h3>Falsification test settings</h3>", "</table>")

    # every checked method beats its controls: one sentence, no callout
    write_summary(tmp_path, make_control_summary(all_beat=True))
    page = write_report(tmp_path).read_text()
    assert "controls-not-beaten" not in page
    assert re.search(r'<p id="controls-all-beaten">Every method checked against its controls \(gradcam, '
                     r'biometric-gradcam, ig\) is falsified significantly less often than each of them', page)
    # a sentence is text, not markup
    odd = make_control_summary()
    odd["controls"][2]["sentence"] = "ig <b>fails</b> & more"
    write_summary(tmp_path, odd)
    page = write_report(tmp_path).read_text()
    assert "<li>ig &lt;b&gt;fails&lt;/b&gt; &amp; more</li>" in page and "<b>fails</b>" not in page
    # absolute thresholds; a delta given, not calibrated
    write_summary(tmp_path, make_control_summary(criterion="absolute"))
    criterion = _section(write_report(tmp_path).read_text(), '<p id="criterion">', "</p>")
    assert "Criterion: <b>absolute thresholds</b>" in criterion and "&tau;<sub>high</sub> = 0.300" in criterion
    assert "&delta;" not in criterion
    given = make_control_summary()
    given["prior"]["delta"], given["falsification"]["delta"] = None, 0.05
    write_summary(tmp_path, given)
    criterion = _section(write_report(tmp_path).read_text(), '<p id="criterion">', "</p>")
    assert "&delta; = 0.050 rad" in criterion and "was given for the run, not calibrated" in criterion


def test_report_leads_with_the_answer(tmp_path):
    """The page opens with the run's answer (which methods beat their controls, with FR and 95% CI),
    the FR table and the FR figure; how to read them next; run, data and configuration last."""
    s = make_calibrated_summary()
    write_summary(tmp_path, s)
    write_figures(s, tmp_path)
    page = write_report(tmp_path).read_text()
    marks = ['id="headline"', '<table id="table-6-1">', 'id="fig_6_1_fr"', 'id="table-6-1-caption"', 'id="how-to-read"',
             '<h3 id="controls">', '<h2 id="run">', "<h3>Environment</h3>", '<h2 id="data">', '<h2 id="config">',
             '<h3 id="thresholds">']
    at = [page.index(m) for m in marks]
    assert at == sorted(at), [m for m, _ in sorted(zip(marks, at), key=lambda x: x[1])]
    assert page.index("<h2") == page.index('<h2 id="exp-6-1">')  # nothing before the answer
    nav = re.findall(r'<a href="#([^"]+)">', _section(page, "<nav>", "</nav>"))
    assert nav == ["exp-6-1", "how-to-read", "run", "data", "config"]
    headline = _section(page, 'id="headline"', "</div>")
    assert ("<b>gradcam and biometric-gradcam are falsified significantly less often than their controls</b> "
            "(2 of 3 methods checked") in headline
    lo, hi = _wilson(8, 38)
    assert (f"<li><b>gradcam</b>: FR 21.1% (95% CI {100 * lo:.1f}–{100 * hi:.1f}%); controls: centre 36.8%, "
            "own random model 76.3%</li>") in headline
    assert "<li><b>biometric-gradcam</b>: FR 13.2% (95% CI" in headline
    lo, hi = _wilson(18, 38)
    assert f"Not shown to beat its controls: <b>ig</b>, FR 47.4% (95% CI {100 * lo:.1f}–{100 * hi:.1f}%)." in headline
    assert "centre prior is falsified by construction" in headline  # beyond-prior
    # every method beats its controls; none does
    write_summary(tmp_path, make_control_summary(all_beat=True))
    headline = _section(write_report(tmp_path).read_text(), 'id="headline"', "</div>")
    assert "<b>gradcam, biometric-gradcam and ig are falsified" in headline and "Not shown" not in headline
    none = make_control_summary(criterion="absolute")
    for v in none["controls"]:
        v.update(beats_all=False, not_beaten=["centre"])
    write_summary(tmp_path, none)
    headline = _section(write_report(tmp_path).read_text(), 'id="headline"', "</div>")
    assert "<b>No method is falsified significantly less often than its controls</b> (0 of 3 methods" in headline
    assert "Not shown to beat their controls: <b>gradcam</b>, FR 21.1%" in headline
    assert "by construction" not in headline  # absolute criterion


def test_headline_without_the_centre_prior_or_randomised_models(summary):
    """Runs without centre or --sanity (and older summaries): the comparisons with the controls that
    were run (random here, recognised by its name); none at all; no method."""
    h = E61.headline(summary)
    assert h["kind"] == "other"
    assert h["beating"] == ["gradcam", "gradcam++", "biometric-gradcam", "ig", "occlusion", "my_method#1"]
    assert h["items"][0]["controls"] == [{"label": "random", "fr": "86.8%", "beaten": True}]
    page = render_report(summary, "/nonexistent")
    headline = _section(page, 'id="headline"', "</div>")
    assert "No method was compared with the centre prior or with its own maps on a randomised model" in headline
    assert "Against the controls that were run (random;" in headline
    assert "<li><b>ig</b>: FR 47.4% (95% CI" in headline and "controls: random 86.8%" in headline
    bare = {**summary, "comparisons": []}
    h = E61.headline(bare)
    lo, hi = _wilson(8, 38)
    assert h["kind"] == "none" and h["items"] == []
    assert h["rates"][0] == ("gradcam", f"21.1% (95% CI {100 * lo:.1f}–{100 * hi:.1f}%)")
    assert "<b>No method was compared with a control</b>" in render_report(bare, "/nonexistent")
    assert E61.headline({**summary, "methods": []})["kind"] == "empty"


def test_configuration_shows_the_calibrated_thresholds_with_units(tmp_path):
    s = make_calibrated_summary()
    write_summary(tmp_path, s)
    page = write_report(tmp_path).read_text()
    th = _section(page, '<table class="kv" id="thresholds-table">', "</table>")
    unused = "; not used by the beyond-prior verdict)"
    for row in ("<th>τ_high</th><td>0.2142 rad = 0.5 × θ* (calibrated" + unused,
                "<th>τ_low</th><td>0.1071 rad = 0.25 × θ* (calibrated" + unused,
                "<th>ε</th><td>0.2647 rad = median impostor angle − median genuine angle (calibrated" + unused,
                "<th>δ</th><td>0 rad (given)</td>",
                "<th>decision threshold</th><td>cos θ* = 0.9096, θ* = 0.4285 rad (24.5°); accuracy 98.2% on 300 "
                "genuine + 300 impostor pairs</td>",
                "<th>fill (test)</th><td>mean: what replaces the hidden regions</td>",
                "<th>fill (prior map)</th><td>blur: the fill of the occlusion maps the prior averages (the test hides "
                "regions with its own fill, mean)</td>",
                "<th>counterfactuals</th><td>1 per region (deterministic fill)</td>"):
        assert row in th, row
    # the run's settings show what the calibration gave, not "none"; numbers carry their units
    run = _section(page, "<h3>Run settings</h3>", "</table>")
    for row in ("<th>tau_high</th><td>calibrated: 0.2142 rad</td>", "<th>tau_low</th><td>calibrated: 0.1071 rad</td>",
                "<th>epsilon</th><td>calibrated: 0.2647 rad</td>", "<th>delta</th><td>0 rad</td>",
                "<th>n_pairs</th><td>40 pairs</td>", "<th>grid</th><td>14 × 14 cells</td>",
                "<th>q</th><td>0.1 (10% of the features in S_high and in S_low)</td>",
                "<th>calibration_pairs</th><td>600 pairs</td>", "<th>prior_images</th><td>40 images</td>"):
        assert row in run, row
    fals = _section(page, "<h3>Falsification test settings</h3>", "</table>")
    assert "<th>tau_high</th><td>0.2142 rad</td>" in fals and "<th>K</th><td>16 counterfactuals per region" in fals
    cal = _section(page, '<h3 id="calibration">', "</table>")
    for row in ("<th>threshold_cos</th><td>0.9096 (cosine)</td>", "<th>threshold_angle</th><td>0.4285 rad (24.5°)</td>",
                "<th>accuracy</th><td>98.17%</td>", "<th>n_genuine</th><td>300 pairs</td>",
                "<th>high_fraction</th><td>0.5 × θ* (threshold angle)</td>", "<th>epsilon</th><td>0.2647 rad</td>"):
        assert row in cal, row
    quantiles = re.search(r"<th>genuine_quantiles</th><td>([^<]*)</td>", cal).group(1)
    assert quantiles.startswith("p5 0.22") and "p10 0.242, " in quantiles and quantiles.endswith("p95 0.411 rad")
    prior = _section(page, '<h3 id="prior">', "</table>")
    assert "<th>size</th><td>150 × 150 px</td>" in prior and "<th>grid</th><td>10 × 10 cells</td>" in prior
    assert "<th>delta</th><td>none (not calibrated; δ given: 0 rad)</td>" in prior
    # alignment under Data, the detector's count said for what it is; nothing left for "Other"
    data = _section(page, '<h2 id="data">', '<h2 id="config">')
    assert "79 of 80 photos of the tested pairs aligned, 1 without a face found" in data
    assert "<th>face detector runs</th><td>905 photos (this invocation, every photo it loaded: the calibration and " \
           "prior images too" in data
    assert "<th>pairs used</th><td>40 pairs (20 genuine, 20 impostor)</td>" in data
    assert "<h3>Other</h3>" not in page and "detector_runs" not in page
    env = _section(page, "<h3>Environment</h3>", "</table>")
    assert "<th>cpu_count</th><td>2 CPUs</td>" in env


def test_html_tables_leave_out_empty_columns():
    s = make_calibrated_summary()
    header, cells = E61.table_6_1_cells(s)
    i = header.index("d'")
    assert all(c[i] is None for c in cells)
    assert r"$\bar d'$" in E61.table_6_1_tex(s)  # the LaTeX keeps its columns
    html = str(to_html(E61.table_6_1(s)))
    assert "d&prime;" not in html and "pooled SD" not in html
    first_row = html.split("<tbody>")[1].split("</tr>")[0]
    assert first_row.count("<td") == len(header) - 1
    units = re.search(r'<tr class="sub">(.*?)</tr>', html).group(1)
    assert units.count("<th") == len(header) - 1 and ">rad</th>" in units and ">pairs</th>" in units
    # what is dropped: a column with no value; not one with a value, nor the first, nor any of an empty table
    t = Table(name="t", frame=frame(["Method", "a", "b"], [[None, None, "1"], [None, None, None]]),
              html_sub_header=["", "u", "v"], numeric=[1, 2])
    page = str(to_html(t))
    assert '<th class="num">b</th>' in page and ">a</th>" not in page and ">u</th>" not in page and ">v</th>" in page
    assert page.count("<td") == 4 and page.count('<td class="num">') == 2
    assert ">a</th>" in str(to_html(Table(name="e", frame=frame(["Method", "a"], []))))
    kept = Table(name="k", frame=frame(["Method", "a"], [["x", None]]), drop_empty_columns=False)
    assert ">a</th>" in str(to_html(kept))


def test_report_of_an_old_summary(tmp_path, summary):
    """A summary from before controls and criteria (no control flags, controls, prior or criterion)."""
    assert not {"controls", "prior", "falsification"} & set(summary)
    write_summary(tmp_path, summary)
    page = write_report(tmp_path).read_text()
    assert 'id="controls-not-run"' in page and "controls-not-beaten" not in page and "controls-all-beaten" not in page
    assert "<code>random</code>, a random map." in page and 'id="prior"' not in page
    criterion = _section(page, '<p id="criterion">', "</p>")
    assert "Criterion: <b>absolute thresholds</b>" in criterion and "&epsilon; = 0.100 rad" in criterion
    t61 = _section(page, '<table id="table-6-1">', "</table>")
    assert t61.split('<tbody class="controls">')[1].count("<tr") == 1 and "Beats" not in t61
    assert "Beats" not in _section(page, '<table id="comparisons-table">', "</table>")
    assert "<h3>Other</h3>" not in page


def test_report_command(tmp_path, capsys, summary):
    write_summary(tmp_path, summary)
    grid = tmp_path / "figures" / "fig_6_1_saliency.png"
    F.save_figure(F.saliency_grid(fake_explanations(1), ["gradcam"]), grid)
    stamp = grid.read_bytes()
    from falsify.cli import main

    assert main(["report", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.html")
    assert (tmp_path / "tables" / "table_6_2.tex").is_file()
    assert (tmp_path / "figures" / "fig_6_2_fr_vs_margin.pdf").is_file()
    assert grid.read_bytes() == stamp  # kept: it needs maps the summary does not hold
    assert len(_images((tmp_path / "report.html").read_text())) == 3


def test_load_summary_names_the_file_of_a_bad_summary(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text('{"experiment": "6.1", "methods": [')
    with pytest.raises(ValueError) as err:
        H.load_summary(tmp_path)
    msg = str(err.value)
    assert str(path) in msg and "not valid JSON" in msg and "line 1" in msg and "falsify run" in msg
    assert "\n" not in msg
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match="not UTF-8"):
        H.load_summary(tmp_path)
    # valid JSON, but not a summary of 'falsify run': no page full of n/a
    path.write_text('{"hello": 1}')
    with pytest.raises(ValueError) as err:
        write_report(tmp_path)
    msg = str(err.value)
    assert str(path) in msg and "missing keys experiment, model, data, methods" in msg
    assert not (tmp_path / "report.html").exists()
    for methods in ({"gradcam": {}}, [{"fr": 0.2}], ["gradcam"]):
        path.write_text(json.dumps({"experiment": "6.1", "model": "m", "data": {}, "methods": methods}))
        with pytest.raises(ValueError, match="'methods' is not a list of objects with a 'method' key"):
            H.load_summary(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="does not hold a JSON object"):
        H.load_summary(tmp_path)


def test_captions_show_the_effective_k(tmp_path, summary):
    """Deterministic fills draw one counterfactual per region whatever K says."""
    blur = copy.deepcopy(summary)
    blur["falsification"] = {"fill": "blur", "K": 16}
    blur["config"]["K"] = 16
    noise = copy.deepcopy(summary)
    noise["falsification"] = {"fill": "noise", "K": 8}
    noise["config"]["fill"] = "noise"
    assert T.effective_k(blur) == 1 and T.effective_k(noise) == 8
    assert T.effective_k({"config": {"fill": "zero"}}) == 1 and T.effective_k({}) is None
    assert "K = 1 (deterministic fill), fill blur" in T.run_description(blur)
    assert "K = 8, fill noise" in T.run_description(noise)
    for tex in (E61.table_6_1_tex(blur), E62.table_6_2_tex(blur)):
        assert "K = 1 (deterministic fill)" in tex and "K = 16" not in tex
    assert "K = 8," in E61.table_6_1_tex(noise)
    for fig in (E61.fr_bar_chart(blur), E62.fr_vs_margin(blur)):
        title = fig.axes[0].get_title()
        assert "K = 1 (deterministic fill)" in title and "K = 16" not in title
    write_summary(tmp_path, blur)
    page = write_report(tmp_path).read_text()
    assert "K = 1 (deterministic fill)" in page
    assert "one counterfactual is drawn per region (K = 1)" in page
    # the recorded settings are shown as recorded, with what was used
    assert page.count("<td>16 counterfactuals per region (K = 1 used: deterministic fill)</td>") == 2
    assert re.search(r"K = 16\b", page) is None
    write_summary(tmp_path, noise)
    page = write_report(tmp_path).read_text()
    assert "the K = 8 counterfactuals drawn per region are averaged" in page and "deterministic" not in page


def test_explanation_figure_titles_do_not_overlap():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    expl = fake_explanations(1, methods=("gradcam", "biometric-gradcam"), size=32)[0]
    for labels in (("George_W_Bush_0007", "George_W_Bush_0150"),
                   ("Arnold_Schwarzenegger_0006_and_a_long_suffix", "Gloria_Macapagal_Arroyo_0044"),
                   ("A", "B")):
        fig = explanation_figure(expl, labels=labels)
        try:
            assert isinstance(fig.canvas, FigureCanvasAgg)
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            image_axes = [a for a in fig.axes if a.get_label() != "<colorbar>"]
            titles = [a.title for a in image_axes[:6]]
            boxes = [t.get_window_extent(renderer) for t in titles]
            assert all(t.get_text() for t in titles)
            assert all("\n" not in t.get_text() for t in titles)  # one line each: shortened, not wrapped
            for left, right in zip(boxes, boxes[1:]):
                assert left.x1 < right.x0, (labels, [t.get_text() for t in titles])
            assert boxes[0].x0 >= 0 and boxes[-1].x1 <= fig.bbox.width
            (heading,) = [t.get_window_extent(renderer) for t in fig.texts]  # the suptitle
            assert heading.x0 >= 0 and heading.x1 <= fig.bbox.width
            assert all(b.y1 < heading.y0 for b in boxes)  # below the heading
            if max(map(len, labels)) <= 30:  # names of the length of most of LFW's are whole
                assert [titles[0].get_text(), titles[3].get_text()] == list(labels)
                assert titles[1].get_text() == f"map vs f({labels[1]})"
            else:  # a longer one keeps its start and end around an ellipsis
                assert titles[0].get_text().startswith("Arnold_Schw") and titles[0].get_text().endswith("suffix")
                assert "\u2026" in titles[0].get_text()
        finally:
            import matplotlib.pyplot as plt

            plt.close(fig)


def test_save_npz_returns_the_path_written(tmp_path):
    import numpy as np

    expl = fake_explanations(1, methods=("gradcam",))[0]
    expl.raw_a["gradcam"], expl.raw_b["gradcam"] = expl.maps_a["gradcam"] * 2, expl.maps_b["gradcam"] * 3
    for given, written in (("maps", "maps.npz"), ("maps.npz", "maps.npz"), ("maps.v2", "maps.v2.npz")):
        path = expl.save_npz(tmp_path / given)
        assert path == tmp_path / written and path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.npz", "maps.v2.npz"]  # no temporary left
    with np.load(path) as data:
        assert float(data["cosine"]) == pytest.approx(0.7)
        assert np.array_equal(data["gradcam/raw_b"], expl.raw_b["gradcam"].numpy())
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(IsADirectoryError):
        expl.save_npz(tmp_path / "dir.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.npz", "maps.npz", "maps.v2.npz"]


def test_failed_writes_leave_no_partial_file(tmp_path, summary, monkeypatch):
    write_summary(tmp_path, summary)
    (tmp_path / "report.html").mkdir()
    with pytest.raises(IsADirectoryError):
        write_report(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "summary.json"]
    assert list((tmp_path / "report.html").iterdir()) == []
    # an error while writing keeps the old report whole and removes the temporary file
    (tmp_path / "report.html").rmdir()
    old = write_report(tmp_path).read_text()
    monkeypatch.setattr(H, "render_report", lambda *a, **k: "<html>" + "x" * 100_000 + "\ud800")
    with pytest.raises(UnicodeEncodeError):
        write_report(tmp_path)
    assert (tmp_path / "report.html").read_text() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "summary.json"]
    monkeypatch.undo()
    (tmp_path / "tables" / "table_6_1.tex").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        write_tables(summary, tmp_path)
    assert [p.name for p in (tmp_path / "tables").iterdir()] == ["table_6_1.tex"]
    (tmp_path / "figures" / "fig_6_1_fr.png").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        write_figures(summary, tmp_path)
    assert [p.name for p in (tmp_path / "figures").iterdir()] == ["fig_6_1_fr.png"]


def _no_browser(reason: str):
    """Skip, or fail where CI sets FALSIFY_REQUIRE_BROWSER=1 (there the browser test must run)."""
    if os.environ.get("FALSIFY_REQUIRE_BROWSER") == "1":
        pytest.fail(f"FALSIFY_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def chromium(tmp_path, monkeypatch):
    """A headless Chromium driven by selenium (skipped, or failed under FALSIFY_REQUIRE_BROWSER=1,
    when Chromium, chromedriver or selenium are missing)."""
    try:
        from selenium import webdriver
    except ImportError:
        _no_browser("selenium not installed (pip install selenium; it is in the test extra)")
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not Path(exe).is_file():
            _no_browser(f"{exe} missing: run tests/setup_browser.sh (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,900"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


@pytest.mark.slow
def test_report_renders_in_chromium(report_dir, chromium):
    driver = chromium
    driver.get((report_dir / "report.html").resolve().as_uri())
    assert driver.title == "falsify report: experiment 6.1 (dlib-resnet)"
    assert driver.execute_script("return document.querySelector('h1').textContent") == driver.title
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]);")
    assert len(images) == 3
    assert all(done is True and w > 0 and h > 0 for done, w, h in images), images
    # nothing was fetched from anywhere (data: URIs are not network resources)
    fetched = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith('data:'));")
    assert fetched == []
    rows = driver.execute_script("return document.querySelectorAll('#table-6-1 tbody tr').length;")
    assert rows == len(COUNTS)
    # the error text arrived as text, not markup
    err = driver.execute_script("return document.querySelector('#errors-table td.err').textContent;")
    assert err == "RuntimeError: <boom> & 'quotes' \"double\""


#: The DOM facts the first-screen test reads, in one script: positions at the viewport, document
#: order, the thresholds' text, and the columns of every data table whose cells are all n/a.
_FIRST_SCREEN_JS = """
const q = s => document.querySelector(s);
const top = s => q(s).getBoundingClientRect().top;
const before = (a, b) => Boolean(a.compareDocumentPosition(b) & Node.DOCUMENT_POSITION_FOLLOWING);
const env = Array.from(document.querySelectorAll('h3')).find(h => h.textContent === 'Environment');
const table = q('#table-6-1');
const empty = [];
for (const t of document.querySelectorAll('main table:not(.kv)')) {
  const rows = Array.from(t.querySelectorAll('tbody tr'));
  if (!rows.length) continue;
  for (let i = 0; i < rows[0].cells.length; i++)
    if (rows.every(r => r.cells[i] && r.cells[i].querySelector('.na') && r.cells[i].textContent.trim() === '\u2013'))
      empty.push([t.id, t.tHead.rows[0].cells[i].textContent]);
}
const kv = {};
for (const r of q('#thresholds-table').rows) kv[r.cells[0].textContent] = r.cells[1].textContent;
return {
  inner: [innerWidth, innerHeight], scrollY: scrollY,
  headline: top('#headline'), table: top('#table-6-1'), figure: top('#fig_6_1_fr'),
  first_h2: document.querySelector('main h2').id,
  before: [q('#headline'), table, q('#fig_6_1_fr'), q('#how-to-read'), q('#run'), env, q('#data'), q('#config')]
    .every((e, i, all) => i === 0 || before(all[i - 1], e)),
  table_before: [q('#run'), env, q('#data'), q('#config')].map(e => before(table, e)),
  units: Array.from(table.querySelectorAll('thead tr.sub th')).map(th => th.textContent),
  header: Array.from(table.querySelectorAll('thead tr:first-child th')).map(th => th.textContent),
  thresholds: kv, empty: empty,
};
"""


@pytest.mark.slow
def test_report_leads_with_the_answer_in_chromium(tmp_path, chromium):
    """At a 1280 x 800 viewport the first screen holds the headline and the FR table, which come
    before the run, environment, data and configuration in the document; the calibrated thresholds
    are numbers with units; no table has a column of n/a only (mean d' under a deterministic fill)."""
    out = tmp_path / "run"
    s = make_calibrated_summary()
    write_summary(out, s)
    write_tables(s, out)
    write_figures(s, out)
    write_report(out)
    driver = chromium
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    driver.get((out / "report.html").resolve().as_uri())
    dom = driver.execute_script(_FIRST_SCREEN_JS)
    assert dom["inner"] == [1280, 800] and dom["scrollY"] == 0
    assert dom["first_h2"] == "exp-6-1"
    assert dom["before"] is True and dom["table_before"] == [True] * 4
    assert 0 < dom["headline"] < dom["table"] < 800 - 100, dom  # the table and its first rows on the first screen
    assert dom["table"] < dom["figure"]
    # no column of n/a only (mean d'); units on a line under the table's header
    assert dom["empty"] == []
    assert "mean d′" not in dom["header"] and "pooled SD" not in dom["units"]
    assert dom["units"][1:5] == ["pairs"] * 4 and dom["units"][5] == "% [95% CI]" and dom["units"][6:8] == ["rad"] * 2
    kv = dom["thresholds"]
    for key in ("τ_high", "τ_low", "ε"):
        assert re.match(r"0\.\d{4} rad = .*\(calibrated", kv[key]), (key, kv[key])
    assert kv["δ"] == "0 rad (given)"
    assert re.match(r"cos θ\* = 0\.9096, θ\* = 0\.4285 rad \(24\.5°\)", kv["decision threshold"])


def test_the_calibrations_spread_reads_in_words_with_units():
    from falsify.report.html import _value

    sp = {"n_boot": 200, "theta": [0.4245, 0.4577], "epsilon": [0.2549, 0.2737], "relative": 0.0375,
          "pairs_needed": 600}
    assert _value(sp, "spread") == ("95% of 200 resamples of the pairs: θ* 0.4245-0.4577 rad, ε 0.2549-0.2737 rad "
                                    "(±3.8%: within ±10%)")
    few = {**sp, "relative": 0.3, "pairs_needed": 5400}
    assert _value(few, "spread").endswith("(±30.0%: about 5400 pairs needed for ±10%)")


# the lead's paragraph on the known-truth rates and the FRs' placement: tests/test_report_reading.py
