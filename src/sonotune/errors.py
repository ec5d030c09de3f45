"""User-facing errors: anything raised as `SonotuneError` reaches the user as one line and exit code 2.

`require_writable(folder, what)` is the preflight of every output folder and store: a stage finds out that it
cannot write before it trains, not after (docs/failures.md). `require_space(folder, needed, what)` is the same
for free disk space. `mask_credentials` keeps passwords out of output.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]+):[^@\s/]+@", re.IGNORECASE)


class SonotuneError(Exception):
    """A problem with the user's input (file, key, value) rather than a bug."""


class ConfigError(SonotuneError):
    """params.yaml (or a file it points to) is missing, malformed or holds a bad value."""


class DataError(SonotuneError):
    """A dataset root, image or manifest does not look as expected."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a scheduler, `dvc queue kill`) turned into what Ctrl-C raises, so a stage unwinds the same way."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


def mask_credentials(text: str) -> str:
    """`text` with every `scheme://user:password@` turned into `scheme://user:***@` (MLflow prints its
    tracking URI in "View run … at" lines and in errors)."""
    return _CREDENTIALS.sub(r"\1:***@", text)


# a test hook: the free-space reading is at most this many bytes (the fault suite's "disk full" without filling one;
# mounting a small tmpfs needs root, which CI may not have)
FREE_BYTES_ENV = "SONOTUNE_FREE_BYTES"


def _nearest_existing(folder: Path) -> Path:
    """`folder`, or while it does not exist the nearest folder above it (where it would be created)."""
    return next((p for p in (folder, *folder.parents) if p.exists()), Path("."))


def _gigabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.2f} GB"


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system that holds `folder` (capped by SONOTUNE_FREE_BYTES when set)."""
    free = shutil.disk_usage(_nearest_existing(Path(folder))).free
    cap = os.environ.get(FREE_BYTES_ENV, "").strip()
    return min(free, int(cap)) if cap.isdigit() else free


def require_space(folder: Path, needed: int, what: str, consequence: str = "nothing was trained") -> None:
    """One line naming `folder`, what `what` needs and what is free, when its file system has under `needed` bytes."""
    free = free_bytes(folder)
    if free < needed:
        where = _nearest_existing(Path(folder)).resolve()
        raise SonotuneError(f"{where}/: {what} need about {_gigabytes(needed)} of disk, {_gigabytes(free)} is "
                            f"free; {consequence}: free some space (or work on a larger disk) and rerun")


def require_writable(folder: Path, what: str, consequence: str = "nothing was trained") -> None:
    """Prove a file can be written in `folder` (or, while it does not exist, in the nearest folder above it,
    where it would be created); else one line naming it. Creates nothing but a deleted temporary file."""
    folder = Path(folder)
    existing = _nearest_existing(folder)
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "not a folder")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".sonotune-write-check-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        needed = "" if existing == folder else f", needed for {folder}/"
        raise SonotuneError(f"{existing}/: cannot write {what} there ({reason}{needed}); {consequence}: "
                            f"make it a writable folder and rerun") from None
