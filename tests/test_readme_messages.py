"""The README and docs/method.md quote the program's own messages (issue 26: the README quoted
"cannot reach Ray" where the program prints "cannot join Ray" - it prints both, for two cases).

A quote of a message is a backticked span holding ": " (falsify's messages are "what: why; how
to fix") that is not Python code. In it, numbers, paths, file names and the placeholder words of
:data:`PLACEHOLDERS` stand for values, and ``...`` for an elided part. Each clause of the quote
(messages join clauses made in different places with ``; ``) must be printed by one string of
``src/``: a literal, or an f-string, read in order, where a placeholder of the quote may stand for
any part of the string without a letter (its fields, punctuation), and a ``{...}`` field of the
string for a plural ending (up to two characters) or for another string constant of ``src/``.
"""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "method.md"]
#: words a quote uses for a value the program fills in
PLACEHOLDERS = {"N", "K", "M", "X", "ADDRESS", "OUT", "DIR", "PATH", "FILE", "LINE", "DATA", "NAME", "ARCH",
                "CHECKPOINT", "METHOD", "EXPERIMENT", "COMMAND", "SIGTERM", "SIGHUP", "SIGINT"}
FIELD = "\x00"  # a {...} field of an f-string
ANY = "\x01"  # a placeholder of a quote


def _is_code(span: str) -> bool:
    try:
        ast.parse(span)
    except SyntaxError:
        return False
    return True


def quotes(text: str) -> list[str]:
    """The backticked spans of a Markdown text that quote a message (fenced blocks left out)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", text)]
    return [s for s in spans if ": " in s and not _is_code(s)]


def _placeholder(word: str) -> bool:
    core = word.strip("()[],;:.?!'\"")
    return "..." in word or core in PLACEHOLDERS or any(c.isdigit() for c in word) or "/" in word


def clauses(quote: str) -> list[str]:
    """The clauses of a quote (split at ``; ``), each placeholder replaced by ``ANY``."""
    out = []
    for clause in quote.split("; "):
        words = [ANY if _placeholder(w) else w for w in clause.split()]
        while words and words[0] == ANY:  # the clause may begin and end anywhere in a string anyway
            words.pop(0)
        while words and words[-1] == ANY:
            words.pop()
        text = " ".join(words)
        if any(c.isalpha() for c in text):
            out.append(text)
    return out


@lru_cache(maxsize=1)
def _source() -> tuple[list[str], frozenset[str]]:
    """Every string of ``src/`` as a template (f-string fields as ``FIELD``), and the constants."""
    templates, constants = [], set()
    for path in sorted((ROOT / "src").rglob("*.py")):
        nodes = list(ast.walk(ast.parse(path.read_text(encoding="utf-8"))))
        parts = {id(v) for n in nodes if isinstance(n, ast.JoinedStr) for v in n.values}  # of f-strings
        for node in nodes:
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts:
                templates.append(node.value)
                constants.add(node.value)
            elif isinstance(node, ast.JoinedStr):
                templates.append("".join(v.value if isinstance(v, ast.Constant) else FIELD for v in node.values))
    return templates, frozenset(c for c in constants if c.strip())


def _matches(clause: str, template: str, constants: frozenset[str]) -> bool:
    """Whether ``clause`` can be read in a rendering of ``template``, beginning and ending anywhere
    in it (see the module's docstring)."""
    n, m = len(clause), len(template)

    @lru_cache(maxsize=None)
    def go(i: int, j: int) -> bool:
        if i == n:
            return True
        if clause[i] == ANY:  # a value: what the string has there, up to its next letter
            k = j
            while True:
                if go(i + 1, k):
                    return True
                if k == m or template[k].isalpha():
                    return False
                k += 1
        if j == m:
            return False
        if template[j] == FIELD:
            if any(go(i + k, j + 1) for k in (0, 1, 2) if i + k <= n and ANY not in clause[i:i + k]):
                return True
            return any(clause.startswith(c, i) and go(i + len(c), j + 1) for c in constants)
        return template[j] == clause[i] and go(i + 1, j + 1)

    return any(go(0, j) for j in range(m))


def printed(clause: str) -> bool:
    """Whether some string of ``src/`` can print ``clause`` (see the module's docstring)."""
    templates, constants = _source()
    inside = frozenset(c for c in constants if c in clause)  # the constants a field could stand for here
    words = re.findall(r"[A-Za-z]{3,}", clause)  # a template that can print the clause holds one of them
    return any(_matches(clause, t, inside) for t in templates if not words or any(w in t for w in words))


def _all_quotes() -> list[tuple[str, str]]:
    return [(path.name, q) for path in DOCS for q in quotes(path.read_text(encoding="utf-8"))]


def test_the_docs_quote_messages():
    """The check below has something to check (a change in how quotes are found would empty it)."""
    assert len(_all_quotes()) >= 5, _all_quotes()


@pytest.mark.parametrize("where, quote", _all_quotes(), ids=lambda x: x[:40] if isinstance(x, str) else x)
def test_each_quoted_message_is_printed_by_the_code(where, quote):
    missing = [c.replace(ANY, "...") for c in clauses(quote) if not printed(c)]
    assert not missing, f"{where} quotes `{quote}`, but no string in src/ prints {missing}"


def _says(quote: str) -> bool:
    return all(printed(c) for c in clauses(quote))


def test_the_check_fails_for_a_message_the_code_does_not_print():
    """Another word, another order, a clause the code does not have: the check must be able to fail."""
    assert _says("cannot join Ray at ADDRESS (--ray-address): ...")
    assert _says("cannot reach Ray at ADDRESS (--ray-address): no answer within 5 s")
    assert not _says("cannot find Ray at ADDRESS (--ray-address): ...")
    assert not _says("cannot join Ray at ADDRESS (--ray-address): no answer within 5 s")
    assert _says("--workers 100: this machine has 2 CPUs, so 2 workers (at most one per CPU)")
    assert not _says("--workers 100: this machine has 2 CPUs, so 2 threads (at most one per CPU)")
    assert not _says("this machine has 2 CPUs, so 2 workers: --workers 100")
    text = "a `falsify run 6.1 --out DIR` and `x = f(a, b)` and `OUT: it is gone; rerun it`"
    assert quotes(text) == ["OUT: it is gone; rerun it"]
