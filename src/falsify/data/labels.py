"""Demographic labels of LFW images, for analyses by group (experiment 6.6, ``--labels DIR``).

A labels folder holds (as published; see the shared data README):

- ``male_names.txt`` and ``female_names.txt``: one LFW image file name a line
  (``Alfred_Ford_0001.jpg``), gender per *image* (Afifi & Abdelhamed 2017). An image named in
  both lists is unlabelled (a conflict).
- ``race_by_person.json`` (optional): ``{"Person_Name": "label"}``, race per *person*
  (usc-sail/mica-race-from-face). A label of several comma-separated races is the group
  ``mixed``.

A pair's group is the group of its probe image A (the image the maps explain and the test
alters): :meth:`Labels.gender_of` and :meth:`Labels.race_of`. Pairs whose A is unlabelled are
left out of the analysis by that attribute, and counted.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Iterable, Sequence

from .pairs import DataError, Pair, PairSet

GENDER_FILES = {"female": "female_names.txt", "male": "male_names.txt"}
RACE_FILE = "race_by_person.json"
GENDERS = ("female", "male")
MIXED = "mixed"
_PERSON = re.compile(r"^(?P<person>.+)_\d+\.[A-Za-z]+$")


def check_folder(path: str | Path) -> Path:
    """``path`` as a labels folder, or ``DataError`` naming what to pass (nothing is read)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DataError(f"--labels {path} is not a folder; pass the folder holding male_names.txt and "
                        "female_names.txt (e.g. ../shared/data/lfw-labels)")
    missing = [name for name in GENDER_FILES.values() if not (p / name).is_file()]
    if missing:
        raise DataError(f"--labels {path} has no {' or '.join(missing)}; pass the folder holding male_names.txt "
                        "and female_names.txt (e.g. ../shared/data/lfw-labels)")
    return p


def person_of(image: str | Path) -> str | None:
    """The LFW person of an image file name (``Alfred_Ford_0001.jpg`` -> ``Alfred_Ford``)."""
    m = _PERSON.match(PurePath(image).name)
    return m.group("person") if m else None


@dataclass
class Labels:
    """Gender per image file name, race per person; ``conflicts``: images in both gender lists."""

    gender: dict[str, str]
    race: dict[str, str] = field(default_factory=dict)
    conflicts: frozenset[str] = frozenset()
    source: str = ""
    has_race: bool = False

    def gender_of(self, pair: Pair) -> str | None:
        """The gender of the pair's probe image A (None: unlabelled or in both lists)."""
        return self.gender.get(PurePath(pair.a).name)

    def race_of(self, pair: Pair) -> str | None:
        """The race label of the person of the pair's probe image A (``mixed`` for a list of several)."""
        person = person_of(pair.a)
        return None if person is None else self.race.get(person)

    def group_of(self, attribute: str, pair: Pair) -> str | None:
        if attribute == "gender":
            return self.gender_of(pair)
        if attribute == "race":
            return self.race_of(pair)
        raise ValueError(f"unknown attribute {attribute!r}; use gender or race")

    def coverage(self, pairs: Iterable[Pair]) -> dict:
        """How many of ``pairs`` have a labelled probe image, by attribute and group."""
        pairs = list(pairs)
        out: dict = {"pairs": len(pairs)}
        for attribute in ("gender", "race"):
            groups: dict[str, int] = {}
            for p in pairs:
                g = self.group_of(attribute, p)
                if g is not None:
                    groups[g] = groups.get(g, 0) + 1
            out[attribute] = {"labelled": sum(groups.values()), "groups": dict(sorted(groups.items()))}
        return out


def _names(path: Path) -> set[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a UTF-8 text file of image names, one a line") from None
    return {line.strip() for line in text.splitlines() if line.strip()}


def load_labels(path: str | Path) -> Labels:
    """Read a labels folder (:func:`check_folder`); one-line ``DataError`` on a bad file."""
    folder = check_folder(path)
    lists = {g: _names(folder / name) for g, name in GENDER_FILES.items()}
    conflicts = frozenset(lists["female"] & lists["male"])
    gender = {name: g for g, names in lists.items() for name in names if name not in conflicts}
    race: dict[str, str] = {}
    race_file = folder / RACE_FILE
    if race_file.is_file():
        try:
            raw = json.loads(race_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{race_file} is not valid JSON ({exc}); it should map person names to race labels") from None
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise DataError(f"{race_file} should be a JSON object of person name -> race label")
        for person, label in raw.items():
            parts = [x.strip() for x in label.split(",") if x.strip()]
            if parts:
                race[person] = parts[0] if len(parts) == 1 else MIXED
    return Labels(gender, race, conflicts, str(folder), race_file.is_file())


def stratified_sample(pairs: PairSet, labels: Labels, n: int, seed: int = 0) -> PairSet:
    """``n`` pairs balanced by the gender of the probe image A: half with a female A and half with
    a male A (the first half rounded down), each half a seeded sample balanced genuine/impostor
    (``PairSet.sample``). Pairs whose A has no gender label are not sampled. When a group has fewer
    pairs than its half, all of them are taken and the other group fills the rest."""
    by = {g: [p for p in pairs if labels.gender_of(p) == g] for g in GENDERS}
    if not any(by.values()):
        raise DataError(f"no pair of {pairs.source} has a probe image with a gender label in {labels.source}; "
                        "check --labels, or drop --stratify")
    want = {"female": n // 2, "male": n - n // 2}
    take = {g: min(len(by[g]), want[g]) for g in GENDERS}
    for g, other in (("female", "male"), ("male", "female")):
        take[g] = min(len(by[g]), take[g] + max(0, want[other] - len(by[other])))
    keep: list[Pair] = []
    for g in GENDERS:
        if take[g]:
            keep += PairSet(by[g], [], pairs.source, pairs.n_folds).sample(take[g], seed).pairs
    order = {p.id: i for i, p in enumerate(pairs)}
    keep.sort(key=lambda p: order[p.id])
    return PairSet(keep, list(pairs.skipped), pairs.source + " (balanced by the gender of image A)", pairs.n_folds,
                   asked=n)  # fewer than n when fewer pairs have a labelled image A (PairSet.shortfall)


__all__: Sequence[str] = ["Labels", "check_folder", "load_labels", "person_of", "stratified_sample"]
