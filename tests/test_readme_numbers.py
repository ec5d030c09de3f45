"""No hand-typed results: the README's demo answer is the demo's own summary, and every AUC a text quotes must be
in the reports it claims to quote.

`docs/demo_summary.md` is `reports/summary.md` of a fresh `make demo` (seed 42), copied by
`PYTHONPATH=src:. python tests/test_readme_numbers.py` after the demo, which also rewrites the README's block
between the `demo-answer` markers from it. The tests here keep the README equal to that file and its AUCs equal
to the demo's; tests/test_e2e.py runs `quoted_aucs_missing` on the tiny demo it builds (its summary against its
own `auc.json`), so the check is exercised on real reports, and shown to fail on a number they do not hold.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SNAPSHOT = ROOT / "docs" / "demo_summary.md"
MARKERS = ("<!-- demo-answer -->\n", "<!-- /demo-answer -->")
AUC = re.compile(r"(?<![\d.])0\.\d{3}(?!\d)")  # an AUC as the report prints it: 0.ddd


def answer_block(summary: str) -> str:
    """The summary's answer, one line per backbone (the lines under its `## The answer` heading), as the README
    quotes it."""
    lines = summary.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## The answer")) + 2
    end = next(i for i in range(start, len(lines) + 1) if i == len(lines) or not lines[i].startswith("- "))
    return "\n".join(lines[start:end]) + "\n"


def quoted_block(text: str) -> str:
    return text[text.index(MARKERS[0]) + len(MARKERS[0]):text.index(MARKERS[1])]


def report_aucs(reports: Path) -> list[float]:
    """Every configuration's AUC in a report directory (`auc.json`, 4 decimals)."""
    found = []

    def walk(node):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value)
            elif key == "auc":
                found.append(value)

    walk(json.loads((reports / "auc.json").read_text()))
    return found


def quoted_aucs_missing(text: str, reports: Path) -> list[str]:
    """The AUC-like numbers (0.ddd) of `text` that are no AUC of `reports` (within the two roundings, 3 and 4
    decimals) — the AUCs it quotes that those reports do not contain. A ΔAUC or p-value also prints as 0.ddd:
    call this on AUC sentences (`auc_sentences`), not on differences."""
    held = report_aucs(reports)
    return [number for number in AUC.findall(text) if not any(abs(float(number) - v) <= 0.00051 for v in held)]


def auc_sentences(block: str) -> str:
    """The AUCs of the answer block, without its differences and p-values: each 'AUC 0.ddd', '(0.ddd' and
    'head (0.ddd)' the answer prints."""
    return " ".join(re.findall(r"(?:AUC |\()0\.\d{3}", block))


def test_the_readme_quotes_the_demo_answer_verbatim():
    assert quoted_block(README.read_text()) == answer_block(SNAPSHOT.read_text())


def test_the_snapshot_is_a_summary_of_the_demo_grid():
    """docs/demo_summary.md is what the report writes for params.yaml's study (2 backbones × 2 strategies)."""
    snapshot = SNAPSHOT.read_text()
    assert snapshot.startswith("# sonotune study — phantom · protocol `leakage_free` · 5-fold CV")
    assert "Holm over all 12 comparisons of this report" in snapshot
    assert all(f"- phantom / {backbone} — which strategy:" in snapshot for backbone in ("vgg16", "resnet50"))


def test_every_auc_the_readme_quotes_is_in_the_demo_summary():
    """Outside the generated block too: any 0.ddd in the README must be a number the demo's summary prints."""
    readme = README.read_text()
    outside = readme.replace(quoted_block(readme), "")
    printed = set(AUC.findall(SNAPSHOT.read_text()))
    assert [n for n in AUC.findall(outside) if n not in printed] == []


if __name__ == "__main__":  # pragma: no cover - after `make demo`: copy its summary, rewrite the README block
    shutil.copyfile(ROOT / "reports" / "summary.md", SNAPSHOT)
    text = README.read_text()
    README.write_text(text.replace(MARKERS[0] + quoted_block(text), MARKERS[0] + answer_block(SNAPSHOT.read_text())))
    print(answer_block(SNAPSHOT.read_text()))
