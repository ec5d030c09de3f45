"""The README and the manual: one page, links that resolve, commands that exist, and what the manual says about
`dvc exp run -S` rewriting params.yaml. (The README's `dvc exp show` line is run by tests/test_e2e.py.)"""

from __future__ import annotations

import difflib
import re
import shutil

import pytest
import yaml

from sonotune.cli import build_parser
from tests.workspace import ROOT

README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}


def _code_lines(path) -> list[str]:
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", path.read_text(), flags=re.S)
    return [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]


def test_the_readme_is_one_page():
    assert len(README.read_text().splitlines()) <= 90


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(doc):
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        assert resolved.exists(), f"{doc.name}: {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{doc.name}: {target}"


def test_every_sonotune_command_in_the_readme_and_manual_exists():
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    named = {m.group(1) for doc in (README, ROOT / "docs" / "manual.md") for line in _code_lines(doc)
             if (m := re.match(r"sonotune ([a-z]+)", line))}
    assert named and named <= set(sub.choices), named - set(sub.choices)


def test_dvc_set_param_changes_one_line_of_params_yaml_and_spells_nulls_empty(tmp_path):
    """What docs/manual.md says `dvc exp run -S` does to params.yaml, measured with DVC's own writer: the key's
    line changes, lists keep their (block) style and comments, and a null is written back as an empty value."""
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    epochs = yaml.safe_load(params.read_text())["finetune"]["epochs"] + 1
    apply_overrides(params, [f"finetune.epochs={epochs}"])
    diff = list(difflib.ndiff((ROOT / "params.yaml").read_text().splitlines(), params.read_text().splitlines()))
    removed = [line[2:] for line in diff if line.startswith("- ")]
    added = [line[2:] for line in diff if line.startswith("+ ")]
    assert [line for line in removed if line.strip()] and all(
        re.match(r"\s*epochs: \d+\s", line) or re.match(r"\s*\w+: null\s", line) or not line.strip()
        for line in removed), removed  # a blank line after a list DVC rewrote may go
    assert len(added) == len([line for line in removed if line.strip()])
    assert any(re.match(rf"\s*epochs: {epochs}\s+# the paper: 30", line) for line in added)
    assert all(re.match(rf"\s*epochs: {epochs}\s", line) or re.match(r"\s*\w+:\s+#", line) for line in added), added
