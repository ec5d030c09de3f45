"""Every package marker says what its package is for (and DVC, which hashes them as stage deps, warns on an
empty file in every stage of every run)."""

from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize("marker", sorted(str(p.relative_to(SRC)) for p in SRC.rglob("__init__.py")))
def test_package_has_a_docstring(marker):
    import ast

    assert ast.get_docstring(ast.parse((SRC / marker).read_text())), f"{marker} has no docstring"
