"""Atomic file writes: a reader or a killed process never sees a half-written file."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from foldvision.errors import FoldvisionError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private files (0600/0700); what foldvision writes gets the permissions
# any other file of the user would (0644/0755 under the usual umask), so teammates can read runs.
_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


def fault_point(name: str) -> None:
    """Fault injection for the kill tests: SIGKILL this process at the named point when
    FOLDVISION_KILL_AT names it (e.g. `replace:last.ckpt`). A no-op otherwise."""
    if os.environ.get("FOLDVISION_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on success fsync it and rename it over `path`.

    If the block raises (or the process dies), `path` keeps its old content and the temp file
    is removed (or left as a dot-file that nothing reads).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        fault_point(f"replace:{path.name}")  # written, not yet in place
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def write_csv(path: str | os.PathLike, df: pd.DataFrame) -> None:
    with atomic_open(path, "w") as f:
        df.to_csv(f, index=False)


def read_oof(path: str | os.PathLike) -> pd.DataFrame:
    """An oof.csv with ids, paths and class names kept as written: "007" stays "007", a class
    called "None" or "NA" stays a class (pandas would make them 7 and NaN)."""
    df = pd.read_csv(path, dtype={"id": str, "path": str, "target": str}, keep_default_na=False)
    for col in df.columns.drop(["id", "path", "target"], errors="ignore"):  # an empty cell is a NaN probability
        if not pd.api.types.is_numeric_dtype(df[col]):
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """torch.load with weights_only=True: tensors and plain containers only, never arbitrary
    objects, so a checkpoint from elsewhere cannot run code when loaded."""
    import torch  # deferred: config.py (loaded by every CLI command) imports this module

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        if type(e).__name__ == "UnpicklingError":  # torch's safe unpickler refused an object
            raise FoldvisionError(
                f"refusing to load {path}: it holds Python objects besides tensors ({str(e).splitlines()[0]}). "
                "foldvision loads checkpoints with weights_only=True so that no file can run code; "
                "re-save the state_dict alone (torch.save(model.state_dict(), path)) from a source you trust."
            ) from None
        if isinstance(e, (RuntimeError, EOFError)):
            raise FoldvisionError(
                f"cannot read checkpoint {path}: {e}. The file is damaged; delete it to retrain from the last good one."
            ) from None
        raise
