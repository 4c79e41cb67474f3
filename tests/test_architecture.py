"""Rules of the package's shape, read from the source with ``ast`` (issue 20).

- No module imports a ``_private`` name (or a ``_private`` module) from another package, nor reads
  one as an attribute of a module it imported from there (``core._embed``). A package is a
  directory under src/falsify; modules of the same package may share their private names.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "falsify"

#: (importing module, imported module, name) still allowed, to be removed when their owner fixes them.
#: Empty: keep it so; a new entry needs a reason here.
KNOWN_EXCEPTIONS: set[tuple[str, str, str]] = set()


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        if is_init:
            parts = parts[:-1]
        package = parts if is_init else parts[:-1]
        yield path, ".".join(parts), package


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports() -> list[tuple[str, str, str, int]]:
    """(importing module, imported module, private name, line) for every import of a private name
    or from a private module of another package."""
    out = []
    for path, module, package in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        modules_bound: dict[str, list[str]] = {}  # local name -> the falsify module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [(a.name.split("."), None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    target = base + (node.module.split(".") if node.module else [])
                else:
                    target = (node.module or "").split(".")
                targets = [(target, a.name) for a in node.names]
            else:
                continue
            for target, name in targets:
                if not target or target[0] != "falsify":
                    continue
                if isinstance(node, ast.ImportFrom) and _is_module(target + [name]):
                    modules_bound[node.names[[a.name for a in node.names].index(name)].asname or name] = target + [name]
                elif isinstance(node, ast.Import):
                    alias = next(a for a in node.names if a.name.split(".") == target)
                    if alias.asname:
                        modules_bound[alias.asname] = target
                # the package that owns the imported thing: the target module's package, or the
                # target itself when it is a package (a directory)
                is_package = (SRC.joinpath(*target) / "__init__.py").is_file()
                owner = target if is_package else target[:-1]
                if owner == package:
                    continue
                private_parts = [p for p in target[len(owner):] if _private(p)]  # a private module
                if name is not None and _private(name):
                    private_parts.append(name)
                for p in private_parts:
                    out.append((module, ".".join(target), p, node.lineno))
        # module._name, where module was imported from another package (``from .. import core``)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr)
                    and node.value.id in modules_bound):
                target = modules_bound[node.value.id]
                owner = target if (SRC.joinpath(*target) / "__init__.py").is_file() else target[:-1]
                if owner != package:
                    out.append((module, ".".join(target), node.attr, node.lineno))
    return out


def _is_module(parts: list[str]) -> bool:
    path = SRC.joinpath(*parts)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_the_check_finds_private_imports(tmp_path, monkeypatch):
    """The checker itself: a private name imported across packages is found, one within a package is not."""
    pkg = tmp_path / "falsify"
    for d in ("a", "b"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "_shim.py").write_text("x = 1\n")
    (pkg / "a" / "one.py").write_text("_hidden = 1\n")
    (pkg / "a" / "two.py").write_text("from .one import _hidden\n")  # same package: fine
    (pkg / "b" / "three.py").write_text("from ..a.one import _hidden, shown\nfrom .. import _shim\n"
                                        "from .._shim import x\nimport falsify.a.one\n"
                                        "from ..a import one\none._hidden\nimport falsify.a.one as o\no._hidden\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "SRC", tmp_path)
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "PACKAGE", pkg)
    found = {(m, t, n) for m, t, n, _ in private_imports()}
    assert found == {("falsify.b.three", "falsify.a.one", "_hidden"), ("falsify.b.three", "falsify", "_shim"),
                     ("falsify.b.three", "falsify._shim", "_shim")}
    lines = sorted(line for m, t, n, line in private_imports() if n == "_hidden")
    assert lines == [1, 6, 8]  # the import, and the attribute of each imported module


def test_no_private_name_is_imported_from_another_package():
    found = [(m, t, n, line) for m, t, n, line in private_imports() if (m, t, n) not in KNOWN_EXCEPTIONS]
    assert not found, "private names imported from another package (make them public):\n" + "\n".join(
        f"  {m} (line {line}) imports {n} from {t}" for m, t, n, line in found)
    stale = KNOWN_EXCEPTIONS - {(m, t, n) for m, t, n, _ in private_imports()}
    assert not stale, f"remove these from KNOWN_EXCEPTIONS, they are fixed: {sorted(stale)}"
