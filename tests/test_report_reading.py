"""How far a 6.1 run's FRs can be read (``falsify.report.reading``): the known-truth benchmark's
confirmation-half rates for the run's model and test, and each method's FR placed between the
run's two references (the ceiling's falsified share and the null maps' FR)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from falsify.report import reading
from tests.test_report import _section, make_calibrated_summary, write_report, write_summary

#: a known-truth table entry of the current schema (the numbers are the fixture's, not a measurement)
ENTRY = {"measured": True, "schema": reading.CONFIRMATION_SCHEMA, "half": "confirmation", "model": "dlib-resnet",
         "align": "dlib-150", "fill": "mean", "q": 0.1, "q_label": "0.1", "target": "embedding",
         "criterion": "beyond-prior", "delta": 0.0, "sensitivity": 0.8125, "sensitivity_ci": [0.6432, 0.9111],
         "sensitivity_k": 26, "sensitivity_n": 32, "specificity": 0.9375, "specificity_ci": [0.8812, 0.9781],
         "specificity_k": 150, "specificity_n": 160, "n_composites": 32, "n_composites_negative": 32,
         "construction": "lateral", "parts": "inner", "split_seed": 0, "date": "2026-12-08",
         "command": "falsify run known-truth --model dlib-resnet --n-pairs 64",
         "pooled": {"sensitivity": 0.5, "specificity": 0.5, "n_positive": 60, "n_negative": 300}}
#: an entry of the earlier schema: rates pooled over every composite
POOLED = {"measured": True, "model": "dlib-resnet", "fill": "mean", "q": 0.1, "target": "embedding",
          "criterion": "beyond-prior", "sensitivity": 0.681, "specificity": 0.981, "n_positive": 94,
          "n_negative": 376, "construction": "average", "parts": "inner", "date": "2026-12-02",
          "command": "falsify run known-truth --n-pairs 100"}


def printable(s: dict) -> dict:
    """``s`` with the keys a run's summary has that the report's fixtures leave out (what
    ``falsify run`` prints reads them)."""
    for m in s["methods"]:
        m.setdefault("seconds_per_pair", None)
        m.setdefault("n_error", 0)
    return s


def with_references(s: dict) -> dict:
    """``s`` with a ceiling falsified on 1 of 10 pairs and null maps falsified on 9 of 10."""
    s["ceiling"] = {"n": 10, "n_passed": 9, "n_falsified": 1, "n_untestable": 0, "n_error": 0, "n_pairs": 10,
                    "share_falsified": 0.1, "ci_low": 0.0179, "ci_high": 0.4042, "fr_where_ceiling_passes": {}}
    s["null_maps"] = {"n": 10, "n_passed": 1, "n_falsified": 9, "n_untestable": 0, "n_error": 0, "n_pairs": 10,
                      "fr": 0.9, "ci_low": 0.5958, "ci_high": 0.9821}
    return s


def test_the_report_prints_the_confirmation_rates_with_their_intervals(tmp_path):
    from falsify.experiments.exp_6_1 import EXPERIMENT

    s = make_calibrated_summary()
    s["test_validity"] = dict(ENTRY)
    sentence = reading.validity_sentence(s)
    assert "confirmation half (32 composites, lateral construction, split seed 0)" in sentence
    assert "passed 81% [64, 91] of maps that are right (sensitivity, Wilson 95%, n = 32 truth maps)" in sentence
    assert ("falsified 94% [88, 98] of maps that are wrong (specificity, 95% bootstrap by composite, n = 160 maps "
            "of 32 composites)") in sentence
    assert "beyond-prior, delta 0" in sentence and "'falsify run known-truth --model dlib-resnet --n-pairs 64'" in sentence
    assert "50%" not in sentence  # the pooled rates are secondary and never printed
    assert "an FR estimates the share of wrong maps" in sentence  # 81% and 94%: at the goals
    low = {**ENTRY, "sensitivity": 0.54, "specificity": 0.93}
    said = reading.validity_sentence({**s, "test_validity": low})
    assert "cannot be read as the share of wrong maps: the test falsifies 46% of maps that are right" in said
    write_summary(tmp_path, s)
    page = write_report(tmp_path).read_text()
    para = _section(page, 'id="test-validity"', "</p>")
    assert "passed 81% [64, 91] of maps that are right" in para and "falsified 94% [88, 98]" in para
    assert page.index('id="test-validity"') < page.index('id="how-to-read"')  # beside the FR table
    assert "passed 81% [64, 91]" in EXPERIMENT.text(printable(s))


def test_the_report_prints_why_the_rates_are_not_measured(tmp_path):
    from falsify.experiments.exp_6_1 import EXPERIMENT
    from falsify.experiments.truth_table import measured

    s = make_calibrated_summary()
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"measurements": []}))
    s["test_validity"] = measured("dlib-resnet", "dlib-150", "mean", 0.1, "embedding", "beyond-prior", 0.0, path=table)
    sentence = reading.validity_sentence(s)
    assert sentence.startswith("The test's sensitivity and specificity were not measured for this model")
    assert "'falsify run known-truth --model dlib-resnet --n-pairs 100 --out OUT" in sentence
    assert sentence.endswith("known_truth_table.py OUT' measures them.")
    assert sentence in EXPERIMENT.text(printable(s))
    write_summary(tmp_path / "run", s)
    para = _section(write_report(tmp_path / "run").read_text(), 'id="test-validity"', "</p>")
    assert "were not measured for this model" in para and "known_truth_table.py OUT" in para
    s.pop("test_validity")  # an older summary: no paragraph
    write_summary(tmp_path / "run", s)
    assert 'id="test-validity"' not in write_report(tmp_path / "run").read_text()


def test_pooled_entries_are_never_printed_as_confirmation_rates(tmp_path):
    """An entry of the earlier schema (pooled rates), in the table or stored in a summary, is
    never printed as rates; ``falsify report`` reads today's table instead."""
    from falsify.experiments.base import refresh_validity
    from falsify.experiments.exp_6_1 import EXPERIMENT
    from falsify.experiments.truth_table import TABLE, load_table, measured

    s = make_calibrated_summary()
    s["test_validity"] = dict(POOLED)
    sentence = reading.validity_sentence(s)
    assert "pooled" in sentence and "68%" not in sentence and "98%" not in sentence
    assert "68%" not in EXPERIMENT.text(printable(s))
    write_summary(tmp_path, s)
    para = _section(write_report(tmp_path).read_text(), 'id="test-validity"', "</p>")
    assert "pooled" in para and "68%" not in para
    # the checked-in table: no entry it returns as measured lacks the confirmation schema
    for e in load_table(TABLE):
        got = measured(e["model"], e["align"], e["fill"], e["q"] if e["q"] is not None else 0.1, e["target"],
                       e["criterion"], e["delta"])
        assert not got["measured"] or reading.is_confirmation(got), e
    # a table holding a pooled entry and no confirmation entry for the configuration: not measured
    table = tmp_path / "t.json"
    old = {k: v for k, v in POOLED.items() if k != "measured"} | {"align": "dlib-150", "delta": 0.0}
    table.write_text(json.dumps({"measurements": [old]}))
    got = measured("dlib-resnet", "dlib-150", "mean", 0.1, "embedding", "beyond-prior", 0.0, path=table)
    assert not got["measured"] and "pooled over every composite of an earlier design" in got["reason"]
    # a stored pooled entry is read again from today's table by 'falsify report'
    fresh = refresh_validity(dict(s))["test_validity"]
    assert fresh is not s["test_validity"] and (not fresh["measured"] or reading.is_confirmation(fresh))


def test_each_fr_is_placed_between_the_ceiling_and_the_null_maps(tmp_path):
    from falsify.experiments import exp_6_1 as E61
    from falsify.report.tables import row_is_control

    s = with_references(make_calibrated_summary())
    methods = {r["method"]: r for r in s["methods"]}
    places = {p["method"]: p for p in reading.placements(s)}
    assert set(places) == {m for m, r in methods.items() if not row_is_control(r)} and places
    for m, p in places.items():
        fr = reading.rate_of(methods[m])[0]
        assert p["fr"] == fr
        if fr is None:
            assert p["text"] == "FR n/a (no testable pair)"
        elif 0.1 <= fr <= 0.9:
            assert p["text"] == f"FR {100 * fr:.1f}%, between the ceiling's 10.0% and the null maps' 90.0%"
    assert places["gradcam"]["text"] == "FR 21.1%, between the ceiling's 10.0% and the null maps' 90.0%"
    refs = reading.references_sentence(s)
    assert "ceiling (the best map its greedy search finds) is falsified on 10.0% (95% CI 1.8-40.4%, n = 10)" in refs
    assert "null maps (maps that know only the prior) are falsified on 90.0% (95% CI 59.6-98.2%, n = 10)" in refs
    assert reading.place(0.05, {"rate": 0.1}, {"rate": 0.9}) == ("FR 5.0%, below the ceiling's 10.0% "
                                                                 "(and the null maps' 90.0%)")
    assert reading.place(0.95, {"rate": 0.1}, {"rate": 0.9}) == ("FR 95.0%, above the null maps' 90.0% "
                                                                 "(and the ceiling's 10.0%)")
    assert reading.place(0.5, {"rate": 0.1}, None) == "FR 50.0%; the ceiling's 10.0% (at or above it; no null maps)"
    text = E61.EXPERIMENT.text(printable(s))
    first = next(iter(places.values()))
    assert f"{first['method']}: {first['text']}" in text and "null maps (maps that know only the prior)" in text
    assert "Null maps (maps that know only the prior), tested on the same pairs, are falsified on 90.0\\%" in \
        E61.table_6_1_tex(s)
    write_summary(tmp_path, s)
    block = _section(write_report(tmp_path).read_text(), 'id="fr-placement"', "</div>")
    assert f"<b>{first['method']}</b>: {first['text']}".replace("'", "&#x27;") in block
    # a summary without either reference: no placement; without the null maps, why
    old = {k: v for k, v in s.items() if k not in ("ceiling", "null_maps")}
    assert reading.placements(old) == [] and reading.references_sentence(old) is None
    skipped = {**s, "null_maps": {"skipped": "the null maps need the model's prior"}}
    assert "Not available: null maps: the null maps need the model's prior." in reading.references_sentence(skipped)


def test_null_maps_are_seeded_per_pair_and_tested_like_any_map(tiny_model):
    """One null map per pair, the same whether the pair is tested alone or in a batch, agreeing with
    the prior's coarse ranking; its rows under their own key with the test's verdict."""
    from falsify.data.pairs import Pair
    from falsify.experiments.null_reference import NULL_KEY, NULL_OF, RowsNull, null_map_of, null_summary
    from falsify.falsification import FalsificationConfig

    gen = torch.Generator().manual_seed(0)
    prior = torch.rand(32, 32, generator=gen)
    a, b = null_map_of(prior, 4, 0, 7), null_map_of(prior, 4, 0, 7)
    assert torch.equal(a, b) and not torch.equal(a, null_map_of(prior, 4, 0, 8))
    span = float(prior.max() - prior.min())
    assert float((a - prior).min()) >= 0.0 and float((a - prior).max()) <= span / 8 + 1e-6
    cfg = FalsificationConfig(grid=4, q=0.25, fill="mean", criterion="beyond-prior", delta=0.0, tau_high=0.0,
                              tau_low=3.14, epsilon=0.0)
    ctx = SimpleNamespace(prior_map=prior, fconfig=cfg, config=SimpleNamespace(seed=0), model_name="tiny")
    kind = RowsNull(ctx)
    assert kind.keys() == [NULL_KEY] and kind.rows_of == NULL_OF
    pairs = [Pair(a=f"/x/{i}.png", b=f"/y/{i}.png", same=False, index=i) for i in range(3)]
    images = torch.rand(3, 3, 32, 32, generator=gen)
    with torch.no_grad():
        refs = tiny_model(torch.rand(3, 3, 32, 32, generator=gen))
    rows = [r for batch, _ in kind.computer(tiny_model).compute(pairs, images, refs, [NULL_KEY], set()) for r in batch]
    alone = [r for batch, _ in kind.computer(tiny_model).compute(pairs[1:2], images[1:2], refs[1:2], [NULL_KEY], set())
             for r in batch]
    assert [r["method"] for r in rows] == [NULL_KEY] * 3 and {r["experiment"] for r in rows} == {NULL_OF}
    assert all(r["verdict"] in ("passed", "falsified", "untestable") for r in rows)
    assert alone[0]["verdict"] == rows[1]["verdict"]
    assert alone[0]["d_high"] == pytest.approx(rows[1]["d_high"], abs=1e-5)  # float32, batch of 1 vs 3
    store = SimpleNamespace(rows=lambda *args, **kw: rows)
    section = null_summary(store, pairs, "tiny")
    n_f = sum(r["verdict"] == "falsified" for r in rows)
    n = sum(r["verdict"] in ("passed", "falsified") for r in rows)
    assert section["n_pairs"] == 3 and section["n_falsified"] == n_f and section["n"] == n
    assert section["fr"] == (pytest.approx(n_f / n) if n else None)


def test_a_6_1_run_tests_the_null_maps_on_its_pairs(lfw_sample, tmp_path):
    """A small 6.1 run with the prior (centre among the methods): the null maps' rows under their
    own key, never a method; the summary's section; the placement printed; a rerun resumes. Without
    a prior the summary says why there are no null maps."""
    from falsify.experiments import ResultsStore, RunConfig, runner_for
    from falsify.experiments import exp_6_1 as E61
    from falsify.experiments.null_reference import NULL_OF, RowsNull

    base = dict(data=str(lfw_sample), methods=["saliency", "centre"], n_pairs=2, grid=7, out=str(tmp_path / "run"),
                tau_high=0.2, tau_low=0.1, epsilon=0.05, grid_pairs=0, preset="plain", ceiling=False,
                prior_images=4, prior_grid=4)
    logs = []
    runner = runner_for(RunConfig(**base), progress=False, log=logs.append)
    summary = runner.run()
    null = summary["null_maps"]
    assert [m["method"] for m in summary["methods"]] == ["saliency", "centre"]
    assert not any("null" in (x["method"], x["against"]) for x in summary["comparisons"])
    assert null["n_pairs"] == 2 and null["n_error"] == 0 and null["n_passed"] + null["n_falsified"] + null["n_untestable"] == 2
    with ResultsStore(tmp_path / "run" / "results.sqlite") as store:
        rows = store.rows(NULL_OF, "dlib-resnet")
        assert len(rows) == 2 and {r["method"] for r in rows} == {"null"}
        assert runner.session.compute_rows(store, RowsNull(runner.session.context(NULL_OF))) == 0
    assert any("null maps of all 2 pairs are already in the store" in str(x) for x in logs)
    text = E61.EXPERIMENT.text(summary)
    fr = summary["methods"][0]["fr"]
    want = reading.place(fr, None, {"rate": null["fr"]})
    assert f"saliency: {want}" in text and "\nnull maps " in text
    page = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert 'id="fr-placement"' in page and "Not available: ceiling" in page
    plain = dict(base, methods=["saliency"], out=str(tmp_path / "plain"), n_pairs=1)
    summary = runner_for(RunConfig(**plain), progress=False, log=logs.append).run()
    assert "need the model's prior" in summary["null_maps"]["skipped"]
    assert "no null maps: the null maps need the model's prior" in E61.EXPERIMENT.text(summary)


def test_the_table_says_what_d_high_and_d_low_measure_under_the_runs_target():
    from falsify.choices import TARGETS
    from falsify.report.reading import DISTANCE_WORDS, distance_words

    assert set(DISTANCE_WORDS) == set(TARGETS)  # every target of the test has its words
    assert distance_words({"falsification": {"target": "signed-angle"}}).startswith("signed change of the angle")
    # a summary made before the target was a setting measured the embedding's shift
    assert distance_words({"falsification": {"fill": "mean"}}) == DISTANCE_WORDS["embedding"]
