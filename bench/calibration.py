"""A machine calibration measured in the same run as a benchmark's figures.

Figures from different days and machines (a shared 2-core box, a laptop, CI) are not comparable on
their own: each bench prints this calibration beside them, so a reader can tell "azpar got slower"
from "the machine was busy". Two numbers, both cheap (about a second together):

* ``loop_steps_per_s``: pure-Python ``for`` loop steps per second on one core (the best of a few
  short runs, so a neighbour's burst does not count), which scales any Python-bound figure;
* ``interpreter_start_s``: wall time of a bare ``python -c pass`` (best of a few), which scales any
  figure that starts processes (pool start, cold cells, workers).

Interface kept stable for every bench: ``calibrate() -> dict`` and ``format_calibration(d) -> str``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

LOOP_STEPS = 2_000_000
REPEATS = 3


def _loop_steps_per_s(steps: int = LOOP_STEPS, repeats: int = REPEATS) -> float:
    """Best-of-``repeats`` rate of a bare pure-Python counting loop."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        s = 0
        for i in range(steps):
            s += i
        best = min(best, time.perf_counter() - t0)
    return steps / best if best > 0 else float("inf")


def _interpreter_start_s(repeats: int = REPEATS) -> float:
    """Best-of-``repeats`` wall time of ``python -c pass`` (site import included, as a worker pays it)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, stdin=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t0)
    return best


def calibrate() -> dict:
    """Measure this machine now; a JSON-ready dict to store beside the bench's figures."""
    return {
        "loop_steps_per_s": round(_loop_steps_per_s()),
        "interpreter_start_s": round(_interpreter_start_s(), 4),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def format_calibration(d: dict) -> str:
    """One line for a bench's text output, e.g. ``calibration: 31.2 M loop steps/s, python start 18 ms, ...``."""
    rate = d.get("loop_steps_per_s")
    start = d.get("interpreter_start_s")
    rate_s = f"{rate / 1e6:.1f} M loop steps/s" if isinstance(rate, (int, float)) else "loop rate n/a"
    start_s = f"python start {start * 1000:.0f} ms" if isinstance(start, (int, float)) else "python start n/a"
    return (
        f"calibration: {rate_s}, {start_s}, {d.get('cpu_count', '?')} CPUs, "
        f"Python {d.get('python', '?')} ({d.get('machine', '?')})"
    )


if __name__ == "__main__":
    print(format_calibration(calibrate()))
