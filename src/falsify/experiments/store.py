"""The results store: one SQLite file per run directory, safe to kill at any moment.

``results`` holds one row per (experiment, model, method, pair), written and committed as
soon as it is computed. The UNIQUE key makes a resumed run skip what is there and makes a
duplicate impossible; WAL journaling means a process killed mid-write (SIGKILL included)
leaves the last committed state intact.
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Sequence

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    started     TEXT NOT NULL,
    experiment  TEXT NOT NULL,
    config      TEXT NOT NULL,   -- JSON: the settings that decide the results
    environment TEXT NOT NULL    -- JSON: versions, seed, machine
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL          -- JSON
);
CREATE TABLE IF NOT EXISTS results (
    experiment  TEXT NOT NULL,
    model       TEXT NOT NULL,
    method      TEXT NOT NULL,
    pair        TEXT NOT NULL,   -- Pair.id: 'Name/Name_0001.jpg|Other/Other_0002.jpg'
    pair_index  INTEGER NOT NULL,
    same        INTEGER NOT NULL,
    fold        INTEGER NOT NULL,
    cosine      REAL,
    angle       REAL,
    verdict     TEXT NOT NULL,   -- passed | falsified | untestable | error
    failed      TEXT,            -- JSON list of the conditions that failed (or the reason)
    d_high      REAL,
    d_low       REAL,
    sd_high     REAL,
    sd_low      REAL,
    margin      REAL,
    d_prime     REAL,
    n_high      INTEGER,
    n_low       INTEGER,
    k           INTEGER,
    tau_high    REAL,
    tau_low     REAL,
    epsilon     REAL,
    seconds     REAL,            -- attribution + test time for this pair's share of its batch
    error       TEXT,
    detail      TEXT,            -- JSON: the full FalsificationResult
    created     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (experiment, model, method, pair)
);
"""

COLUMNS = (
    "experiment", "model", "method", "pair", "pair_index", "same", "fold", "cosine", "angle",
    "verdict", "failed", "d_high", "d_low", "sd_high", "sd_low", "margin", "d_prime", "n_high",
    "n_low", "k", "tau_high", "tau_low", "epsilon", "seconds", "error", "detail",
)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


TABLES = ("runs", "meta", "results")


def inspect_store(path: str | Path) -> dict | None:
    """Read a store without changing it: ``{"meta": {...}, "runs": [...],
    "pairs_with_results": {pair ids with a row that is not an error}}``, or
    ``None`` when there is no file (or an empty one). Raises ``ValueError`` naming the file when
    it is not a falsify results store (not SQLite, or SQLite with other tables)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        if path.exists() and not path.is_file():
            raise ValueError(f"{path} is not a file; choose another --out")
        return None
    # Only reads: a plain connection on a writable folder leaves it byte-for-byte as it was (SQLite
    # removes the WAL files it made when the last connection closes); a read-only folder cannot
    # hold WAL files, so its store is read as an immutable snapshot.
    writable = os.access(path.parent, os.W_OK) and os.access(path, os.W_OK)
    uri = path.resolve().as_uri() + ("" if writable else "?immutable=1")
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise ValueError(f"cannot open {path}: {exc}") from None
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not set(TABLES) <= tables:
            what = f"an SQLite file with tables {', '.join(sorted(tables))}" if tables else "an empty SQLite file"
            raise ValueError(f"{path} is not a falsify results store ({what}); choose another --out")
        meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        runs = [json.loads(c) for (c,) in conn.execute("SELECT config FROM runs ORDER BY id")]
        ok = {p for (p,) in conn.execute("SELECT DISTINCT pair FROM results WHERE verdict != 'error'")}
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{path} is not a falsify results store ({exc}); choose another --out") from None
    finally:
        conn.close()
    return {"meta": meta, "runs": runs, "pairs_with_results": ok}


def count_rows(path: str | Path) -> int:
    """The rows in the store at ``path`` (0 without one), read without changing it."""
    path = Path(path)
    if inspect_store(path) is None:  # also refuses a file that is not a store, naming it
        return 0
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT count(*) FROM results").fetchone()[0]
    finally:
        conn.close()


@dataclass
class ResultsStore:
    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        inspect_store(self.path)  # a foreign file is refused before anything is written to it
        folder = self.path.parent
        if (folder.exists() and not os.access(folder, os.W_OK)) or (self.path.exists() and not os.access(self.path, os.W_OK)):
            raise ValueError(f"{self.path} is read-only; copy the run folder somewhere writable (falsify report "
                             "rewrites a report without writing to the store)")
        folder.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(SCHEMA)
            self.conn.commit()
        except sqlite3.OperationalError as exc:
            if "readonly" in str(exc) or "read-only" in str(exc):
                raise ValueError(f"{self.path} is read-only ({exc}); copy the run folder somewhere writable") from None
            raise ValueError(f"cannot open the results store {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise ValueError(
                f"{self.path} is not a falsify results store ({exc}); choose another --out"
            ) from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- meta and runs ----------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value, default=str)),
            )

    def add_run(self, started: str, experiment: str, config: dict, environment: dict) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT INTO runs(started, experiment, config, environment) VALUES(?, ?, ?, ?)",
                (started, experiment, json.dumps(config, default=str), json.dumps(environment, default=str)),
            )

    def runs(self) -> list[dict]:
        cur = self.conn.execute("SELECT started, experiment, config, environment FROM runs ORDER BY id")
        return [
            {"started": s, "experiment": e, "config": json.loads(c), "environment": json.loads(env)}
            for s, e, c, env in cur
        ]

    # -- results ----------------------------------------------------------------------------
    def done(self, experiment: str, model: str) -> set[tuple[str, str]]:
        """{(method, pair)} already stored (errors included: they are not retried silently)."""
        cur = self.conn.execute(
            "SELECT method, pair FROM results WHERE experiment = ? AND model = ?", (experiment, model)
        )
        return {(m, p) for m, p in cur}

    def add_rows(self, rows: Iterable[dict]) -> int:
        """Insert rows (dicts with COLUMNS keys) in one transaction; existing keys are kept."""
        values = []
        for row in rows:
            r = dict(row)
            for key in ("failed", "detail"):
                if r.get(key) is not None and not isinstance(r[key], str):
                    r[key] = json.dumps(r[key], default=_json_default)
            values.append(tuple(_clean(r.get(c)) for c in COLUMNS))
        with self.conn:
            cur = self.conn.executemany(
                f"INSERT OR IGNORE INTO results({', '.join(COLUMNS)}) VALUES({', '.join('?' * len(COLUMNS))})",
                values,
            )
        return cur.rowcount

    def rows(self, experiment: str, model: str, methods: Sequence[str] | None = None,
             pairs: Collection[str] | None = None) -> list[dict]:
        """The rows of ``experiment`` on ``model`` (of ``methods`` when given; of the pair ids in
        ``pairs`` when given: a run's own pairs, as a store may hold rows of others), ordered by
        method, pair index and pair."""
        sql = f"SELECT {', '.join(COLUMNS)} FROM results WHERE experiment = ? AND model = ?"
        args: list[Any] = [experiment, model]
        if methods:
            sql += f" AND method IN ({', '.join('?' * len(methods))})"
            args += list(methods)
        sql += " ORDER BY method, pair_index, pair"
        out = []
        for values in self.conn.execute(sql, args):
            row = dict(zip(COLUMNS, values))
            row["failed"] = json.loads(row["failed"]) if row["failed"] else []
            row["same"] = bool(row["same"])
            out.append(row)
        return out if pairs is None else [r for r in out if r["pair"] in pairs]

    def delete_errors(self, experiment: str, model: str) -> int:
        """Remove error rows so that a run computes them again (``falsify run --retry-errors``)."""
        with self.conn:
            cur = self.conn.execute(
                "DELETE FROM results WHERE experiment = ? AND model = ? AND verdict = 'error'", (experiment, model)
            )
        return cur.rowcount


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)
