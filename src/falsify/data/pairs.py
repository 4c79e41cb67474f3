"""Face pairs from an LFW-layout folder + pairs.txt, a folder of identities, or a CSV."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path, PurePath
from typing import Callable, Iterator, Sequence

from .errors import DataError  # re-exported (its home is falsify.data.errors, which sklearn_lfw imports)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _check_n_pairs(n_pairs) -> None:
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 1:
        raise DataError(f"n_pairs must be a whole number >= 1, got {n_pairs!r}")


def _image_key(path: Path, root: Path | None) -> str:
    """``path`` relative to ``root`` (posix) if it lies inside it, else its resolved absolute path."""
    if root is not None:
        for p, r in ((os.path.abspath(path), os.path.abspath(root)),
                     (os.path.realpath(path), os.path.realpath(root))):
            if PurePath(p).is_relative_to(r):
                return PurePath(p).relative_to(r).as_posix()
    return PurePath(os.path.realpath(path)).as_posix()


def link_outside(path: Path, root: Path | None) -> str | None:
    """Why ``path`` must not be read as part of the data folder ``root``, or None: it lies in
    ``root`` as written but is (or passes through) a symbolic link that resolves outside it
    (a ``photo.jpg`` pointing at ``/etc/passwd``). Paths written outside ``root`` (a CSV's
    ``../x.jpg`` or ``/abs/x.jpg``) are the file's author's explicit choice and are not refused;
    links inside ``root`` that stay inside it are fine."""
    if root is None:
        return None
    written, top = PurePath(os.path.abspath(path)), os.path.abspath(root)
    if not written.is_relative_to(top):
        return None
    real = os.path.realpath(path)
    if PurePath(real).is_relative_to(os.path.realpath(root)):
        return None
    return f"link outside the data folder ({written.relative_to(top).as_posix()} -> {real})"


def _unusable(paths: Sequence[Path], root: Path | None, show: Callable[[Path], str] = str) -> str | None:
    """Why a pair of images is skipped (a path no file system can hold, links out of the data
    folder, then missing files), or None."""
    bad = [repr(str(p)) for p in paths if "\x00" in str(p)]
    if bad:
        return "not a file name (contains a NUL byte): " + ", ".join(bad)
    links = [r for r in (link_outside(p, root) for p in paths) if r]
    if links:
        return "; ".join(links)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        return "missing " + ", ".join(show(p) for p in missing)
    return None


@dataclass(frozen=True)
class Pair:
    """Two face images, whether they show the same person, and the protocol fold."""

    a: Path
    b: Path
    same: bool
    fold: int = 0
    index: int = 0  # position in the source (pairs.txt pair number, CSV row, ...)
    root: Path | None = field(default=None, compare=False)  # folder the ids are relative to
    #: where the pair is written, for reports: ``pairs.txt:17``, ``pairs.csv:4`` ("" when generated)
    where: str = field(default="", compare=False)

    @cached_property
    def id(self) -> str:
        """A stable identifier ``a|b``: each image relative to ``root`` (posix), or its absolute
        path when outside it. For LFW: ``Name/Name_0001.jpg|Other/Other_0002.jpg``."""
        return "|".join(self.image_keys)

    @property
    def image_keys(self) -> tuple[str, str]:
        """Each image relative to ``root`` (posix), or its resolved absolute path."""
        return _image_key(self.a, self.root), _image_key(self.b, self.root)


@dataclass(frozen=True)
class SkippedPair:
    where: str  # "pairs.txt:17", "pairs.csv:4", ...
    reason: str


@dataclass
class PairSet:
    """Pairs ready to use, plus those that were skipped and why."""

    pairs: list[Pair]
    skipped: list[SkippedPair] = field(default_factory=list)
    source: str = ""
    n_folds: int = 1
    #: the number of pairs asked for when this set was sampled (``sample``), None otherwise;
    #: more than ``len(pairs)`` when the data holds fewer (see :meth:`shortfall`)
    asked: int | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs)

    def __getitem__(self, i):
        return self.pairs[i]

    @property
    def n_genuine(self) -> int:
        return sum(p.same for p in self.pairs)

    @property
    def n_impostor(self) -> int:
        return len(self.pairs) - self.n_genuine

    def ids(self) -> list[str]:
        """Every pair's ``id``, in order (unique within a loaded PairSet)."""
        return [p.id for p in self.pairs]

    def image_paths(self) -> list[Path]:
        """Every distinct image the pairs use, in first-use order."""
        return list(dict.fromkeys(p for pair in self.pairs for p in (pair.a, pair.b)))

    def drop_images(self, bad: dict[Path, str]) -> "PairSet":
        """A copy without the pairs that use any of ``bad`` (path -> reason), reported as skipped."""
        keep, skipped = [], list(self.skipped)
        for pair in self.pairs:
            reason = bad.get(pair.a) or bad.get(pair.b)
            if reason:
                skipped.append(SkippedPair(pair.where or f"pair {pair.index}", reason))
            else:
                keep.append(pair)
        return PairSet(keep, skipped, self.source, self.n_folds)

    def sample(self, n: int, seed: int = 0) -> "PairSet":
        """A seeded sample of ``n`` pairs, half genuine and half impostor (as far as possible)."""
        _check_n_pairs(n)
        if n >= len(self.pairs):  # every pair: asking for more than there are is not an error (shortfall)
            return PairSet(list(self.pairs), list(self.skipped), self.source, self.n_folds, asked=n)
        rng = random.Random(seed)
        gen = [i for i, p in enumerate(self.pairs) if p.same]
        imp = [i for i, p in enumerate(self.pairs) if not p.same]
        n_gen = min(len(gen), (n + 1) // 2)
        n_imp = min(len(imp), n - n_gen)
        n_gen = min(len(gen), n - n_imp)
        keep = sorted(rng.sample(gen, n_gen) + rng.sample(imp, n_imp))
        return PairSet([self.pairs[i] for i in keep], list(self.skipped), self.source, self.n_folds, asked=n)

    def shortfall(self, what: str = "pairs", why: str = "") -> str | None:
        """One line when the sample was asked for more pairs than the data holds: the number
        asked, the number available and the number used (all of them), else None. Every command
        that takes ``--n-pairs`` goes on with what there is and says so with this line. ``what``
        names the pairs counted, ``why`` (in parentheses) why only those."""
        if self.asked is None or self.asked <= len(self.pairs):
            return None
        n = len(self.pairs)
        return (f"--n-pairs {self.asked} asks for more {what} than there are: {n} available in {self.source}"
                f"{f' ({why})' if why else ''}, so all {n} are used")

    def data_record(self, examples: int = 0) -> dict:
        """The ``data`` block of a run's summary: source, pair counts, how many pairs were skipped
        and, when ``examples`` > 0, why the first ``examples`` of them were (``skipped_examples``)."""
        out = {"source": self.source, "n_pairs": len(self.pairs), "n_genuine": self.n_genuine,
               "n_impostor": self.n_impostor, "n_skipped": len(self.skipped)}
        if examples:
            out["skipped_examples"] = [f"{s.where}: {s.reason}" for s in self.skipped[:examples]]
        return out

    def summary(self, examples: int = 3) -> str:
        """One or two lines for people: how many pairs, and what was skipped with examples."""
        text = (
            f"{len(self.pairs)} pairs ({self.n_genuine} genuine, {self.n_impostor} impostor) "
            f"from {self.source}"
        )
        if self.skipped:
            shown = "; ".join(f"{s.where}: {s.reason}" for s in self.skipped[:examples])
            more = f" (+{len(self.skipped) - examples} more)" if len(self.skipped) > examples else ""
            text += f"\nskipped {len(self.skipped)} pairs: {shown}{more}"
        return text

    def fingerprint(self) -> dict:
        """A content fingerprint of the data, to check a resumed run uses the same pairs and images.

        Equal for the same data however its folder is spelled or wherever it is copied (ids are
        relative to the data folder); changes when a pair, label, fold or image byte changes.
        Images are hashed, not decoded.
        """
        structure = hashlib.sha256()
        for p in self.pairs:
            structure.update(json.dumps([p.id, bool(p.same), int(p.fold)]).encode() + b"\n")
        images: dict[str, Path] = {}  # one entry per image, however its path is spelled
        for p in self.pairs:
            for key, path in zip(p.image_keys, (p.a, p.b)):
                images.setdefault(key, path)
        hashes = {key: _file_sha256(path) for key, path in images.items()}
        h = structure.copy()
        for digest in hashes.values():
            h.update(digest.encode() + b"\n")
        return {
            "sha256": h.hexdigest(),
            "pairs_sha256": structure.hexdigest(),
            "n_pairs": len(self.pairs),
            "n_images": len(images),
            "images": hashes,
            "basis": "sha256 over each pair's id, label and fold (pairs_sha256), and the sha256 of every "
                     "image's bytes (images)",
        }


def _file_sha256(path: Path) -> str:
    """The sha256 of an image's bytes, hashed once per process (6.4 fingerprints the data once per model)."""
    from ..fingerprints import file_fingerprint

    try:
        return file_fingerprint(path)
    except OSError as exc:
        raise DataError(f"cannot fingerprint {path}: {exc.strerror or exc}; was it moved or deleted?") from None


def _keep(pair: Pair, where: str, pairs: list[Pair], skipped: list[SkippedPair], seen: dict[str, str]) -> None:
    """Append ``pair`` unless an earlier pair (id -> where, in ``seen``) had its id: then report it."""
    if pair.id in seen:
        skipped.append(SkippedPair(where, f"duplicate of {seen[pair.id]}"))
    else:
        seen[pair.id] = where
        pairs.append(pair)


# --- LFW layout --------------------------------------------------------------------------------

def lfw_image_path(root: Path, name: str, number: int) -> Path:
    """``root/<Name>/<Name>_NNNN.jpg``, or the same stem with another image suffix if that exists."""
    stem = root / name / f"{name}_{number:04d}"
    for suffix in IMAGE_SUFFIXES:
        if os.path.exists(stem.with_suffix(suffix)):
            return stem.with_suffix(suffix)
    return stem.with_suffix(".jpg")


def _folder_name(token: str, where: str, root: Path) -> str:
    if token in (".", "..") or any(c in token for c in "/\\\0") or PurePath(token).parts != (token,):
        raise DataError(
            f"{where}: name {token!r} is not a folder name (contains '/', '\\', NUL or is '.' or '..'); "
            f"LFW names are <Name> folders inside {root}"
        )
    return token


def _int(token: str, where: str, what: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise DataError(f"{where}: {what} must be a whole number, got {token!r}") from None
    if value < 1:
        raise DataError(f"{where}: {what} must be >= 1, got {value}")
    return value


def read_lfw_pairs(pairs_file: str | Path, root: str | Path) -> PairSet:
    """Parse an LFW ``pairs.txt`` (header ``folds n`` or ``n``; ``Name i j`` / ``Name1 i Name2 j``).

    Folds are read from position: fold f holds lines f*2n+1 .. (f+1)*2n, the first n genuine
    and the next n impostor, as in the official file. Pairs whose images are missing, or are
    links leading out of ``root`` (``link_outside``), are skipped (reported with their line
    numbers), as are repeats of an earlier pair; a malformed line, or a name that is not a plain
    folder name (``../x``, ``a/b``), raises ``DataError`` naming it. Pair ids are relative to
    ``root``: ``Name/Name_0001.jpg|Other/Other_0002.jpg``.
    """
    pairs_file, root = Path(pairs_file), Path(root)
    if not pairs_file.is_file():
        raise DataError(f"pairs file not found: {pairs_file}")
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    try:
        lines = pairs_file.read_text(encoding="utf-8").split("\n")  # line numbers as editors count
    except UnicodeDecodeError:
        raise DataError(f"{pairs_file} is not a text pairs file (LFW pairs.txt format)") from None
    where0 = f"{pairs_file.name}:1"
    if not lines or not lines[0].strip():
        raise DataError(f"{where0}: empty pairs file; expected a header line 'folds pairs' or 'pairs'")
    header = lines[0].split()
    if len(header) == 2:
        n_folds, per_fold = (_int(t, where0, w) for t, w in zip(header, ("folds", "pairs per fold")))
    elif len(header) == 1:
        n_folds, per_fold = 1, _int(header[0], where0, "pairs")
    else:
        raise DataError(
            f"{where0}: header must be 'folds pairs' (e.g. '10 300') or 'pairs', got {lines[0]!r}; "
            "is this an LFW pairs.txt? For a list of pairs use a CSV with columns a,b,same"
        )
    body = [(i + 2, line) for i, line in enumerate(lines[1:]) if line.strip()]
    expected = n_folds * 2 * per_fold
    if len(body) != expected:
        raise DataError(
            f"{pairs_file}: header says {n_folds} folds x {2 * per_fold} pairs = {expected} lines, "
            f"but the file has {len(body)}; is the file complete?"
        )
    pairs, skipped, seen = [], [], {}
    for k, (lineno, line) in enumerate(body):
        where = f"{pairs_file.name}:{lineno}"
        tok = line.split()
        fold, same_expected = divmod(k, 2 * per_fold)[0], (k % (2 * per_fold)) < per_fold
        if len(tok) == 3:
            name = _folder_name(tok[0], where, root)
            a = lfw_image_path(root, name, _int(tok[1], where, "image number"))
            b = lfw_image_path(root, name, _int(tok[2], where, "image number"))
            same = True
        elif len(tok) == 4:
            a = lfw_image_path(root, _folder_name(tok[0], where, root), _int(tok[1], where, "image number"))
            b = lfw_image_path(root, _folder_name(tok[2], where, root), _int(tok[3], where, "image number"))
            same = False
        else:
            raise DataError(
                f"{where}: expected 'Name i j' (genuine) or 'Name1 i Name2 j' (impostor), got {line!r}"
            )
        if same != same_expected:
            raise DataError(
                f"{where}: a {'genuine' if same else 'impostor'} pair where the LFW layout puts "
                f"{'genuine' if same_expected else 'impostor'} pairs (each fold: {per_fold} genuine, "
                f"then {per_fold} impostor)"
            )
        reason = _unusable((a, b), root, show=lambda p: _rel(p, root))
        if reason:
            skipped.append(SkippedPair(where, reason))
            continue
        _keep(Pair(a, b, same, fold, k, root, where), where, pairs, skipped, seen)
    return PairSet(pairs, skipped, f"{pairs_file} (images in {root})", n_folds)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# --- folders of identities -----------------------------------------------------------------------

def identity_folder_pairs(
    root: str | Path, n_pairs: int | None = None, seed: int = 0, n_folds: int = 10
) -> PairSet:
    """Balanced, seeded genuine/impostor pairs from ``root/<identity>/<images>``.

    Genuine pairs draw two distinct images of one identity (identities with >= 2 images);
    impostor pairs draw one image of each of two identities. ``n_pairs`` defaults to twice the
    number of genuine pairs available (capped at 6000, LFW's size); otherwise it must be a
    whole number >= 1. Pairs are dealt into ``n_folds`` folds. A pair using an image (or an
    identity folder) that is a link leading out of ``root`` is skipped and reported
    (``link_outside``).
    """
    if n_pairs is not None:
        _check_n_pairs(n_pairs)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    ids = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        imgs = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if imgs:
            ids[d.name] = imgs
    if len(ids) < 2:
        raise DataError(
            f"{root} needs at least two identity folders with images (<root>/<Name>/<image>); "
            f"found {len(ids)}. For a list of pairs pass a CSV (a,b,same) or a pairs.txt"
        )
    rng = random.Random(seed)
    multi = [n for n, imgs in ids.items() if len(imgs) >= 2]
    if not multi:
        raise DataError(f"{root}: no identity has two images, so no genuine pair can be made")
    all_gen = [(n, i, j) for n in multi for i in range(len(ids[n])) for j in range(i + 1, len(ids[n]))]
    n_gen = min(len(all_gen), (n_pairs + 1) // 2 if n_pairs else 3000)
    gen = rng.sample(all_gen, n_gen)
    n_imp = (n_pairs - n_gen) if n_pairs else n_gen
    names = sorted(ids)
    imp: dict[tuple, None] = {}  # ordered set: seeded order, no repeats
    for _ in range(50 * max(n_imp, 1)):
        if len(imp) >= n_imp:
            break
        n1, n2 = rng.sample(names, 2)
        imp[(n1, rng.randrange(len(ids[n1])), n2, rng.randrange(len(ids[n2])))] = None
    items = [Pair(ids[n][i], ids[n][j], True, root=root) for n, i, j in gen]
    items += [Pair(ids[n1][i], ids[n2][j], False, root=root) for n1, i, n2, j in imp]
    rng.shuffle(items)
    pairs, skipped, seen = [], [], {}
    for k, p in enumerate(items):
        reason = _unusable((p.a, p.b), root)
        if reason:
            skipped.append(SkippedPair(f"pair {k}", reason))
            continue
        _keep(replace(p, fold=k % n_folds, index=k), f"pair {k}", pairs, skipped, seen)
    return PairSet(pairs, skipped, f"{root} (identity folders, seed {seed})", min(n_folds, len(pairs)))


# --- CSV ---------------------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "same", "genuine", "y", "t"}
_FALSE = {"0", "false", "no", "different", "impostor", "n", "f"}


_SEPARATORS = {";": "semicolon (;)", "\t": "tab", "|": "bar (|)"}


def _separator_hint(csv_file: Path) -> str:
    """``"; ...: re-save it with commas"`` when ``csv.Sniffer`` finds another separator than the
    comma in the file's first 64 KiB, else ``""``: appended to a row's column error."""
    try:
        with csv_file.open(newline="", encoding="utf-8-sig") as fh:
            sample = fh.read(1 << 16)
        sep = csv.Sniffer().sniff(sample, delimiters="," + "".join(_SEPARATORS)).delimiter
    except (OSError, UnicodeDecodeError, csv.Error):
        return ""
    if sep not in _SEPARATORS:
        return ""
    return (f"; the file looks {_SEPARATORS[sep]}-separated, and falsify reads comma-separated rows: re-save it "
            f"with commas (e.g. pandas.read_csv(f, sep={sep!r}).to_csv(f, index=False))")


def read_csv_pairs(csv_file: str | Path, root: str | Path | None = None, n_folds: int = 10) -> PairSet:
    """Pairs from a CSV with columns ``a,b,same`` (optional ``fold``); a header row is optional.

    Cells are image paths, relative to ``root`` (default: the CSV's folder) or absolute, and may
    point anywhere (``../other/x.jpg`` included); a path written inside ``root`` that is a link
    leading out of it is skipped and reported (``link_outside``), as is a row whose image is
    missing, or a repeat of an earlier row's pair, each as ``file:line``. Pair ids are those
    paths relative to ``root``, or absolute for images outside it. Without a fold column, pairs
    are dealt into ``n_folds`` folds by row order. Cells are comma-separated; a file with another
    separator is refused with a hint naming it.
    """
    csv_file = Path(csv_file)
    if not csv_file.is_file():
        raise DataError(f"pairs CSV not found: {csv_file}")
    base = Path(root) if root is not None else csv_file.parent
    rows = []
    with csv_file.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            for r in reader:
                if any(c.strip() for c in r):
                    rows.append((reader.line_num, r))
        except csv.Error as exc:
            raise DataError(f"{csv_file.name}:{reader.line_num}: not a valid CSV row ({exc})") from None
        except UnicodeDecodeError:
            raise DataError(f"{csv_file} is not UTF-8 text; save the pairs CSV as UTF-8") from None
    if not rows:
        raise DataError(f"{csv_file} is empty; expected rows 'a,b,same'")
    cols = {"a": 0, "b": 1, "same": 2, "fold": None}
    first = [c.strip().lower() for c in rows[0][1]]
    if "a" in first and "b" in first and "same" in first:
        cols = {k: (first.index(k) if k in first else None) for k in cols}
        rows = rows[1:]
    pairs, skipped, seen = [], [], {}
    for k, (lineno, row) in enumerate(rows):
        where = f"{csv_file.name}:{lineno}"
        need = max(c for c in cols.values() if c is not None)
        if len(row) <= need:
            raise DataError(f"{where}: expected columns a,b,same, got {row!r}{_separator_hint(csv_file)}")
        flag = row[cols["same"]].strip().lower()
        if flag not in _TRUE | _FALSE:
            raise DataError(f"{where}: 'same' must be 1/0 or true/false, got {row[cols['same']]!r}")
        fold = k % n_folds
        if cols["fold"] is not None:
            try:
                fold = int(row[cols["fold"]])
            except ValueError:
                raise DataError(f"{where}: fold must be a whole number, got {row[cols['fold']]!r}") from None
        a, b = (Path(os.path.expanduser(row[cols[c]].strip())) for c in ("a", "b"))
        a, b = (p if p.is_absolute() else base / p for p in (a, b))
        reason = _unusable((a, b), base)
        if reason:
            skipped.append(SkippedPair(where, reason))
            continue
        _keep(Pair(a, b, flag in _TRUE, fold, k, base, where), where, pairs, skipped, seen)
    folds = sorted({p.fold for p in pairs})
    remap = {f: i for i, f in enumerate(folds)}
    pairs = [replace(p, fold=remap[p.fold]) for p in pairs]
    return PairSet(pairs, skipped, str(csv_file), max(len(folds), 1))


# --- one entry point -----------------------------------------------------------------------------

def load_pairs(
    data: str | Path | None = None,
    pairs: str | Path | None = None,
    *,
    n_pairs: int | None = None,
    seed: int = 0,
) -> PairSet:
    """Load face pairs from whatever the user points at.

    - ``data`` a folder and ``pairs`` a ``pairs.txt`` (or ``data/pairs.txt`` exists): LFW protocol;
    - ``pairs`` a ``.csv``: CSV pairs, paths relative to ``data`` (or the CSV's folder);
    - ``data`` a folder of identities without pairs.txt: balanced seeded pairs;
    - ``data`` a ``.csv`` file: CSV pairs;
    - nothing: LFW through scikit-learn's downloader/cache (``SCIKIT_LEARN_DATA`` honoured).

    ``n_pairs`` (a whole number >= 1) keeps a seeded balanced sample of that many pairs.
    """
    if n_pairs is not None:
        _check_n_pairs(n_pairs)
    if data is None and pairs is None:
        from .sklearn_lfw import sklearn_lfw_paths

        root, pairs_file = sklearn_lfw_paths()
        result = read_lfw_pairs(pairs_file, root)
    else:
        data_path = Path(data).expanduser() if data is not None else None
        pairs_path = Path(pairs).expanduser() if pairs is not None else None
        if data_path is not None and not data_path.exists():
            raise DataError(f"--data {data_path} does not exist; pass a folder of face images or a CSV")
        if pairs_path is not None and not pairs_path.exists():
            raise DataError(f"--pairs {pairs_path} does not exist")
        if data_path is not None and data_path.is_file():
            if data_path.suffix.lower() != ".csv":
                raise DataError(f"--data {data_path} is a file; pass a folder of face images or a .csv of pairs")
            result = read_csv_pairs(data_path)
        elif pairs_path is not None and pairs_path.suffix.lower() == ".csv":
            result = read_csv_pairs(pairs_path, root=data_path)
        elif pairs_path is not None:
            result = read_lfw_pairs(pairs_path, data_path or pairs_path.parent)
        elif (data_path / "pairs.txt").is_file():  # type: ignore[operator]
            result = read_lfw_pairs(data_path / "pairs.txt", data_path)  # type: ignore[operator]
        else:  # already sampled to n_pairs
            result = identity_folder_pairs(data_path, n_pairs=n_pairs, seed=seed)  # type: ignore[arg-type]
            result.asked, n_pairs = n_pairs, None
    if not result.pairs:
        raise DataError(
            f"no usable pairs in {result.source}: {len(result.skipped)} skipped"
            + (f" (e.g. {result.skipped[0].where}: {result.skipped[0].reason})" if result.skipped else "")
        )
    return result.sample(n_pairs, seed) if n_pairs is not None else result


__all__: Sequence[str] = [
    "DataError",
    "Pair",
    "PairSet",
    "SkippedPair",
    "identity_folder_pairs",
    "lfw_image_path",
    "link_outside",
    "load_pairs",
    "read_csv_pairs",
    "read_lfw_pairs",
]
