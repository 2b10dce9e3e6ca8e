"""Start-up: `python train.py --help` and composing the config, in fresh processes (heavy imports
such as torch and Lightning must stay deferred). Medians of --repeats runs; < 2 s wanted.

python benchmarks/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = (
    "from hydra import compose, initialize_config_dir; "
    f"initialize_config_dir({str(ROOT / 'conf')!r}, version_base='1.3').__enter__(); compose('train')"
)


def timed(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    python = timed([sys.executable, "-c", "pass"], a.repeats)
    helps = timed([sys.executable, "train.py", "--help"], a.repeats)
    compose = timed([sys.executable, "-c", COMPOSE], a.repeats)
    print(f"python -c pass:            {python:.2f} s (the interpreter alone)")
    print(f"python train.py --help:    {helps:.2f} s")
    print(f"compose the train config:  {compose:.2f} s")


if __name__ == "__main__":
    main()
