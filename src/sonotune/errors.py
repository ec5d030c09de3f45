"""User-facing errors: anything raised as `SonotuneError` reaches the user as one line and exit code 2.

`require_writable(folder, what)` is the preflight of every output folder and store: a stage finds out that it
cannot write before it trains, not after (docs/failures.md). `mask_credentials` keeps passwords out of output.
"""

from __future__ import annotations

import re
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


def require_writable(folder: Path, what: str, consequence: str = "nothing was trained") -> None:
    """Prove a file can be written in `folder` (or, while it does not exist, in the nearest folder above it,
    where it would be created); else one line naming it. Creates nothing but a deleted temporary file."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
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
