"""An import recorder: Python runs this file at the start of every process that has this folder on its PYTHONPATH
(tests/workspace.py: recording_env). When such a process has imported `sonotune`, it writes, at exit, the package's
files it imported or opened (package data such as the report's paper table) to $SONOTUNE_IMPORT_LOG/<pid>.json
with its command line; tests/test_pipeline.py checks them against each stage's deps in dvc.yaml."""

import atexit
import json
import os
import sys

LOG_DIR = os.environ.get("SONOTUNE_IMPORT_LOG")
_opened: set[str] = set()


def _record_open(event: str, args: tuple) -> None:
    if event == "open" and isinstance(args[0], str) and f"{os.sep}sonotune{os.sep}" in args[0]:
        _opened.add(os.path.abspath(args[0]))


def _write_log() -> None:
    package = sys.modules.get("sonotune")
    if package is None or not getattr(package, "__file__", None):
        return
    root = os.path.dirname(os.path.abspath(package.__file__))
    modules = {os.path.abspath(m.__file__) for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
    files = sorted(os.path.relpath(path, os.path.dirname(root)) for path in modules | _opened
                   if path.startswith(root + os.sep) and "__pycache__" not in path)
    os.makedirs(LOG_DIR, exist_ok=True)
    with open(os.path.join(LOG_DIR, f"{os.getpid()}.json"), "w") as log:
        json.dump({"argv": sys.argv, "files": files}, log)


if LOG_DIR:
    sys.addaudithook(_record_open)
    atexit.register(_write_log)
