"""A self-contained HTML report of a run: ``OUT/report.html`` from ``OUT/summary.json``.

The page has inline CSS, figures embedded as ``data:image/png;base64`` URIs and no external
resource, so it opens from disk (or as an e-mail attachment) anywhere. Every piece of text from the
summary is escaped with :func:`html.escape`.

``falsify report OUT`` (``falsify.cli.cmd_report``) rewrites the tables, the figures that the
summary alone allows, and the page.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .figures import FIGURES
from .tables import (
    as_float,
    as_int,
    control_kinds,
    control_label,
    control_verdicts,
    criterion_of,
    effective_k,
    exp_6_2,
    fill_and_k,
    fmt_num,
    fmt_p,
    is_deterministic_fill,
    method_rows,
    methods_6_2,
    row_is_control,
    run_description,
    table_6_1_cells,
    table_6_1_rows,
    table_6_2_cells,
    write_text_atomic,
)

#: Errors listed in the report's error table (all are counted).
MAX_ERRORS_SHOWN = 200
#: Longest configuration value shown in full.
MAX_VALUE_CHARS = 1000

_CSS = """
:root { --fg:#1d2330; --muted:#5c6677; --line:#d9dee7; --head:#eef1f6; --accent:#2456a6; --na:#9aa3b2; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--fg); background:#fafbfc; }
main { max-width:1180px; margin:0 auto; padding:24px 28px 64px; background:#fff; min-height:100vh;
       box-shadow:0 0 0 1px var(--line); }
h1 { font-size:26px; margin:8px 0 4px; }
h2 { font-size:20px; margin:36px 0 10px; padding-bottom:4px; border-bottom:2px solid var(--line); }
h3 { font-size:16px; margin:22px 0 8px; }
p.subtitle { color:var(--muted); margin:0 0 14px; }
nav { font-size:14px; margin:6px 0 10px; }
nav a { color:var(--accent); text-decoration:none; margin-right:14px; white-space:nowrap; }
nav a:hover { text-decoration:underline; }
.scroll { overflow-x:auto; margin:8px 0 4px; }
table { border-collapse:collapse; font-size:13.5px; }
th, td { padding:5px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
thead th { background:var(--head); border-bottom:2px solid #b9c1cf; white-space:nowrap; }
thead tr.sub th { font-weight:normal; color:var(--muted); font-size:12.5px; background:#f6f8fb; }
tbody tr:nth-child(even) td, tbody tr:nth-child(even) th { background:#f8f9fb; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td.method { font-weight:600; white-space:nowrap; }
tr.control td { color:#555; font-style:italic; }
tbody.controls tr:first-child td { border-top:2px solid #b9c1cf; }
tr.control td.method::after { content:"control"; margin-left:8px; padding:0 5px; border-radius:3px;
                              background:#e4e7ec; color:#444; font:normal 11px/1.6 sans-serif; }
.na { color:var(--na); }
table.kv th { background:none; font-weight:600; white-space:nowrap; border-bottom:1px solid var(--line); }
table.kv { min-width:420px; }
table.kv td { font-family:ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:13px;
              word-break:break-word; }
.caption { color:var(--muted); font-size:13px; max-width:980px; margin:4px 0 14px; }
.callout { background:#f3f6fb; border-left:4px solid var(--accent); padding:10px 16px; margin:12px 0; }
.callout p { margin:6px 0; }
.warn { background:#fff6e5; border-left-color:#d99500; }
figure { margin:18px 0 26px; }
figure img { display:block; max-width:100%; height:auto; border:1px solid var(--line); background:#fff; }
figcaption { color:var(--muted); font-size:13px; margin-top:6px; max-width:980px; }
code, pre { font-family:ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:12.5px; }
pre { background:#f5f6f8; padding:10px 12px; overflow-x:auto; border:1px solid var(--line); }
td.err { font-family:ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:12.5px;
         white-space:pre-wrap; word-break:break-word; max-width:560px; }
ul.examples { margin:4px 0; padding-left:22px; font-size:13px; }
details { margin:10px 0; }
summary { cursor:pointer; color:var(--accent); }
footer { margin-top:40px; color:var(--muted); font-size:12.5px; }
"""

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


def _value(x: Any) -> str:
    """A config/environment value: lists joined, mappings as JSON, null as 'none'."""
    if x is None:
        return '<span class="na">none</span>'
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float) and not math.isfinite(x):
        return _NA
    if isinstance(x, (list, tuple)) and all(not isinstance(v, (list, tuple, Mapping)) for v in x):
        text = ", ".join(str(v) for v in x)
    elif isinstance(x, (list, tuple, Mapping)):
        text = json.dumps(x, sort_keys=isinstance(x, Mapping), default=str)
    else:
        text = str(x)
    if len(text) > MAX_VALUE_CHARS:
        text = text[:MAX_VALUE_CHARS] + f" ... ({len(text)} characters)"
    return _e(text)


def _kv_table(items: Iterable[tuple[str, Any]], raw: bool = False) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{v if raw else _value(v)}</td></tr>" for k, v in items)
    return f'<div class="scroll"><table class="kv"><tbody>{rows}</tbody></table></div>'


def _table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    numeric: Iterable[int] = (),
    sub_header: Sequence[str] | None = None,
    row_class: Sequence[str] | None = None,
    raw_header: bool = False,
    first_is_method: bool = True,
    table_id: str | None = None,
    split: int | None = None,
) -> str:
    """An HTML table; rows from index ``split`` on go in a second ``<tbody class="controls">``."""
    numeric = set(numeric)

    def cls(i: int) -> str:
        if i in numeric:
            return ' class="num"'
        return ' class="method"' if i == 0 and first_is_method else ""

    def th(i: int) -> str:
        return '<th class="num">' if i in numeric else "<th>"

    head = "".join(f"{th(i)}{h if raw_header else _e(h)}</th>" for i, h in enumerate(header))
    thead = f"<tr>{head}</tr>"
    if sub_header is not None:
        thead += '<tr class="sub">' + "".join(f"{th(i)}{_e(h)}</th>" for i, h in enumerate(sub_header)) + "</tr>"
    body = []
    for j, r in enumerate(rows):
        rc = f' class="{_e(row_class[j])}"' if row_class and row_class[j] else ""
        body.append(f"<tr{rc}>" + "".join(f"<td{cls(i)}>{_cell(c)}</td>" for i, c in enumerate(r)) + "</tr>")
    tid = f' id="{_e(table_id)}"' if table_id else ""
    parts = [(body, "")] if split is None else [(body[:split], ""), (body[split:], ' class="controls"')]
    tbody = "".join(f"<tbody{c}>{''.join(b)}</tbody>" for b, c in parts if b) or "<tbody></tbody>"
    return f'<div class="scroll"><table{tid}><thead>{thead}</thead>{tbody}</table></div>'


def png_display_width(data: bytes) -> int | None:
    """CSS width (px at 96 dpi) of a PNG from its IHDR width and pHYs resolution, so a 150-dpi figure
    is shown at its intended size (and sharp on high-density screens); None if unknown."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    width = int.from_bytes(data[16:20], "big")
    pos = 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind == b"pHYs" and length == 9:
            ppu = int.from_bytes(data[pos + 8 : pos + 12], "big")
            if data[pos + 16] == 1 and ppu > 0:  # unit: metre
                return max(1, round(width * 96 / (ppu * 0.0254)))
            return None
        if kind in (b"IDAT", b"IEND"):
            break
        pos += 12 + length
    return None


def _img(path: Path, alt: str, caption: str, fig_id: str) -> str:
    raw = path.read_bytes()
    data = base64.b64encode(raw).decode("ascii")
    w = png_display_width(raw)
    size = f' style="width:{w}px"' if w else ""
    return (
        f'<figure id="{_e(fig_id)}"><img alt="{_e(alt)}"{size} src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


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
    """The criterion of the run, for "How to read": absolute thresholds, or beyond the prior by
    delta, with how delta was calibrated (``prior.delta``)."""
    c = criterion_of(summary)
    if c["criterion"] == "beyond-prior":
        prior = summary.get("prior") if isinstance(summary.get("prior"), Mapping) else {}
        n_img = as_int(prior.get("n_images"))
        over = f"over {n_img} untested images" if n_img is not None else "over untested images"
        delta = "&delta;" if c["delta"] is None else f"&delta; = {c['delta']:.3f} rad"
        text = ("Criterion: <b>beyond the prior</b>. The test is also run with the model's <i>prior map</i> (the "
                f"mean of its own occlusion maps {_e(over)}: what hiding does to this model on any face); a map "
                "<i>passes</i> when its gap d<sub>high</sub> &minus; d<sub>low</sub> exceeds the prior's gap on the "
                f"same image by more than {delta}, and is <i>falsified</i> otherwise. ")
        cal = c["calibration"]
        if cal is not None:
            q, n, med = as_float(cal.get("quantile")), as_int(cal.get("n")), as_float(cal.get("excess_median"))
            quant = "a high" if q is None else f"the {100 * q:g}%"
            detail = ", ".join(x for x in (None if n is None else f"{n} tests",
                                           None if med is None else f"median excess {med:.3f} rad") if x)
            text += (f"&delta; was calibrated: it is {_e(quant)} quantile of the excess over the prior that maps "
                     "knowing only the prior (the prior map, its cells reordered at random within bands of its "
                     "range) reach on those untested images" + (f" ({_e(detail)})" if detail else "")
                     + ", so a map passes only if it beats the prior by more than such maps do.")
        elif c["delta"] is not None:
            text += "&delta; was given for the run, not calibrated."
        else:
            text += "&delta; is not recorded."
        return text
    if c["criterion"] != "absolute":
        return f"Criterion: <b>{_e(c['criterion'])}</b>."
    values = ""
    if None not in (c["tau_high"], c["tau_low"], c["epsilon"]):
        values = (f" (&tau;<sub>high</sub> = {c['tau_high']:.3f}, &tau;<sub>low</sub> = {c['tau_low']:.3f}, "
                  f"&epsilon; = {c['epsilon']:.3f} rad)")
    return ("Criterion: <b>absolute thresholds</b>. The map <i>passes</i> when hiding the top-ranked features "
            "moves the embedding far (d<sub>high</sub> &gt; &tau;<sub>high</sub>), hiding the bottom-ranked ones "
            "barely moves it (d<sub>low</sub> &lt; &tau;<sub>low</sub>) and the gap is at least &epsilon;"
            f"{values}; otherwise it is <i>falsified</i>.")


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
    items = [
        ("experiment", summary.get("experiment")),
        ("model", summary.get("model") or cfg.get("model")),
        ("data source", data.get("source") or cfg.get("data")),
        ("started", summary.get("started")),
        ("created", summary.get("created")),
        ("elapsed", format_elapsed(summary.get("elapsed_s"))),
        ("result rows", summary.get("n_rows")),
    ]
    items = [(k, v) for k, v in items if v is not None or k in ("model", "created")]
    out = ['<h2 id="run">Run</h2>', _kv_table(items)]
    env = summary.get("environment")
    if isinstance(env, Mapping) and env:
        out += ["<h3>Environment</h3>", _kv_table(env.items())]
    return "\n".join(out)


#: Top-level summary keys the report shows in their own place; any other is listed under "Other".
_KNOWN_KEYS = {
    "experiment", "created", "started", "model", "config", "falsification", "calibration", "environment",
    "data", "n_rows", "n_errors", "errors", "elapsed_s", "methods", "comparisons", "experiment_6_2",
    "controls", "prior",
}


def _with_effective_k(summary: Mapping, items: Mapping) -> list[tuple[str, Any]]:
    """``items``, with a recorded K that is not the number of counterfactuals drawn annotated:
    '16 (K = 1 used: deterministic fill)'."""
    k = effective_k(summary)
    det = is_deterministic_fill(fill_and_k(summary)[0])
    return [
        (key, f"{v} (K = {k} used{': deterministic fill' if det else ''})"
         if key == "K" and k is not None and as_int(v) != k else v)
        for key, v in items.items()
    ]


def _section_config(summary: Mapping) -> str:
    out = ['<h2 id="config">Configuration</h2>']
    cfg = summary.get("config")
    if isinstance(cfg, Mapping) and cfg:
        out.append(_kv_table(_with_effective_k(summary, cfg)))
    else:
        out.append('<p class="na">No configuration recorded.</p>')
    fals = summary.get("falsification")
    if isinstance(fals, Mapping) and fals:
        out += ["<h3>Falsification test settings</h3>", _kv_table(_with_effective_k(summary, fals))]
    prior = summary.get("prior")
    if isinstance(prior, Mapping) and prior:
        out += ['<h3 id="prior">Prior map</h3>',
                _kv_table((k, v) for k, v in prior.items() if k != "cells"),
                '<p class="caption">The model\'s image-independent prior map: the mean of its occlusion maps '
                "over images that are not tested (the <code>centre</code> control, and the reference of the "
                "beyond-prior criterion). delta: the beyond-prior margin calibrated on those images, when it "
                "was.</p>"]
    if "calibration" in summary:
        cal = summary.get("calibration")
        out.append("<h3>Calibration</h3>")
        if isinstance(cal, Mapping) and cal:
            out.append(_kv_table(cal.items()))
        else:
            out.append('<p class="caption">None: the thresholds were given, not calibrated.</p>')
    other = [(k, v) for k, v in summary.items() if k not in _KNOWN_KEYS]
    if other:
        out += ["<h3>Other</h3>", _kv_table(other)]
    return "\n".join(out)


def _section_data(summary: Mapping) -> str:
    data = summary.get("data") if isinstance(summary.get("data"), Mapping) else {}
    out = ['<h2 id="data">Data</h2>']
    counts = [
        ("pairs used", data.get("n_pairs")),
        ("genuine pairs", data.get("n_genuine")),
        ("impostor pairs", data.get("n_impostor")),
        ("pairs skipped", data.get("n_skipped")),
        ("method-pair errors", summary.get("n_errors", len(summary.get("errors") or []))),
    ]
    out.append(_kv_table(counts))
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


_HTML_HEADER_6_1 = {
    "d_high": "mean d<sub>high</sub> (rad)",
    "d_low": "mean d<sub>low</sub> (rad)",
    "d'": "mean d&prime;",
}


def _figures_for(out_dir: Path, section: str) -> str:
    parts = []
    for stem, (sec, caption) in FIGURES.items():
        png = out_dir / "figures" / f"{stem}.png"
        if sec == section and png.is_file():
            parts.append(_img(png, stem.replace("_", " "), caption, stem))
    return "\n".join(parts)


def _section_6_1(summary: Mapping, out_dir: Path) -> str:
    out = ['<h2 id="exp-6-1">Experiment 6.1: falsification rate per method</h2>']
    desc = run_description(summary)
    if desc:
        out.append(f'<p class="subtitle">{_e(desc)}</p>')
    header, cells = table_6_1_cells(summary)
    if cells:
        hdr = [_HTML_HEADER_6_1.get(h, _e(h)) for h in header]
        numeric = range(1, len(header))
        flags = [control for _, control in table_6_1_rows(summary)]
        out.append(_table(hdr, cells, numeric=numeric, raw_header=True, table_id="table-6-1",
                          row_class=["control" if f else "" for f in flags],
                          split=flags.index(True) if True in flags else None))
        beats = ""
        if "p vs centre" in header or "p vs own random model" in header:
            beats += (" p vs centre, p vs own random model: against the centre prior and against the method's own "
                      "maps on a randomised model.")
        if "Beats controls" in header:
            beats += (" Beats controls: falsified significantly (Holm) less often than each control it was compared "
                      "with; no: not shown to explain this model on these images.")
        out.append(
            '<p class="caption">FR = falsified / (passed + falsified) in %, with its Wilson 95% CI; untestable '
            "maps excluded. d<sub>high</sub>, d<sub>low</sub>: geodesic shift of the embedding (radians) when the "
            "highest / lowest ranked features are hidden, averaged over testable pairs; d&prime;: separation of "
            "the two. "
            "p: McNemar exact test against the named method, Holm-adjusted (* significant at &alpha; = 0.05); "
            f"&ndash;: not applicable or not available.{beats} Grey rows below the rule are controls.</p>"
        )
    else:
        out.append('<p class="na">No method results in the summary.</p>')
    out.append(_section_controls(summary))
    comps = [c for c in summary.get("comparisons") or [] if isinstance(c, Mapping)]
    if comps:
        out.append('<h3 id="comparisons">Paired comparisons</h3>')
        rows = []
        yes_no = lambda x: None if not isinstance(x, bool) else ("yes" if x else "no")  # noqa: E731
        with_beats = any("beats" in c for c in comps)
        for c in comps:
            rows.append([
                c.get("method"), c.get("against"), fmt_num(c.get("n_paired"), 0), fmt_num(c.get("n01"), 0),
                fmt_num(c.get("n10"), 0), fmt_p(c.get("p")), fmt_p(c.get("p_holm")), fmt_num(c.get("cohens_h"), 2),
                yes_no(c.get("significant")),
            ] + ([yes_no(c.get("beats"))] if with_beats else []))
        out.append(_table(
            ["Method", "Against", "n paired", "n01", "n10", "p", "p (Holm)", "Cohen's h", "Significant"]
            + (["Beats"] if with_beats else []),
            rows, numeric=range(2, 8), table_id="comparisons-table",
        ))
        out.append(
            '<p class="caption">McNemar exact test on the pairs where both maps are testable (n paired); n01 and '
            "n10 are the discordant pairs (one method falsified, the other passed). p (Holm): adjusted over all "
            "comparisons of the run. Cohen's h between the two falsification rates (0.2 small, 0.5 medium, "
            "0.8 large)." + (" Beats: significant, and the method is falsified less often than the one it is "
                             "compared with." if with_beats else "") + "</p>"
        )
    figs = _figures_for(out_dir, "6.1")
    if figs:
        out.append("<h3>Figures</h3>")
        out.append(figs)
    return "\n".join(out)


def _section_controls(summary: Mapping) -> str:
    """What the controls of the run are, and which methods do not beat theirs (``summary["controls"]``)."""
    names = [str(r["method"]) for r, control in table_6_1_rows(summary) if control]
    kinds = control_kinds(names)
    out = ['<h3 id="controls">Controls</h3>']
    intro = ("Controls are maps that cannot be right about the model on this image; a method whose map the test "
             "does not falsify clearly less often than its controls' is not shown to explain this model on "
             "these images, however low its own falsification rate.")
    if kinds:
        intro += " This run has: " + "; ".join(f"<code>{_e(label)}</code>, {_e(what)}" for label, what in kinds) + "."
    elif not names:
        intro += " This run has none."
    out.append(f'<p id="controls-intro">{intro}</p>')
    verdicts = control_verdicts(summary)
    if not verdicts:
        out.append('<p class="caption" id="controls-not-run">No method was compared with the <code>centre</code> '
                   "prior or with its own maps on a randomised model (not run: add <code>centre</code> to the "
                   "methods, or run with <code>--sanity</code>).</p>")
        return "\n".join(out)
    failing = [v for v in verdicts if v.get("beats_all") is not True]
    if failing:
        items = "".join(
            "<li>" + _e(v.get("sentence") or f"{v['method']} does not beat "
                        + ", ".join(control_label(b) for b in v.get("not_beaten") or []) + ".") + "</li>"
            for v in failing)
        out.append('<div class="callout warn" id="controls-not-beaten"><p><b>Methods that do not beat their '
                   f"controls</b></p><ul>{items}</ul></div>")
    else:
        checked = ", ".join(str(v["method"]) for v in verdicts)
        out.append(f'<p id="controls-all-beaten">Every method checked against its controls ({_e(checked)}) is '
                   "falsified significantly less often than each of them (McNemar, Holm-corrected).</p>")
    return "\n".join(out)


def _section_6_2(summary: Mapping, out_dir: Path) -> str:
    section = exp_6_2(summary)
    if section is None:
        return ""
    out = ['<h2 id="exp-6-2">Experiment 6.2: falsification rate by verification margin</h2>']
    unit = section.get("unit") or "pair"
    edges = [as_float(e) for e in section.get("quartile_edges") or []]
    if edges:
        out.append(
            '<p class="subtitle">Quartile edges of the margin: '
            + _e(", ".join("?" if e is None else f"{e:+.3f}" for e in edges))
            + f"; unit of analysis: {_e(unit)}.</p>"
        )
    built = table_6_2_cells(summary)
    if built is not None:
        header, sub, cells = built
        flags = {str(r["method"]): row_is_control(r) for r in method_rows(summary)}
        controls = ["control" if flags.get(c[0], c[0] == "random") else "" for c in cells]
        hdr = [_e(h).replace("Spearman rho", "Spearman &rho;") for h in header]
        out.append(_table(hdr, cells, numeric=range(1, len(header)), sub_header=sub, row_class=controls,
                          raw_header=True, table_id="table-6-2"))
        out.append(
            '<p class="caption">Each cell: FR % [Wilson 95% CI] and n testable '
            f"{_e(unit)}s in that quartile of the verification margin (range under the quartile's name; "
            "margin 0 is the decision threshold). Last column: Spearman's &rho; between margin and "
            "falsification.</p>"
        )
    corr = [c for c in section.get("correlation") or [] if isinstance(c, Mapping)]
    if corr:
        out.append('<h3 id="correlation">Margin and falsification</h3>')
        order = methods_6_2(summary, section)
        corr.sort(key=lambda c: order.index(str(c.get("method"))) if str(c.get("method")) in order else len(order))
        rows = [[c.get("method"), fmt_num(c.get("n"), 0), fmt_num(c.get("spearman_rho"), 3), fmt_p(c.get("p"))] for c in corr]
        out.append(_table(["Method", "n", "Spearman &rho;", "p"], rows, numeric=range(1, 4), raw_header=True,
                          table_id="correlation-table"))
    figs = _figures_for(out_dir, "6.2")
    if figs:
        out.append(figs)
    return "\n".join(out)


def _section_other_figures(out_dir: Path) -> str:
    folder = out_dir / "figures"
    if not folder.is_dir():
        return ""
    known = set(FIGURES)
    others = [p for p in sorted(folder.glob("*.png")) if p.stem not in known]
    if not others:
        return ""
    parts = ['<h2 id="other-figures">Other figures</h2>']
    parts += [_img(p, p.stem, p.name, f"fig-{p.stem}") for p in others]
    return "\n".join(parts)


def _section_latex(out_dir: Path) -> str:
    folder = out_dir / "tables"
    texs = sorted(folder.glob("*.tex")) if folder.is_dir() else []
    if not texs:
        return ""
    parts = ['<h2 id="latex">LaTeX tables</h2>',
             '<p class="caption">The same tables as LaTeX (booktabs), as written under '
             "<code>tables/</code>.</p>"]
    for p in texs:
        parts.append(f"<details><summary>{_e(p.name)}</summary><pre>{_e(p.read_text(encoding='utf-8'))}</pre></details>")
    return "\n".join(parts)


def render_report(summary: Mapping, out_dir: str | Path) -> str:
    """The report page as a string; figures and tables are read from under ``out_dir``."""
    out_dir = Path(out_dir)
    experiment = summary.get("experiment") or "6.1"
    cfg = summary.get("config") if isinstance(summary.get("config"), Mapping) else {}
    model = summary.get("model") or cfg.get("model")
    title = f"falsify report: experiment {experiment}" + (f" ({model})" if model else "")
    has_6_2 = exp_6_2(summary) is not None
    body_parts = [
        _section_metadata(summary),
        _how_to_read(summary),
        _section_data(summary),
        _section_6_1(summary, out_dir),
        _section_6_2(summary, out_dir),
        _section_config(summary),
        _section_other_figures(out_dir),
        _section_latex(out_dir),
    ]
    nav = [("run", "Run"), ("how-to-read", "How to read"), ("data", "Data"), ("exp-6-1", "6.1 results")]
    if has_6_2:
        nav.append(("exp-6-2", "6.2 by margin"))
    nav.append(("config", "Configuration"))
    nav_html = "<nav>" + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in nav) + "</nav>"
    n_methods = len(method_rows(summary))
    n_pairs = (summary.get("data") or {}).get("n_pairs") if isinstance(summary.get("data"), Mapping) else None
    subtitle = ", ".join(
        x for x in (
            f"{n_pairs} pairs" if n_pairs is not None else None,
            f"{n_methods} methods" if n_methods else None,
            f"created {summary['created']}" if summary.get("created") else None,
        ) if x
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>{_e(title)}</h1>\n"
        + (f'<p class="subtitle">{_e(subtitle)}</p>\n' if subtitle else "")
        + nav_html + "\n"
        + "\n".join(p for p in body_parts if p)
        + '\n<footer>Written by <code>falsify report</code> from <code>summary.json</code>.</footer>\n'
        "</main>\n</body>\n</html>\n"
    )


def write_report(out_dir: str | Path) -> Path:
    """Write ``out_dir/report.html`` from ``out_dir/summary.json``, ``out_dir/tables/*.tex`` and
    ``out_dir/figures/*.png`` (embedded); returns its path. The page is written to a temporary
    sibling and moved into place, so a failed write (OSError, which propagates) leaves no
    half-written report."""
    out_dir = Path(out_dir)
    summary = load_summary(out_dir)
    return write_text_atomic(out_dir / "report.html", render_report(summary, out_dir))
