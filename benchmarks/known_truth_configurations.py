"""Print a known-truth run's configurations as the Markdown table docs/results.md quotes: per fill,
q, target and criterion, the rates on every kept composite, Youden's J on the selection half, the
confirmation half's sensitivity (Wilson 95%) and specificity (95% bootstrap by composite), each
negative's share falsified (all composites), the apart maps, the ties, and the separability bound
(AUC, oracle sensitivity at specificity 0.90), all read from ``OUT/summary.json``:

    python benchmarks/known_truth_configurations.py OUT [--q truth|0.1|all] [--criteria "absolute;beyond-mirror"]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}"


def ci(x) -> str:
    return "" if not x else f" [{100 * x[0]:.0f}, {100 * x[1]:.0f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="a 'falsify run known-truth' output folder")
    ap.add_argument("--q", default="truth", help="q label to show: truth (q matched), 0.1, or all (default truth)")
    ap.add_argument("--criteria", default="", help="semicolon-separated criteria labels to show (default: all)")
    a = ap.parse_args(argv)
    path = a.out / "summary.json"
    if not path.is_file():
        ap.error(f"{path} not found: give the folder of a finished 'falsify run known-truth'")
    kt = json.loads(path.read_text())["known_truth"]
    negs = list(kt["negative"])
    want = {c.strip() for c in a.criteria.split(";") if c.strip()}
    head = (["fill", "q", "target", "criterion", "δ", "sens. all", "spec. all", "J sel.", "sens. conf. [95%]",
             "spec. conf. [95%, by composite]"] + negs + ["centre passed", "edge passed", "ties", "AUC", "oracle sens."])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for e in kt["configurations"]:
        if (a.q != "all" and e["q_label"] != a.q) or (want and e["criterion"] not in want):
            continue
        al, co, sep = e["all"], e["confirmation"], e.get("separability") or {}
        by = al["specificity_by_negative"]
        cells = [e["fill"], e["q_label"], e["target"], e["criterion"], "-" if e["delta"] is None else f"{e['delta']:.4f}",
                 pct(al["sensitivity"]["rate"]), pct(al["specificity"]["rate"]),
                 "-" if e["selection"]["youden"] is None else f"{e['selection']['youden']:.2f}",
                 pct(co["sensitivity"]["rate"]) + ci(co["sensitivity"]["ci"]),
                 pct(co["specificity"]["rate"]) + ci(co["specificity"]["ci"])]
        cells += [pct(by[m]["rate"]) if m in by else "n/a" for m in negs]
        cells += [pct(al["apart"].get(m, {}).get("rate")) for m in ("centre", "edge")]
        cells += [str(al["ties"]), "-" if sep.get("auc") is None else f"{sep['auc']:.2f}", pct(sep.get("sensitivity"))]
        print("| " + " | ".join(cells) + " |")
    c = kt.get("confirmation")
    if c:
        cfg = c["configuration"]
        print(f"\nheadline (fixed on the selection half): fill {cfg['fill']}, q {cfg['q_label']}, {cfg['target']}, "
              f"{cfg['criterion']} (δ {cfg['delta']:.4f}): confirmation sensitivity {pct(c['sensitivity'])}"
              f"{ci(c['sensitivity_ci'])}, specificity {pct(c['specificity'])}{ci(c['specificity_ci'])} "
              f"(n = {c['n']} composites); falsified: "
              + ", ".join(f"{m} {pct(v['rate'])}%" for m, v in c["specificity_by_negative"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
