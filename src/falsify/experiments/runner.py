"""``falsify run``: experiments 6.1 and 6.2, resumable, one SQLite row per (method, pair).

Experiment 6.1 explains the probe image A of each pair against its reference f(B) with every
method and runs the falsification test on the map. Experiment 6.2 analyses the same tests by
the pair's verification margin, so ``falsify run 6.2`` computes whatever 6.1 rows are missing
and then adds its analysis; both read one store.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..data import load_images, load_pairs
from ..data.pairs import Pair, PairSet
from ..models.base import model_device
from .analysis import summarise, write_outputs
from .store import ResultsStore

EXPERIMENTS = ("6.1", "6.2")
#: The experiment whose rows both 6.1 and 6.2 read.
ROWS_OF = "6.1"


@dataclass
class RunConfig:
    """Every setting of a run. TOML files use the same keys; command-line flags override them."""

    experiment: str = "6.1"
    data: str | None = None
    pairs: str | None = None
    model: str = "dlib-resnet"
    methods: list[str] = field(default_factory=list)  # empty: every method
    n_pairs: int = 200
    K: int = 16
    seed: int = 0
    out: str | None = None
    fill: str = "blur"
    granularity: str = "grid"
    grid: int = 14
    q: float = 0.2
    tau_high: float | None = None
    tau_low: float | None = None
    epsilon: float | None = None
    calibration_pairs: int = 600
    batch_pairs: int = 8
    batch_size: int = 64
    method_options: dict[str, dict] = field(default_factory=dict)
    grid_pairs: int = 4  # pairs in the saliency-grid figure
    device: str | None = None

    #: settings that change results: a store made with other values is not resumed
    RESULT_KEYS = (
        "data", "pairs", "model", "n_pairs", "K", "seed", "fill", "granularity", "grid", "q",
        "tau_high", "tau_low", "epsilon", "calibration_pairs", "method_options",
    )

    def __post_init__(self) -> None:
        from ..attribution import METHODS

        if self.experiment not in EXPERIMENTS:
            raise ValueError(f"unknown experiment {self.experiment!r}; choose from {', '.join(EXPERIMENTS)}")
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        if not self.methods or self.methods == ["all"]:
            self.methods = list(METHODS)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        for name, minimum in (("n_pairs", 1), ("K", 1), ("calibration_pairs", 4), ("batch_pairs", 1), ("batch_size", 1)):
            if int(getattr(self, name)) < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {getattr(self, name)}")
        given = [v is not None for v in (self.tau_high, self.tau_low, self.epsilon)]
        if any(given) and not all(given):
            raise ValueError("give all of tau_high, tau_low and epsilon, or none (then they are calibrated)")
        unknown_opts = [m for m in self.method_options if m not in METHODS]
        if unknown_opts:
            raise ValueError(f"method_options names unknown method(s) {', '.join(unknown_opts)}")

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> "RunConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path} is not valid TOML: {exc}") from None
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k.replace("-", "_"): v for k, v in values.items()}
        if "counterfactuals" in values:
            values["K"] = values.pop("counterfactuals")
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def result_settings(self) -> dict:
        return {k: getattr(self, k) for k in self.RESULT_KEYS}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def environment(device: torch.device) -> dict:
    import captum
    import numpy

    return {
        "falsify": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "captum": captum.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_out(config: RunConfig, runs_dir: Path = Path("runs")) -> Path:
    """``runs/<experiment>-<timestamp>``, or the newest such folder made with the same result
    settings, so that running the same command again resumes it."""
    wanted = json.dumps(config.result_settings(), sort_keys=True, default=str)
    if runs_dir.is_dir():
        for d in sorted(runs_dir.glob("*-*"), reverse=True):
            store = d / "results.sqlite"
            if not store.is_file():
                continue
            with ResultsStore(store) as s:
                have = s.get_meta("settings")
            if have is not None and json.dumps(have, sort_keys=True, default=str) == wanted:
                return d
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return runs_dir / f"{config.experiment}-{stamp}"


class Runner:
    """Runs one experiment into ``out``; ``run()`` returns the summary dict."""

    def __init__(self, config: RunConfig, progress: bool = True, log=print) -> None:
        self.config = config
        self.progress = progress
        self.log = log
        self.out = Path(config.out) if config.out else default_out(config)

    # -- set-up -----------------------------------------------------------------------------
    def _open_store(self) -> ResultsStore:
        store = ResultsStore(self.out / "results.sqlite")
        have = store.get_meta("settings")
        want = json.loads(json.dumps(self.config.result_settings(), default=str))
        if have is None:
            store.set_meta("settings", want)
        elif have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            store.close()
            raise ValueError(
                f"{self.out} holds results made with other settings ({', '.join(diff)} differ); "
                "nothing was changed there. Use another --out, or the same settings to resume"
            )
        return store

    def _pairs(self) -> PairSet:
        c = self.config
        return load_pairs(c.data, c.pairs, n_pairs=c.n_pairs, seed=c.seed)

    def _calibration(self, model, store: ResultsStore):
        from ..falsification import Calibration, calibrate

        c = self.config
        if c.tau_high is not None:
            return None
        cached = store.get_meta("calibration")
        if cached:
            return Calibration(**cached)
        pairs = load_pairs(c.data, c.pairs, n_pairs=c.calibration_pairs, seed=c.seed + 1)
        self.log(f"calibrating tau_high, tau_low, epsilon on {len(pairs)} pairs ...")
        cal = calibrate(model, pairs, batch_size=c.batch_size, progress=self.progress)
        store.set_meta("calibration", cal.to_dict())
        return cal

    def falsification_config(self, calibration):
        from ..falsification import FalsificationConfig

        c = self.config
        fc = FalsificationConfig(
            fill=c.fill, granularity=c.granularity, grid=c.grid, q=c.q, K=c.K, seed=c.seed,
            batch_size=c.batch_size, tau_high=c.tau_high, tau_low=c.tau_low, epsilon=c.epsilon,
        )
        return calibration.apply(fc) if calibration is not None else fc

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> dict:
        from ..attribution import get_explainer
        from ..models import load_model
        from ..verification import embed_paths

        c = self.config
        started = _now()
        t0 = time.perf_counter()
        pairs = self._pairs()
        self.grid_ids = {p.id for p in self._grid_pairs(pairs)}
        model = load_model(c.model, device=c.device)
        self.model_name = model.name
        device = model_device(model)
        store = self._open_store()
        try:
            store.add_run(started, c.experiment, c.to_dict(), environment(device))
            self.log(f"run directory: {self.out}")
            self.log(pairs.summary())
            calibration = self._calibration(model, store)
            fconfig = self.falsification_config(calibration)
            store.set_meta("falsification_config", fconfig.to_dict())
            done = store.done(ROWS_OF, model.name)
            todo_pairs = [p for p in pairs if any((m, p.id) not in done for m in c.methods)]
            n_todo = sum((m, p.id) not in done for p in pairs for m in c.methods)
            if n_todo == 0:
                self.log("all rows are already in the store; writing the summary")
            else:
                self.log(f"{n_todo} of {len(pairs) * len(c.methods)} (method, pair) rows to compute")
                # every image of the sample, not only the pending ones: batch composition then
                # never depends on where an earlier run stopped, so resumed rows equal fresh ones
                emb, failed = embed_paths(
                    model, [q for p in pairs for q in (p.a, p.b)], c.batch_size, progress=False
                )
                explainers = {m: get_explainer(m, model, **c.method_options.get(m, {})) for m in c.methods}
                bar = tqdm(total=n_todo, desc=f"experiment {ROWS_OF}", unit="test", disable=not self.progress)
                for start in range(0, len(todo_pairs), c.batch_pairs):
                    chunk = todo_pairs[start : start + c.batch_pairs]
                    self._run_chunk(chunk, model, explainers, fconfig, emb, failed, done, store, bar)
                bar.close()
            elapsed = time.perf_counter() - t0
            threshold = calibration.threshold_cos if calibration is not None else model.threshold
            summary = summarise(store, c, pairs, model.name, threshold, elapsed_s=elapsed, started=started)
        finally:
            store.close()
        explanations = self._grid_explanations(model, pairs)
        write_outputs(self.out, summary, explanations)
        return summary

    def _grid_pairs(self, pairs: PairSet) -> list[Pair]:
        """The pairs of the saliency-grid figure: the first genuine and impostor pairs, half each."""
        n = self.config.grid_pairs
        gen = [p for p in pairs if p.same][: (n + 1) // 2]
        imp = [p for p in pairs if not p.same][: max(0, n - len(gen))]
        return gen + imp

    def _save_map(self, method: str, pair: Pair, m: torch.Tensor) -> None:
        path = self.out / "maps" / f"{pair.index}" / f"{method}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        import numpy as np

        np.save(path, m.detach().cpu().numpy().astype(np.float16))

    def _grid_explanations(self, model, pairs: PairSet):
        """(pair, PairExplanation with the stored maps of A) for the saliency-grid figure."""
        import numpy as np

        from ..data import load_image
        from ..report.explain import PairExplanation

        out = []
        for p in self._grid_pairs(pairs):
            folder = self.out / "maps" / f"{p.index}"
            maps = {m: torch.from_numpy(np.load(folder / f"{m}.npy").astype(np.float32))
                    for m in self.config.methods if (folder / f"{m}.npy").is_file()}
            if len(maps) != len(self.config.methods):
                continue
            try:
                a, b = (load_image(q, model.input_size) for q in (p.a, p.b))
            except ValueError:
                continue
            with torch.inference_mode():
                e = model(torch.stack([a, b]).to(model_device(model))).cpu()
            from ..geometry import cosine_similarity, geodesic_distance

            out.append((p, PairExplanation(a, b, float(cosine_similarity(e[0], e[1])),
                                           float(geodesic_distance(e[0], e[1])), maps_a=maps)))
        return out or None

    def _run_chunk(self, chunk: Sequence[Pair], model, explainers, fconfig, emb, failed, done, store, bar) -> None:
        from ..geometry import cosine_similarity, geodesic_distance

        c = self.config
        bad = [p for p in chunk if p.a in failed or p.b in failed]
        for p in bad:
            reason = failed.get(p.a) or failed.get(p.b)
            rows = [self._error_row(m, p, reason) for m in c.methods if (m, p.id) not in done]
            store.add_rows(rows)
            bar.update(len(rows))
        good = [p for p in chunk if p not in bad]
        if not good:
            return
        images, _ = load_images([p.a for p in good], model.input_size)
        refs = torch.stack([emb[p.b] for p in good])
        probes = torch.stack([emb[p.a] for p in good])
        cos = cosine_similarity(probes, refs).tolist()
        ang = geodesic_distance(probes, refs).tolist()
        device = model_device(model)
        for method, explainer in explainers.items():
            idx = [i for i, p in enumerate(good) if (method, p.id) not in done]
            if not idx:
                continue
            rows = self._test(method, explainer, model, fconfig, [good[i] for i in idx],
                              images[idx].to(device), refs[idx].to(device),
                              [cos[i] for i in idx], [ang[i] for i in idx])
            store.add_rows(rows)
            bar.update(len(rows))

    def _test(self, method, explainer, model, fconfig, pairs, images, refs, cos, ang) -> list[dict]:
        """Maps and tests for a batch; on failure, one by one so one bad pair costs one row."""
        from ..falsification import falsification_test

        t = time.perf_counter()
        try:
            maps = explainer(images, refs)
            results = falsification_test(model, images, refs, maps, fconfig, pair_ids=[p.index for p in pairs])
        except Exception as exc:  # noqa: BLE001 - recorded per pair below, the run goes on
            if len(pairs) == 1:
                return [self._error_row(method, pairs[0], f"{type(exc).__name__}: {exc}")]
            out = []
            for i in range(len(pairs)):
                out += self._test(method, explainer, model, fconfig, pairs[i : i + 1], images[i : i + 1],
                                  refs[i : i + 1], cos[i : i + 1], ang[i : i + 1])
            return out
        seconds = (time.perf_counter() - t) / len(pairs)
        for p, m in zip(pairs, maps):
            if p.id in self.grid_ids:
                self._save_map(method, p, m)
        rows = []
        for p, r, cs, an in zip(pairs, results, cos, ang):
            d = r.to_dict()
            rows.append({
                **self._base_row(method, p), "cosine": cs, "angle": an, "verdict": r.verdict,
                "failed": list(r.failed), "d_high": r.d_high, "d_low": r.d_low, "sd_high": r.sd_high,
                "sd_low": r.sd_low, "margin": r.margin, "d_prime": r.d_prime, "n_high": r.n_high,
                "n_low": r.n_low, "k": r.K, "tau_high": r.tau_high, "tau_low": r.tau_low,
                "epsilon": r.epsilon, "seconds": seconds, "detail": d,
            })
        return rows

    def _base_row(self, method: str, p: Pair) -> dict:
        return {"experiment": ROWS_OF, "model": self.model_name, "method": method, "pair": p.id,
                "pair_index": p.index, "same": int(p.same), "fold": p.fold}

    def _error_row(self, method: str, p: Pair, reason: str) -> dict:
        return {**self._base_row(method, p), "verdict": "error", "error": reason}

