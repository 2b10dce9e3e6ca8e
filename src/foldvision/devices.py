"""One GPU per parallel job: a lock file per GPU index, held by the process that trains on it."""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from pathlib import Path
from typing import IO

_CLAIMED_GPU: tuple[int, IO[str] | None] | None = None  # (index, open lock file) held until the process ends


def claim_gpu(count: int, lock_dir: str | os.PathLike | None = None) -> int:
    """A GPU index that no other foldvision process on this machine holds, held (by an flock on a
    file per GPU) until this process ends. Parallel jobs (hydra/launcher=joblib) on a machine with
    several GPUs so get one GPU each instead of all landing on cuda:0. When every GPU is held,
    the one with the lowest index is shared (with a warning). A process claims once."""
    global _CLAIMED_GPU
    if _CLAIMED_GPU is not None:
        return _CLAIMED_GPU[0]
    lock_dir = Path(lock_dir or os.environ.get("FOLDVISION_LOCK_DIR") or tempfile.gettempdir())
    lock_dir.mkdir(parents=True, exist_ok=True)
    # locks name the physical GPU (CUDA_VISIBLE_DEVICES maps visible index i to it), per user: a lock
    # file of another user in a sticky /tmp could not be opened
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    names = visible[:count] if len(visible) >= count else [str(i) for i in range(count)]
    for i, name in enumerate(names):
        try:
            f = open(lock_dir / f"foldvision-{os.getuid()}-gpu-{name}.lock", "w")
        except OSError:  # unreadable lock: treat the GPU as held
            continue
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _CLAIMED_GPU = (i, f)
        return i
    logging.getLogger("foldvision").warning("all %d GPUs are held by other foldvision jobs: sharing cuda:0", count)
    _CLAIMED_GPU = (0, None)
    return 0
