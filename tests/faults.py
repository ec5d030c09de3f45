"""The fault suite's bookkeeping (tests/test_faults.py): run a real `sonotune`/`dvc` command, check it failed the
way a user error must (one line, exit status, no traceback), and record the case as a row of docs/failures.md.

`record` keeps each case's row in `ROWS` (and its time to surface in `SECONDS`); `render` turns the rows into
the markdown table. The last test of the suite compares docs/failures.md with `render()`;
`SONOTUNE_WRITE_FAILURES=1 pytest tests/test_faults.py` rewrites it instead.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.workspace import ROOT, project_env

DOC = ROOT / "docs" / "failures.md"
SURFACE_BOUND_S = 60  # every fault surfaces within this (the slowest: a tracking server lost mid-stage)


@dataclass
class Result:
    command: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Row:
    case: str
    fault: str
    command: str
    status: str
    line: str
    kept: str


ROWS: dict[str, Row] = {}
SECONDS: dict[str, float] = {}


def call(command: list[str], repo: Path, env: dict | None = None, timeout: float = 600) -> Result:
    started = time.monotonic()
    done = subprocess.run(command, cwd=repo, env=env or project_env(), capture_output=True, text=True,
                          timeout=timeout)
    return Result(command, done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def error_line(result: Result, command: str) -> str:
    """The one `sonotune <command>: error: …` line of a failed command; asserts there is exactly one, and no
    traceback anywhere in its output."""
    assert "Traceback" not in result.output, result.output[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"sonotune {command}: error: ")]
    assert len(lines) == 1, f"expected one error line, got {lines}:\n{result.output[-3000:]}"
    return lines[0]


def normalize(text: str, *paths: Path) -> str:
    """A line as the table shows it: throw-away paths, ports, hashes and run ids replaced by placeholders."""
    for path in paths:
        text = text.replace(str(path.resolve()), "<repo>").replace(str(path), "<repo>")
    text = re.sub(r"/\S*?/pytest-\d+/[^/\s]+/(repo|store)\b", r"<\1>", text)
    text = re.sub(r"/\S*?/pytest-\d+/[^/\s]+/", "<tmp>/", text)
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", text)
    text = re.sub(r"--port \d+", "--port <port>", text)
    text = re.sub(r"\b[0-9a-f]{16,}\b", "<hash>", text)
    text = re.sub(r"\bcommit [0-9a-f]{7,15}\b", "commit <hash>", text)  # a short git commit id
    return text.replace("|", "\\|")


def record(case: str, fault: str, result: Result | None, line: str, kept: str, repo: Path | None = None,
           command: str | None = None, bound: float = SURFACE_BOUND_S, seconds: float | None = None) -> None:
    """Check the fault surfaced within `bound` seconds and keep its row for docs/failures.md."""
    seconds = result.seconds if seconds is None else seconds
    assert seconds < bound, f"{case}: surfaced after {seconds:.1f} s (bound {bound} s)"
    shown = command or " ".join([Path(result.command[0]).name, *result.command[1:]])
    status = "—" if result is None else str(result.returncode)
    paths = [p for p in (repo,) if p is not None]
    ROWS[case] = Row(case, fault, normalize(shown, *paths), status, normalize(line, *paths), kept)
    SECONDS[case] = seconds


def render(order: list[str]) -> str:
    rows = [ROWS[case] for case in order]
    lines = [
        "# What happens when something goes wrong",
        "",
        "Every bad input or fault below was run by the fault suite (`tests/test_faults.py`) against the real",
        "command line, `dvc repro` and a real MLflow server on 127.0.0.1; it checked the line, the exit status",
        "and what is kept (no run left RUNNING, no half-written output, user data intact), and that the fault",
        f"surfaced within {SURFACE_BOUND_S} s. This file is generated from those runs — do not edit it: "
        "`SONOTUNE_WRITE_FAILURES=1 pytest tests/test_faults.py`",
        "rewrites it, and the suite fails when it differs. Placeholders: `<repo>` the project folder, `<port>` the",
        "server's port, `<hash>` a digest, run id or git commit.",
        "",
        "Exit status: 2 for a bad input or a store that cannot be used (one line, `sonotune <command>: error: …`),",
        "130 for Ctrl-C (SIGINT), 143 for SIGTERM; after either signal open MLflow runs are FAILED and finished",
        "folds kept, so rerunning the same command resumes.",
        "",
        f"{len(rows)} cases.",
        "",
        "| # | case | fault | command | exit | what the user sees | what is kept |",
        "|---|---|---|---|---|---|---|",
    ]
    for number, row in enumerate(rows, 1):
        lines.append(f"| {number} | `{row.case}` | {row.fault} | `{row.command}` | {row.status} | {row.line} | "
                     f"{row.kept} |")
    return "\n".join(lines) + "\n"


def digest_tree(root: Path) -> dict[str, str]:
    """Path -> sha1 of every file under `root` (what "intact" is checked against)."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def half_written(repo: Path) -> list[str]:
    """Staging folders and temporary files a stage would leave if it stopped half-way."""
    found = [p for p in repo.rglob(".*.staging")]
    found += [p for p in (repo / ".sonotune").rglob("*.tmp*")] if (repo / ".sonotune").exists() else []
    return sorted(str(p.relative_to(repo)) for p in found)


def run_statuses(uri: str) -> list[tuple[str, str, str]]:
    """(run name, status, parent id or "") of every run in the store (deleted ones too)."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not experiments:
        return []
    runs = client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=1000)
    return sorted((r.info.run_name, r.info.status, r.data.tags.get("mlflow.parentRunId", "")) for r in runs)


def local_statuses(repo: Path) -> list[tuple[str, str, str]]:
    db = repo / "mlruns" / "mlflow.db"
    return run_statuses(f"sqlite:///{db}") if db.is_file() and db.stat().st_size else []


def running(statuses: list[tuple[str, str, str]]) -> list[str]:
    return [name for name, status, _ in statuses if status == "RUNNING"]
