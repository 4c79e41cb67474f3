"""A self-contained HTML report of a run: ``OUT/report.html`` from its summary and the experiments'
sections (``falsify.report.section.Section``), both in memory.

The page has inline CSS, figures embedded as ``data:image/png;base64`` URIs and no external
resource, so it opens from disk (or as an e-mail attachment) anywhere. Every piece of text from the
summary is escaped with :func:`html.escape`.

The page is the Jinja2 template ``templates/report.html.j2``. It leads with the answer: the leads of
the sections it is given (in their order; 6.1's: which methods beat their controls, with FR and
95% CI, the FR table and the FR figure), then "How to read", each section from its template, and
what the run was: run and environment, data, configuration (the criterion and its calibrated
thresholds first), other figures, LaTeX sources. Every number in the key-value tables carries its
unit (:data:`UNITS`); the tables leave out their all-empty columns
(``falsify.report.render.to_html``). Nothing here knows an experiment: the caller
(``falsify.experiments.registry.write_report``) passes the sections.

``falsify report OUT`` (``falsify.experiments.registry.rewrite``) rewrites the tables, the figures
and the page from ``OUT/summary.json`` (:func:`load_summary`).
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping, Sequence

from .render import Html, figure_html, png_display_width, render  # noqa: F401 (png_display_width re-exported)
from .section import Section
from .tables import (
    as_float,
    as_int,
    criterion_class,
    criterion_explained,
    criterion_of,
    effective_k,
    fill_and_k,
    is_deterministic_fill,
    latex_tables,
    method_rows,
    write_text_atomic,
)

#: Errors listed in the report's error table (all are counted).
MAX_ERRORS_SHOWN = 200
#: Longest configuration value shown in full.
MAX_VALUE_CHARS = 1000



_NA = '<span class="na">&ndash;</span>'


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _cell(x: Any) -> str:
    """A table cell: None is n/a, a tuple is several lines."""
    if x is None:
        return _NA
    if isinstance(x, tuple):
        return "<br>".join(_e(v) for v in x)
    return _e(x)


#: Units of the numbers the report's key-value tables show, by key (config, falsification test,
#: calibration, prior, environment): a suffix; ``{}`` in it stands for the number.
UNITS: dict[str, str] = {
    **dict.fromkeys(("tau_high", "tau_low", "epsilon", "delta", "opt_delta_target", "threshold_angle",
                     "excess_median", "genuine_quantiles", "impostor_quantiles"), "{} rad"),
    **dict.fromkeys(("n_pairs", "calibration_pairs", "grid_pairs", "n_genuine", "n_impostor"), "{} pairs"),
    **dict.fromkeys(("prior_images", "n_images"), "{} images"),
    **dict.fromkeys(("grid", "prior_grid"), "{0} × {0} cells"),
    **dict.fromkeys(("noise_sigma", "opt_init_sigma"), "{} (std, pixel values in [0, 1])"),
    **dict.fromkeys(("high_fraction", "low_fraction"), "{} × θ* (threshold angle)"),
    **dict.fromkeys(("theta_high", "theta_low"), "{} (map value in [0, 1])"),
    **dict.fromkeys(("opt_steps", "opt_patience"), "{} steps"),
    "batch_pairs": "{} pairs per batch", "batch_size": "{} images per forward pass",
    "K": "{} counterfactuals per region", "n_segments": "{} superpixels", "compactness": "{} (SLIC compactness)",
    "blur_sigma": "{} × the shorter image side (std)", "opt_lr": "{} (Adam step size)",
    "opt_lambda": "{} (weight)", "opt_grad_clip": "{} (gradient norm)", "opt_tol": "{} (relative change)",
    "threshold_cos": "{} (cosine)", "accuracy": "{}", "q": "{}", "seed": "{} (random seed)",
    "workers": "{} workers", "cpu_count": "{} CPUs", "torch_threads": "{} threads",
    "quantile": "{}",
}


def _num(x: float) -> str:
    """An int as it is, a float with 4 significant digits."""
    return str(x) if isinstance(x, int) else f"{x:.4g}"


def with_unit(key: str, x: Any) -> str | None:
    """``x`` (a number, a list of numbers, or quantiles {"p5": ...}) with the unit of ``key``
    (:data:`UNITS`); None when ``key`` has none or ``x`` is not such a value."""
    unit = UNITS.get(key)
    if unit is None or isinstance(x, bool):
        return None
    if isinstance(x, Mapping) and x and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x.values()):
        return ", ".join(f"{k} {v:.3f}" for k, v in x.items()) + unit.replace("{}", "")
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    if key == "q":
        return f"{_num(x)} ({100 * x:g}% of the features in S_high and in S_low)"
    if key in ("accuracy", "quantile"):
        return f"{100 * x:.4g}%"
    if key == "threshold_angle":
        return f"{_num(x)} rad ({math.degrees(x):.1f}°)"
    return unit.format(_num(x))


def spread_text(sp: Any) -> str | None:
    """A calibration's bootstrap spread (``falsify.falsification.calibration.calibration_spread``)
    in words with units; None when ``sp`` is not one."""
    try:
        (t0, t1), (e0, e1) = sp["theta"], sp["epsilon"]
        enough = "within ±10%" if sp["relative"] <= 0.10 else f"about {sp['pairs_needed']} pairs needed for ±10%"
        return (f"95% of {sp['n_boot']} resamples of the pairs: θ* {t0:.4f}-{t1:.4f} rad, ε {e0:.4f}-{e1:.4f} "
                f"rad (±{100 * sp['relative']:.1f}%: {enough})")
    except (KeyError, TypeError, ValueError):
        return None


def _value(x: Any, key: str | None = None) -> str:
    """A config/environment value: a number with its unit (:func:`with_unit`), lists joined,
    mappings as JSON, null as 'none'."""
    if x is None:
        return '<span class="na">none</span>'
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float) and not math.isfinite(x):
        return _NA
    text = with_unit(key, x) if key is not None else None
    if key == "spread":
        text = spread_text(x)
    if text is None and isinstance(x, (list, tuple)) and all(not isinstance(v, (list, tuple, Mapping)) for v in x):
        text = ", ".join(str(v) for v in x)
    elif text is None and isinstance(x, (list, tuple, Mapping)):
        text = json.dumps(x, sort_keys=isinstance(x, Mapping), default=str)
    elif text is None:
        text = str(x)
    if len(text) > MAX_VALUE_CHARS:
        text = text[:MAX_VALUE_CHARS] + f" ... ({len(text)} characters)"
    return _e(text)


def _kv_table(items: Iterable[tuple[str, Any]], raw: bool = False, html_id: str | None = None) -> str:
    """Rows of (key, value): values through :func:`_value` (with the key's unit), or as HTML when ``raw``."""
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{v if raw else _value(v, k)}</td></tr>" for k, v in items)
    ident = f' id="{_e(html_id)}"' if html_id else ""
    return f'<div class="scroll"><table class="kv"{ident}><tbody>{rows}</tbody></table></div>'


def format_elapsed(seconds: Any) -> str | None:
    s = as_float(seconds)
    if s is None:
        return None
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(round(s % 60)):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


#: Keys every summary.json of 'falsify run' has (their values may be null).
REQUIRED_KEYS: tuple[str, ...] = ("experiment", "model", "data", "methods")


def load_summary(out_dir: str | Path) -> dict:
    """``out_dir/summary.json`` as a dict (NaN/Infinity literals are accepted and become n/a).

    Raises FileNotFoundError without the file, and ValueError (one line, naming the file) when it is
    not valid JSON or not a summary of 'falsify run': a :data:`REQUIRED_KEYS` key is missing, or
    ``methods`` is not a list of objects with a ``method`` key."""
    path = Path(out_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {out_dir} the output folder of 'falsify run'?")
    rerun = "rerun 'falsify run' with the same --out to rewrite it"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); {rerun}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (byte {exc.start}); {rerun}") from exc
    if not isinstance(summary, dict):
        raise ValueError(f"{path} does not hold a JSON object; {rerun}")
    problems = []
    missing = [k for k in REQUIRED_KEYS if k not in summary]
    if missing:
        problems.append("missing key" + ("s " if len(missing) > 1 else " ") + ", ".join(missing))
    methods = summary.get("methods", [])
    if not isinstance(methods, list) or not all(isinstance(m, dict) and "method" in m for m in methods):
        problems.append("'methods' is not a list of objects with a 'method' key")
    if problems:
        raise ValueError(f"{path} is not a summary of 'falsify run': {'; '.join(problems)}")
    return summary


# ---------------------------------------------------------------------------------------------
# sections

_HOW_TO_READ = """
<div class="callout" id="how-to-read">
<p><b>How to read this.</b> Each attribution method explains one face of a pair against the other
face's embedding. The falsification test hides the features the map ranks highest and lowest and
measures how far the embedding moves (geodesic distance, radians: d<sub>high</sub> and d<sub>low</sub>).
A map that makes no prediction (e.g. a constant map) is <i>untestable</i>.</p>
<p id="criterion">{criterion}</p>
<p><b>Falsification rate</b> FR = falsified / (passed + falsified): untestable maps (and errors) are
excluded from numerator and denominator. Intervals are Wilson 95% score intervals.
<a href="#controls">Controls</a> (grey rows) are maps that cannot be right about the model on this
image: a method is informative only if it is falsified clearly less often than they are. Methods are
compared with McNemar's exact paired test on the pairs where both maps are testable, with Holm's
correction over all comparisons (* significant at &alpha; = 0.05); Cohen's h is the effect size
between the two rates.</p>
<p>All statistics count <b>pairs</b> (one verdict per pair and method), not counterfactual images:
{k_sentence}</p>
</div>
"""


def _criterion_html(summary: Mapping) -> str:
    """The criterion of the run, for "How to read": the criterion's own explanation
    (``Criterion.explain_html``: e.g. absolute thresholds, or beyond the prior by delta with how
    delta was calibrated, ``prior.delta``), else its name."""
    cls, c = criterion_explained(summary)
    prior = summary.get("prior") if isinstance(summary.get("prior"), Mapping) else {}
    text = None if cls is None else cls.explain_html(c, as_int(prior.get("n_images")))
    return text if text is not None else f"Criterion: <b>{_e(c['criterion'])}</b>."


def _how_to_read(summary: Mapping) -> str:
    if is_deterministic_fill(fill_and_k(summary)[0]):
        sentence = ("the fill is deterministic, so one counterfactual is drawn per region (K = 1) and each "
                    "verdict rests on one pair of distances.")
    else:
        k = effective_k(summary)
        drawn = "K" if k is None else f"K = {k}"
        sentence = (f"the {drawn} counterfactuals drawn per region are averaged into one verdict, so they do not "
                    "inflate n.")
    return _HOW_TO_READ.format(k_sentence=_e(sentence), criterion=_criterion_html(summary))


def _section_metadata(summary: Mapping) -> str:
    data = summary.get("data") if isinstance(summary.get("data"), Mapping) else {}
    cfg = summary.get("config") if isinstance(summary.get("config"), Mapping) else {}
    n_rows = as_int(summary.get("n_rows"))
    items = [
        ("experiment", summary.get("experiment")),
        ("model", summary.get("model") or cfg.get("model")),
        ("data source", data.get("source") or cfg.get("data")),
        ("started", summary.get("started")),
        ("created", summary.get("created")),
        ("elapsed", format_elapsed(summary.get("elapsed_s"))),
        ("result rows", None if n_rows is None else f"{n_rows} (method, pair) rows"),
    ]
    items = [(k, v) for k, v in items if v is not None or k in ("model", "created")]
    out = ['<h2 id="run">Run</h2>', _kv_table(items)]
    env = summary.get("environment")
    if isinstance(env, Mapping) and env:
        out += ["<h3>Environment</h3>", _kv_table(env.items())]
    return "\n".join(out)


#: Top-level summary keys the report shows in their own place; any other is listed under "Other",
#: but for the keys of the experiments' sections (``known_keys`` of :func:`render_report`).
_KNOWN_KEYS = {
    "experiment", "created", "started", "model", "config", "falsification", "calibration", "environment",
    "data", "n_rows", "n_errors", "errors", "elapsed_s", "methods", "comparisons", "controls", "prior",
    "alignment", "test_validity", "null_maps",
}


def _with_effective_k(summary: Mapping, items: Mapping) -> list[tuple[str, Any]]:
    """``items``, with a recorded K that is not the number of counterfactuals drawn annotated:
    '16 counterfactuals per region (K = 1 used: deterministic fill)'."""
    k = effective_k(summary)
    det = is_deterministic_fill(fill_and_k(summary)[0])
    return [
        (key, f"{with_unit('K', v) or v} (K = {k} used{': deterministic fill' if det else ''})"
         if key == "K" and k is not None and as_int(v) != k else v)
        for key, v in items.items()
    ]


#: The thresholds of the criterion (radians), and what each is.
_THRESHOLDS = (("tau_high", "τ_high"), ("tau_low", "τ_low"), ("epsilon", "ε"))


def _calibration_of(summary: Mapping) -> Mapping | None:
    cal = summary.get("calibration")
    return cal if isinstance(cal, Mapping) and cal else None


def _threshold_text(summary: Mapping, key: str, unused_by: str | None = None) -> str | None:
    """'0.2142 rad = 0.5 × θ* (calibrated)' or '0.3 rad (given)', with '; not used by the
    beyond-prior verdict' when ``unused_by`` names the criterion whose verdict does not read it;
    None when not recorded."""
    value = criterion_of(summary)[key]
    if value is None:
        return None
    cal = _calibration_of(summary)
    calibrated = cal is not None and as_float(cal.get(key)) is not None and abs(as_float(cal.get(key)) - value) < 1e-12
    text = f"{_num(value)} rad"
    if calibrated:
        how = {"tau_high": f" = {_num(cal.get('high_fraction'))} × θ*" if as_float(cal.get("high_fraction")) else "",
               "tau_low": f" = {_num(cal.get('low_fraction'))} × θ*" if as_float(cal.get("low_fraction")) else "",
               "epsilon": " = median impostor angle − median genuine angle"}[key]
        text += f"{how} (calibrated"
    else:
        text += " (given"
    return text + (f"; not used by the {unused_by} verdict)" if unused_by else ")")


def _section_thresholds(summary: Mapping) -> str:
    """The criterion and the numbers it used: the calibrated (or given) thresholds in radians, delta,
    the decision threshold, the fills of the test and of the prior."""
    c = criterion_of(summary)
    cls = criterion_class(c["criterion"])
    described = None if cls is None else cls.describe()
    items: list[tuple[str, str | None]] = [("criterion", described if described is not None else str(c["criterion"]))]
    if cls is not None and "delta" in cls.thresholds:
        delta = None
        if c["delta"] is not None:
            cal = c["calibration"]
            if cal is not None:
                q, n = as_float(cal.get("quantile")), as_int(cal.get("n"))
                delta = (f"{_num(c['delta'])} rad (calibrated: the {'' if q is None else f'{100 * q:g}% '}quantile of "
                         "the excess that maps knowing only the prior reach" + ("" if n is None else f", {n} tests") + ")")
            else:
                delta = f"{_num(c['delta'])} rad (given)"
        items.append(("δ", delta))
    for key, label in _THRESHOLDS:
        unused = cls is not None and key not in cls.verdict_thresholds
        items.append((label, _threshold_text(summary, key, unused_by=cls.name if unused else None)))
    cal = _calibration_of(summary)
    if cal is not None and as_float(cal.get("threshold_cos")) is not None:
        cos, angle = as_float(cal.get("threshold_cos")), as_float(cal.get("threshold_angle"))
        acc = as_float(cal.get("accuracy"))
        n_gen, n_imp = as_int(cal.get("n_genuine")), as_int(cal.get("n_impostor"))
        text = f"cos θ* = {_num(cos)}"
        if angle is not None:
            text += f", θ* = {_num(angle)} rad ({math.degrees(angle):.1f}°)"
        if acc is not None:
            on = "" if n_gen is None or n_imp is None else f" on {n_gen} genuine + {n_imp} impostor pairs"
            text += f"; accuracy {100 * acc:.1f}%{on}"
        items.append(("decision threshold", text))
    fill, _ = fill_and_k(summary)
    if fill:
        items.append(("fill (test)", f"{fill}: what replaces the hidden regions"))
    prior = summary.get("prior") if isinstance(summary.get("prior"), Mapping) else {}
    if prior.get("fill"):
        items.append(("fill (prior map)", _prior_fill(prior.get("fill"), fill)))
    k = effective_k(summary)
    if k is not None:
        det = " (deterministic fill)" if is_deterministic_fill(fill) else ""
        items.append(("counterfactuals", f"{k} per region{det}"))
    items = [(k, v) for k, v in items if v is not None]
    where = (" Calibrated values come from the model's own genuine and impostor angles on pairs of the data set "
             '(<a href="#calibration">below</a>).' if cal is not None else "")
    return ('<h3 id="thresholds">Criterion and thresholds</h3>\n' + _kv_table(items, html_id="thresholds-table")
            + '\n<p class="caption">Angles are geodesic distances between unit embeddings, in radians'
            + ("; θ* is the angle of the decision threshold (cos θ*: its cosine similarity)." if cal is not None else ".")
            + where + "</p>")


def _prior_fill(prior_fill: Any, test_fill: Any) -> str:
    """The prior's fill, and why it may differ from the test's."""
    text = f"{prior_fill}: the fill of the occlusion maps the prior averages"
    if test_fill and test_fill != prior_fill:
        text += f" (the test hides regions with its own fill, {test_fill})"
    return text


def _prior_items(summary: Mapping, prior: Mapping) -> list[tuple[str, Any]]:
    """The prior's settings for its table: its cells left out, its fill and delta explained."""
    items: list[tuple[str, Any]] = []
    test_fill = fill_and_k(summary)[0]
    for k, v in prior.items():
        if k == "cells":
            continue
        if k == "fill" and v:
            v = _prior_fill(v, test_fill)
        elif k == "size" and isinstance(v, (list, tuple)) and len(v) == 2:
            v = f"{v[0]} × {v[1]} px"
        elif k == "delta" and isinstance(v, Mapping):
            d, q, n, med = (as_float(v.get(x)) for x in ("delta", "quantile", "n", "excess_median"))
            parts = [x for x in (None if q is None else f"{100 * q:g}% quantile", None if n is None else f"{int(n)} tests",
                                 None if med is None else f"median excess {_num(med)} rad") if x]
            v = ("n/a" if d is None else f"{_num(d)} rad") + (f" (calibrated: {', '.join(parts)})" if parts else "")
        elif k == "delta" and v is None:
            given = criterion_of(summary)["delta"]
            v = "none (not calibrated" + ("" if given is None else f"; δ given: {_num(given)} rad") + ")"
        items.append((k, v))
    return items


def _section_config(summary: Mapping, known_keys: Collection[str] = ()) -> str:
    out = ['<h2 id="config">Configuration</h2>', _section_thresholds(summary)]
    cfg = summary.get("config")
    if isinstance(cfg, Mapping) and cfg:
        shown = dict(cfg)
        for key, _ in _THRESHOLDS:  # null in the config: calibrated; show what was used
            if key in shown and shown[key] is None and criterion_of(summary)[key] is not None:
                shown[key] = f"calibrated: {_num(criterion_of(summary)[key])} rad"
        out += ["<h3>Run settings</h3>", _kv_table(_with_effective_k(summary, shown))]
    else:
        out.append('<p class="na">No configuration recorded.</p>')
    fals = summary.get("falsification")
    if isinstance(fals, Mapping) and fals:
        out += ["<h3>Falsification test settings</h3>", _kv_table(_with_effective_k(summary, fals))]
    prior = summary.get("prior")
    if isinstance(prior, Mapping) and prior:
        out += ['<h3 id="prior">Prior map</h3>',
                _kv_table(_prior_items(summary, prior)),
                '<p class="caption">The model\'s image-independent prior map: the mean of its occlusion maps '
                "over images that are not tested (the <code>centre</code> control, and the reference of the "
                "beyond-prior criterion). delta: the beyond-prior margin calibrated on those images, when it "
                "was.</p>"]
    if "calibration" in summary:
        cal = summary.get("calibration")
        out.append('<h3 id="calibration">Calibration</h3>')
        if isinstance(cal, Mapping) and cal:
            out.append(_kv_table(cal.items()))
            out.append('<p class="caption">The model\'s angles (radians) between the embeddings of genuine and '
                       "impostor pairs of the data set, as quantiles (p5 ... p95); threshold_cos: the cosine "
                       "similarity with the best accuracy on those pairs, threshold_angle θ* its angle; τ_high, "
                       "τ_low and ε derived from them; spread: how far θ* and ε move when the pairs are "
                       "resampled.</p>")
        else:
            out.append('<p class="caption">None: the thresholds were given, not calibrated.</p>')
    other = [(k, v) for k, v in summary.items() if k not in _KNOWN_KEYS and k not in known_keys]
    if other:
        out += ["<h3>Other</h3>", _kv_table(other)]
    return "\n".join(out)


def _section_data(summary: Mapping) -> str:
    data = summary.get("data") if isinstance(summary.get("data"), Mapping) else {}
    out = ['<h2 id="data">Data</h2>']
    n_pairs, n_gen, n_imp = as_int(data.get("n_pairs")), as_int(data.get("n_genuine")), as_int(data.get("n_impostor"))
    split = f" ({n_gen} genuine, {n_imp} impostor)" if n_gen is not None and n_imp is not None else ""
    n_err = as_int(summary.get("n_errors"))
    n_err = len(summary.get("errors") or []) if n_err is None else n_err
    counts = [
        ("pairs used", None if n_pairs is None else f"{n_pairs} pairs{split}"),
        ("pairs skipped", None if as_int(data.get("n_skipped")) is None else f"{as_int(data.get('n_skipped'))} pairs"),
        ("method-pair errors", f"{n_err} (method, pair) rows"),
    ]
    alignment = summary.get("alignment") if isinstance(summary.get("alignment"), Mapping) else None
    if alignment is not None:  # runs made before alignment existed have none
        template = alignment.get("template")
        counts.append(("alignment", "none (each photo resized)" if not template else
                       f"{template}: {alignment.get('aligned')} of {alignment.get('images')} photos of the tested pairs "
                       f"aligned, {alignment.get('no_face_found')} without a face found (resized)"))
        runs = as_int(alignment.get("detector_runs"))
        if template and runs is not None:
            counts.append(("face detector runs", f"{runs} photos (this invocation, every photo it loaded: the "
                           "calibration and prior images too; photos whose landmarks are cached are not detected again)"))
    out.append(_kv_table(counts))
    missed = (alignment or {}).get("no_face_examples") or []
    if missed:
        out.append("<h3>Photos with no face found (resized instead)</h3>")
        out.append('<ul class="examples">' + "".join(f"<li><code>{_e(x)}</code></li>" for x in missed) + "</ul>")
    examples = [e for e in data.get("skipped_examples") or []]
    if examples:
        n_sk = as_int(data.get("n_skipped"))
        more = f" (first {len(examples)} of {n_sk})" if n_sk is not None and n_sk > len(examples) else ""
        out.append(f"<h3>Skipped pairs{_e(more)}</h3>")
        out.append('<ul class="examples">' + "".join(f"<li><code>{_e(x)}</code></li>" for x in examples) + "</ul>")
    errors = [e for e in summary.get("errors") or [] if isinstance(e, Mapping)]
    n_err = as_int(summary.get("n_errors"))
    n_err = len(errors) if n_err is None else n_err
    if errors or n_err:
        shown = errors[:MAX_ERRORS_SHOWN]
        note = f" (showing {len(shown)} of {n_err})" if n_err > len(shown) else ""
        out.append(f'<h3 id="errors">Errors{_e(note)}</h3>')
        out.append(
            '<div class="callout warn"><p>A method that raised an error on a pair has no verdict for that '
            "pair; the pair is left out of that method's counts and of its paired comparisons.</p></div>"
        )
        rows = "".join(
            f'<tr><td class="method">{_cell(e.get("method"))}</td><td><code>{_cell(e.get("pair"))}</code></td>'
            f'<td class="err">{_cell(e.get("error"))}</td></tr>'
            for e in shown
        )
        out.append(
            '<div class="scroll"><table id="errors-table"><thead><tr><th>Method</th><th>Pair</th><th>Error</th>'
            f"</tr></thead><tbody>{rows}</tbody></table></div>"
        )
    return "\n".join(out)


def _section_other_figures(out_dir: Path, known: Collection[str]) -> str:
    """The PNGs under ``out_dir/figures`` that are no section's (``known``: every experiment's stems)."""
    folder = out_dir / "figures"
    if not folder.is_dir():
        return ""
    others = [p for p in sorted(folder.glob("*.png")) if p.stem not in known]
    if not others:
        return ""
    parts = ['<h2 id="other-figures">Other figures</h2>']
    parts += [figure_html(p, p.stem, p.name, f"fig-{p.stem}") for p in others]
    return "\n".join(parts)


def _section_latex(sections: Sequence[Section]) -> str:
    """The LaTeX of the sections' tables (the text :func:`~.tables.write_tables` writes), by file name."""
    files = {f"{t.name}.tex": t for t in latex_tables(sections)}
    if not files:
        return ""
    parts = ['<h2 id="latex">LaTeX tables</h2>',
             '<p class="caption">The same tables as LaTeX (booktabs), as written under '
             "<code>tables/</code>.</p>"]
    for name in sorted(files):
        parts.append(f"<details><summary>{_e(name)}</summary><pre>{_e(files[name].latex)}</pre></details>")
    return "\n".join(parts)


class _Figures(Mapping):
    """stem -> the figure as HTML, for each of ``captions`` whose PNG is in ``folder``, in that
    order; a figure is read and encoded when a template first shows it."""

    def __init__(self, folder: Path, captions: Mapping[str, str]) -> None:
        self._captions = {s: c for s, c in captions.items() if (folder / f"{s}.png").is_file()}
        self._folder, self._html = folder, {}

    def __getitem__(self, stem: str):
        if stem not in self._html:
            self._html[stem] = figure_html(self._folder / f"{stem}.png", stem.replace("_", " "),
                                           self._captions[stem], stem)
        return self._html[stem]

    def __iter__(self):
        return iter(self._captions)

    def __len__(self) -> int:
        return len(self._captions)


def render_section(section: Section, template: str | None, summary: Mapping, out_dir: str | Path) -> str:
    """``template`` (the section's or its lead's; "" for None) with ``summary``, ``experiment`` (the
    section), ``tables`` (name -> HTML, each rendered once), ``figures`` (stem -> HTML, for the PNGs
    under ``out_dir/figures``; each read only when the template shows it) and the section's context."""
    if template is None:
        return ""
    tables = {t.name: t.html for t in section.tables}
    figures = _Figures(Path(out_dir) / "figures", section.captions)
    return render(template, summary=summary, experiment=section, tables=tables, figures=figures,
                  **section.context).strip()


def render_report(summary: Mapping, sections: Sequence[Section], out_dir: str | Path, *,
                  known_keys: Collection[str] = (), known_figures: Collection[str] = ()) -> str:
    """The report page as a string (``report.html.j2``) of ``summary`` and the experiments'
    ``sections`` (in the page's order); figures are read from under ``out_dir``. ``known_keys``:
    summary keys some experiment's section shows (not listed under "Other"); ``known_figures``:
    figure stems some experiment draws (not shown under "Other figures"); the sections' own are
    always known."""
    out_dir = Path(out_dir)
    known_keys = set(known_keys) | {s.key for s in sections if s.key}
    known_figures = set(known_figures) | {f.stem for s in sections for f in s.figures}
    experiment = summary.get("experiment") or "6.1"
    cfg = summary.get("config") if isinstance(summary.get("config"), Mapping) else {}
    model = summary.get("model") or cfg.get("model")
    title = f"falsify report: experiment {experiment}" + (f" ({model})" if model else "")
    # the answer first (the leads: 6.1's headline, FR table and figure), then how to read it, the
    # experiments' sections, and what the run was: run, data, configuration
    leads = [(s, render_section(s, s.lead_template, summary, out_dir)) for s in sections]
    parts = [
        *(lead for _, lead in leads),
        _how_to_read(summary),
        *(render_section(s, s.template, summary, out_dir) for s in sections),
        _section_metadata(summary),
        _section_data(summary),
        _section_config(summary, known_keys),
        _section_other_figures(out_dir, known_figures),
        _section_latex(sections),
    ]
    nav = [(e.anchor, e.nav) for e, lead in leads if lead]
    nav.append(("how-to-read", "How to read"))
    nav += [(e.anchor, e.nav) for e, lead in leads if not lead]
    nav += [("run", "Run"), ("data", "Data"), ("config", "Configuration")]
    n_methods = len(method_rows(summary))
    n_pairs = (summary.get("data") or {}).get("n_pairs") if isinstance(summary.get("data"), Mapping) else None
    subtitle = ", ".join(
        x for x in (
            f"{n_pairs} pairs" if n_pairs is not None else None,
            f"{n_methods} methods" if n_methods else None,
            f"created {summary['created']}" if summary.get("created") else None,
        ) if x
    )
    return render("report.html.j2", title=title, subtitle=subtitle, nav=nav,
                  sections=[Html(p) for p in parts if p])


def write_report(summary: Mapping, sections: Sequence[Section], out_dir: str | Path, *,
                 known_keys: Collection[str] = (), known_figures: Collection[str] = ()) -> Path:
    """Write ``out_dir/report.html`` (:func:`render_report`: ``summary`` and ``sections`` as given,
    the figures ``out_dir/figures/*.png`` embedded); returns its path. The page is written to a
    temporary sibling and moved into place, so a failed write (OSError, which propagates) leaves no
    half-written report."""
    out_dir = Path(out_dir)
    page = render_report(summary, sections, out_dir, known_keys=known_keys, known_figures=known_figures)
    return write_text_atomic(out_dir / "report.html", page)
