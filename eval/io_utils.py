"""Atomic file writes: a result file is either complete or absent, never half-written."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """Write a DataFrame as CSV (no index), atomically."""
    atomic_write_text(path, frame.to_csv(index=False))


def load_cached(path: Path, identity: str) -> dict | None:
    """A finished result at ``path`` if it was made by the forecaster with this ``identity``; None when it is
    missing, unreadable, or made by another model (with a warning: it is recomputed and replaced)."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("model_identity") != identity:
        import warnings

        warnings.warn(f"{path} holds results of another model ({record.get('model_identity', 'unrecorded')}); "
                      f"recomputing them for {identity}", stacklevel=3)
        return None
    return record


def safe_name(name: str) -> str:
    """A file-system-safe version of a configuration name such as ``m4_yearly/A/short``."""
    return "".join(c if c.isalnum() or c in "-_." else "__" for c in name)
