"""Property-based tests of the pair parsers: what is written is read back, and bad input only
ever raises ``DataError`` with a one-line message that names the place to fix."""
from __future__ import annotations

import csv
import os
import re
import tempfile
from pathlib import Path

from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from falsify.data import DataError, PairSet, read_csv_pairs, read_lfw_pairs
from falsify.data.pairs import _FALSE, _TRUE

SETTINGS = settings(max_examples=100, deadline=None)
NAME = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8)


def _touch(path: Path) -> None:
    """The parsers only check that image files exist; they need not be images."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def _inside(path: Path, root: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def _check_error(exc: DataError, file_name: str, n_lines: int) -> None:
    msg = str(exc)
    event(f"DataError: {re.sub(r'^.*?pairs[.](txt|csv)(:[0-9]+)?:? ', '', msg)[:30]}")
    assert "\n" not in msg, msg
    m = re.search(rf"{re.escape(file_name)}:(\d+): ", msg)
    if m:
        assert 1 <= int(m.group(1)) <= n_lines, msg
    else:
        assert re.search(r"header|not a text pairs file|is empty|not UTF-8", msg), msg


# --- LFW pairs.txt -------------------------------------------------------------------------------

@st.composite
def lfw_files(draw):
    names = draw(st.lists(NAME, min_size=2, max_size=4, unique_by=str.lower))
    n_folds, per_fold = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    num = st.integers(1, 3)
    lines = []
    for _ in range(n_folds):
        lines += [(draw(st.sampled_from(names)), draw(num), draw(num)) for _ in range(per_fold)]
        for _ in range(per_fold):
            n1, n2 = draw(st.lists(st.sampled_from(names), min_size=2, max_size=2, unique=True))
            lines.append((n1, draw(num), n2, draw(num)))
    images = sorted((n, i) for n in names for i in (1, 2, 3))
    keep = draw(st.lists(st.booleans(), min_size=len(images), max_size=len(images)))
    present = {im for im, k in zip(images, keep) if k}
    short_header = n_folds == 1 and draw(st.booleans())
    sep = draw(st.sampled_from(["\t", " ", " \t "]))
    blanks = draw(st.lists(st.booleans(), min_size=len(lines), max_size=len(lines)))  # blank line before?
    return n_folds, per_fold, lines, present, short_header, sep, blanks


@SETTINGS
@given(lfw_files(), st.sampled_from(["\n", "\r\n"]))
def test_lfw_pairs_round_trip(spec, newline):
    n_folds, per_fold, lines, present, short_header, sep, blanks = spec
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lfw"
        for n, i in present:
            _touch(root / n / f"{n}_{i:04d}.jpg")
        root.mkdir(exist_ok=True)
        text = [str(per_fold) if short_header else f"{n_folds}{sep}{per_fold}"]
        expected, skipped, first = [], [], {}
        for k, (line, blank) in enumerate(zip(lines, blanks)):
            if blank:
                text.append("")
            text.append(sep.join(map(str, line)))
            where = f"pairs.txt:{len(text)}"
            na, ia, nb, ib = (line[0], line[1], line[0], line[2]) if len(line) == 3 else line
            pid = f"{na}/{na}_{ia:04d}.jpg|{nb}/{nb}_{ib:04d}.jpg"
            if (na, ia) not in present or (nb, ib) not in present:
                skipped.append((where, "missing"))
            elif pid in first:
                skipped.append((where, f"duplicate of {first[pid]}"))
            else:
                first[pid] = where
                expected.append((pid, len(line) == 3, k // (2 * per_fold), k))
        (root / "pairs.txt").write_bytes((newline.join(text) + newline).encode())

        ps = read_lfw_pairs(root / "pairs.txt", root)

        assert [(p.id, p.same, p.fold, p.index) for p in ps] == expected
        assert [(s.where, s.reason.split(" ")[0] if s.reason.startswith("missing") else s.reason)
                for s in ps.skipped] == skipped
        assert len(set(ps.ids())) == len(ps) and ps.n_folds == n_folds
        assert all(_inside(p.a, root) and _inside(p.b, root) for p in ps)


def _mostly(good, bad, tenths_bad: int = 2):
    """``good``, but ``bad`` in about ``tenths_bad`` of ten draws (hypothesis' one_of is uniform)."""
    return st.integers(0, 9).flatmap(lambda r: bad if r >= 10 - tenths_bad else good)


BAD = st.one_of(st.sampled_from(["0", "-1", "x", ".", "..", "../Ann", "a/b", "a\\b", "A\x00n", "\u0661",
                                  "9" * 30, "2 1", "Ann\x0cBob", "C:x", "x" * 300]), st.text(max_size=6))
NAME_TOKEN = _mostly(st.sampled_from(["Ann", "Bob", "Cid"]), BAD, 1)
NUM_TOKEN = _mostly(st.sampled_from(["1", "2", "3"]), BAD, 1)
GENUINE = st.tuples(NAME_TOKEN, NUM_TOKEN, NUM_TOKEN).map("\t".join)
IMPOSTOR = st.tuples(NAME_TOKEN, NUM_TOKEN, NAME_TOKEN, NUM_TOKEN).map("\t".join)
LINE = st.one_of(GENUINE, IMPOSTOR, st.lists(st.one_of(NAME_TOKEN, NUM_TOKEN), max_size=5).map(" ".join),
                 st.text(max_size=20))


@st.composite
def junk_pairs_files(draw):
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=60))
    n_folds, per_fold = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    header = draw(_mostly(st.sampled_from([f"{n_folds}\t{per_fold}", f"{n_folds * per_fold}"]), LINE, 1))
    layout = ([GENUINE] * per_fold + [IMPOSTOR] * per_fold) * n_folds  # as the header says
    body = [draw(_mostly(kind, LINE, 1)) for kind in layout]
    if draw(_mostly(st.just(False), st.just(True), 1)):
        body = body[:-1] if draw(st.booleans()) else body + [draw(LINE)]
    return "\n".join([header, *body]).encode("utf-8")


@SETTINGS
@given(junk_pairs_files())
def test_lfw_junk_raises_only_data_error(content):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lfw"
        for n, i in (("Ann", 1), ("Ann", 2), ("Bob", 1)):
            _touch(root / n / f"{n}_{i:04d}.jpg")
        _touch(Path(tmp) / "Ann_0001.jpg")  # what '../Ann 1 ...' would reach
        (root / "pairs.txt").write_bytes(content)
        try:
            ps = read_lfw_pairs(root / "pairs.txt", root)
        except DataError as exc:
            n_lines = content.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n").count("\n") + 1
            _check_error(exc, "pairs.txt", n_lines)
            return
        event(f"parsed, {len(ps)} pairs kept" if ps.pairs else "parsed, none kept")
        assert isinstance(ps, PairSet) and len(set(ps.ids())) == len(ps)
        assert all(_inside(p.a, root) and _inside(p.b, root) for p in ps)


# --- CSV ---------------------------------------------------------------------------------------

POOL = ["r1/P/img.jpg", "r2/P/img.jpg", "Q/ref.jpg", "Q/x.png", "gone/none.jpg"]  # the last is missing


def _spelling(draw, rel: str, base: Path) -> str:
    how = draw(st.sampled_from(["rel", "dot", "abs"]))
    return {"rel": rel, "dot": f"./{rel}", "abs": str(base / rel)}[how]


@st.composite
def csv_rows(draw):
    rows = draw(st.lists(st.tuples(st.sampled_from(POOL), st.sampled_from(POOL), st.booleans(),
                                   st.integers(-2, 3)), min_size=1, max_size=12))
    header = draw(st.booleans())
    with_fold = header and draw(st.booleans())
    columns = ["a", "b", "same"] + (["fold"] if with_fold else [])
    if header:
        columns = draw(st.permutations(columns))
    return rows, header, with_fold, columns, draw(st.integers(1, 4)), draw(st.data())


@SETTINGS
@given(csv_rows())
def test_csv_pairs_round_trip(spec):
    rows, header, with_fold, columns, n_folds, data = spec
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for rel in POOL[:-1]:
            _touch(base / rel)
        out, expected, skipped, first = [], [], [], {}
        if header:
            out.append([c.upper() if data.draw(st.booleans()) else c for c in columns])
        for k, (a, b, same, fold) in enumerate(rows):
            flag = data.draw(st.sampled_from(sorted(_TRUE if same else _FALSE)))
            flag = data.draw(st.sampled_from([flag, flag.upper(), f" {flag.title()} "]))
            cells = {"a": _spelling(data.draw, a, base), "b": _spelling(data.draw, b, base),
                     "same": flag, "fold": str(fold)}
            out.append([cells[c] for c in columns])
            where = f"pairs.csv:{len(out)}"
            pid = f"{a}|{b}"
            if "gone" in pid:
                skipped.append((where, "missing"))
            elif pid in first:
                skipped.append((where, f"duplicate of {first[pid]}"))
            else:
                first[pid] = where
                expected.append((pid, same, fold if with_fold else k % n_folds, k))
        with open(base / "pairs.csv", "w", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerows(out)

        ps = read_csv_pairs(base / "pairs.csv", n_folds=n_folds)

        remap = {f: i for i, f in enumerate(sorted({e[2] for e in expected}))}
        assert [(p.id, p.same, p.fold, p.index) for p in ps] == [(i, s, remap[f], k) for i, s, f, k in expected]
        assert [(s.where, s.reason.split(" ")[0] if s.reason.startswith("missing") else s.reason)
                for s in ps.skipped] == skipped
        assert len(set(ps.ids())) == len(ps) and ps.n_folds == max(len(remap), 1)
        assert all(p.root == base for p in ps)


JUNK = st.one_of(st.sampled_from(["", "maybe", "-1", "1e3", "~nouser_xyz/x.jpg", "~/x.jpg", "/", "\x00",
                                   "a\x00b", '"', "x" * 300, "\ufeff"]), st.text(max_size=6))
PATH = _mostly(st.sampled_from(["Q/ref.jpg", "./Q/ref.jpg", "Q/../Q/ref.jpg", "R/r.png", "none.jpg"]), JUNK, 1)
FLAG = _mostly(st.sampled_from(sorted(_TRUE | _FALSE)), JUNK, 1)
FOLD = _mostly(st.sampled_from(["0", "1", "-2", " 3 "]), JUNK, 1)
ROW = _mostly(
    st.one_of(st.tuples(PATH, PATH, FLAG), st.tuples(PATH, PATH, FLAG, FOLD)).map(",".join),
    st.one_of(st.permutations(["a", "b", "same", "fold"]).map(",".join),
              st.lists(st.one_of(PATH, FLAG), max_size=5).map(",".join), st.text(max_size=20)),
)


@st.composite
def junk_csv_files(draw):
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=60))
    return "\n".join(draw(st.lists(ROW, max_size=6))).encode("utf-8")


@SETTINGS
@given(junk_csv_files())
@example(b"Q/ref.jpg,\x00,0")  # a NUL byte in a path: os.path.realpath raises ValueError
def test_csv_junk_raises_only_data_error(content):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        _touch(base / "Q" / "ref.jpg")
        _touch(base / "R" / "r.png")
        (base / "pairs.csv").write_bytes(content)
        try:
            ps = read_csv_pairs(base / "pairs.csv")
        except DataError as exc:
            _check_error(exc, "pairs.csv", content.count(b"\n") + content.count(b"\r") + 1)
            return
        event(f"parsed, {len(ps)} pairs kept" if ps.pairs else "parsed, none kept")
        assert isinstance(ps, PairSet) and len(set(ps.ids())) == len(ps)
