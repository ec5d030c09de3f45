"""dvc.yaml's one promise: a stage is stale whenever code it runs or a param it reads has changed.

For every stage, the code it runs is derived from the source: `sonotune <stage>` runs `cli.cmd_<stage>` (and the
cli helpers it calls), which imports the stage module; the closure over every `sonotune` import from there
(module-level and function-level, conservatively) must lie under the stage's `deps`. The params it reads are every
`params.<section>[.<key>]` chain in those modules; each must be covered by the stage's `params`. Both checks would
have failed on the dvc.yaml before the structure refactor (`svm` ran metrics.py, outputs.py, plots.py, layout.py,
tracking.py and config.py without depending on them; `prepare` read cv.n_splits without listing it).

Reading the source misses what only running shows, so the deps are also checked against what each stage's command
really imports (and opens) when `dvc repro` runs the demo's tiny study under an import recorder
(tests/import_recorder, the e2e workspace's own run): that check found `prepare` importing team.py unlisted.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from sonotune.config import Params

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "sonotune"
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The source file of a `sonotune` module (a package's __init__.py), or None if `name` is not a module."""
    path = SRC / Path(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def imported_modules(node: ast.AST, current: str) -> set[str]:
    """`sonotune` modules imported anywhere under `node` (`from sonotune.x import y` counts y when y is a module)."""
    found = set()
    for item in ast.walk(node):
        if isinstance(item, ast.Import):
            found |= {alias.name for alias in item.names if alias.name.split(".")[0] == PACKAGE}
        elif isinstance(item, ast.ImportFrom) and item.module and item.module.split(".")[0] == PACKAGE:
            found.add(item.module)
            found |= {f"{item.module}.{alias.name}" for alias in item.names
                      if module_file(f"{item.module}.{alias.name}")}
    parents = {".".join(name.split(".")[:i]) for name in found for i in range(1, name.count(".") + 1)}
    return {name for name in found | parents if module_file(name) and name != current}


def closure(roots: set[str]) -> set[str]:
    """Every `sonotune` module reachable from `roots` through imports, lazy ones included."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse(module_file(name).read_text())
        todo += imported_modules(tree, name) - seen
    return seen


def cli_functions(command: str) -> set[str]:
    """`cmd_<command>` and the cli.py functions it calls, transitively."""
    tree = ast.parse(module_file(f"{PACKAGE}.cli").read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    todo, visited = [f"cmd_{command}"], set()
    while todo:
        name = todo.pop()
        if name not in visited:
            visited.add(name)
            todo += [call.func.id for call in ast.walk(functions[name])
                     if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in functions]
    return visited


def cli_roots(command: str) -> set[str]:
    """Modules `sonotune <command>` imports: cli's module level, plus those of the functions the command runs."""
    tree = ast.parse(module_file(f"{PACKAGE}.cli").read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    top_level = ast.Module(body=[node for node in tree.body if not isinstance(node, ast.FunctionDef)], type_ignores=[])
    roots = imported_modules(top_level, f"{PACKAGE}.cli") | {f"{PACKAGE}.cli"}
    for name in cli_functions(command):
        roots |= imported_modules(functions[name], f"{PACKAGE}.cli")
    return roots


def stage_command(stage: dict) -> str:
    return re.match(r"sonotune (\w+)", stage.get("do", stage)["cmd"]).group(1)


def stage_files(command: str) -> set[Path]:
    cli = f"{PACKAGE}.cli"  # only the command's own part of cli.py runs (cli_roots), not every command's imports
    modules = closure(cli_roots(command) - {cli}) | {cli}
    return {module_file(name).relative_to(ROOT) for name in modules}


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(dep) or Path(dep) in path.parents for dep in deps)


def field_chain(node: ast.Attribute) -> list[str] | None:
    """`params.a.b.c` -> ["a", "b", "c"]; None when the chain does not start at a name `params`."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return parts[::-1] if isinstance(node, ast.Name) and node.id == "params" else None


def params_key(chain: list[str]) -> str:
    """The longest prefix of `chain` that names a params key (sections and fields of `Params`)."""
    model, key = Params, []
    for part in chain:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            break
        key.append(part)
        model = fields[part].annotation
    return ".".join(key)


def _mark_parents(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child.parent = node


def outermost_params_keys(trees: list[ast.AST]) -> set[str]:
    """Keys of the longest `params.…` chains only (`params.cv.n_splits` gives cv.n_splits, not also cv)."""
    keys = set()
    for tree in trees:
        _mark_parents(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and not isinstance(node.parent, ast.Attribute):
                chain = field_chain(node)
                if chain and params_key(chain):
                    keys.add(params_key(chain))
    return keys


def stage_code(command: str) -> list[ast.AST]:
    """The code whose params reads count: the command's cli functions and every other module it runs, except
    config.py, whose validation of the whole file is no dependence of a stage's outputs on each key."""
    cli = ast.parse(module_file(f"{PACKAGE}.cli").read_text())
    functions = {node.name: node for node in cli.body if isinstance(node, ast.FunctionDef)}
    trees = [functions[name] for name in cli_functions(command)]
    skipped = {Path("src/sonotune/cli.py"), Path("src/sonotune/config.py")}
    return trees + [ast.parse((ROOT / path).read_text()) for path in stage_files(command) - skipped]


def listed_params(stage: dict) -> list[str]:
    """The stage's params keys; a templated part (`datasets.${item}`) stands for whichever key it expands to."""
    keys = []
    for entry in stage.get("do", stage).get("params", []):
        keys += [entry] if isinstance(entry, str) else list(entry)
    return [re.sub(r"\.\$\{[^}]+\}$", "", key) for key in keys]


def key_covered(key: str, listed: list[str]) -> bool:
    return any(key == item or key.startswith(item + ".") for item in listed)


@pytest.mark.parametrize("name", sorted(PIPELINE))
def test_stage_deps_cover_every_module_it_runs(name):
    stage = PIPELINE[name]
    deps = stage.get("do", stage)["deps"]
    missing = sorted(str(path) for path in stage_files(stage_command(stage)) if not covered(path, deps))
    assert not missing, f"dvc.yaml stage '{name}' runs these modules without depending on them: {missing}"


@pytest.mark.parametrize("name", sorted(PIPELINE))
def test_stage_params_cover_every_key_it_reads(name):
    stage = PIPELINE[name]
    read = outermost_params_keys(stage_code(stage_command(stage)))
    missing = sorted(key for key in read if not key_covered(key, listed_params(stage)))
    assert not missing, f"dvc.yaml stage '{name}' reads these params without listing them: {missing}"


def test_the_checks_see_what_a_stage_runs_and_reads():
    """The derivation itself: the svm stage runs metrics.py through the svm library, prepare reads cv.n_splits."""
    svm_files = stage_files("svm")
    assert Path("src/sonotune/metrics.py") in svm_files and Path("src/sonotune/stages/svm.py") in svm_files
    assert Path("src/sonotune/team.py") in svm_files  # via cli's tracking-server check
    assert "cv.n_splits" in outermost_params_keys(stage_code("prepare"))
    assert "report.log_to_mlflow" in outermost_params_keys(stage_code("report"))  # read in cli.cmd_report
    assert not covered(Path("src/sonotune/metrics.py"), ["src/sonotune/svm"])
    assert key_covered("cv.n_splits", ["cv"]) and not key_covered("cv.n_splits", ["cv.val_fraction"])


def recorded_files(log_dir: Path) -> dict[str, set[Path]]:
    """`sonotune <command>` -> the package files (as src/sonotune/…) its processes imported or opened."""
    found: dict[str, set[Path]] = {}
    for log in log_dir.glob("*.json"):
        entry = json.loads(log.read_text())
        if Path(entry["argv"][0]).name == PACKAGE:
            found.setdefault(entry["argv"][1], set()).update(Path("src", name) for name in entry["files"])
    return found


@pytest.mark.e2e
def test_stage_deps_cover_every_file_its_command_imports_when_it_runs(demo_repro):
    recorded = recorded_files(demo_repro["imports"])
    assert set(recorded) == {stage_command(stage) for stage in PIPELINE.values()}, "a demo stage ran unrecorded"
    assert Path("src/sonotune/stages/prepare.py") in recorded["prepare"]
    for name, stage in sorted(PIPELINE.items()):
        deps = stage.get("do", stage)["deps"]
        missing = sorted(str(path) for path in recorded[stage_command(stage)] if not covered(path, deps))
        assert not missing, f"dvc.yaml stage '{name}' imported these files when it ran, without depending on them: {missing}"


def test_python_caches_never_reach_a_stage_hash():
    """Directory deps would change with every __pycache__ Python writes; .dvcignore keeps them out."""
    ignored = (ROOT / ".dvcignore").read_text().split()
    assert "__pycache__/" in ignored and "*.pyc" in ignored
