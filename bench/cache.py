#!/usr/bin/env python
"""What ``--cache`` costs and saves on the local pool (issue 20's targets).

    python bench/cache.py                 # 10,000 iterations of ~1 ms, 3 repetitions (~1 min on 2 cores)
    python bench/cache.py --n 2000 --reps 1

The cell is ``for x in xs: work(x)`` with ``work`` a function defined in ``__main__`` (as in a
notebook), ~1 ms of pure-Python arithmetic per call (calibrated at start), and ``xs`` a list of
ints. Measured, each the median of ``--reps`` runs on a warm pool of 2 workers and a job store
of its own (a temporary folder):

  plain   the cell without cache
  first   the cell with cache=True and an empty cache (keys computed, nothing found, index written);
          plain and first alternate in order between repetitions
  rerun   the cell with cache=True again, nothing changed (every value from the cache)

Targets: first/plain <= 1.10; rerun/first < 0.05. Prints the figures and the two ratios, with a
calibration of the machine measured in the same run (bench/calibration.py: pure-Python loop rate,
bare interpreter start) so that figures of other days and machines can be compared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import calibration as machine_calibration  # bench/calibration.py (this script's folder is on sys.path)

LOOPS = 1000  # iterations of work()'s inner loop; set by calibrate()


def work(x):
    total = 0
    for i in range(LOOPS):
        total += (i * x) % 7
    return total


def calibrate(target: float = 0.001) -> int:
    """The LOOPS that makes work() take about ``target`` seconds here."""
    global LOOPS
    LOOPS = 1000
    start = time.perf_counter()
    for x in range(200):
        work(x)
    per_call = (time.perf_counter() - start) / 200
    LOOPS = max(1, int(1000 * target / per_call))
    return LOOPS


def timed(azpar_magic, xs: list, cache: bool) -> tuple[float, object]:
    start = time.perf_counter()
    job = azpar_magic.run("for x in xs", "work(x)", {"xs": xs, "work": work, "LOOPS": LOOPS, "__name__": "__main__"},
                          workers=2, cache=cache)
    values = job.result()
    return time.perf_counter() - start, (values, job)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    machine = machine_calibration.calibrate()
    store = tempfile.mkdtemp(prefix="azpar-bench-cache-")
    os.environ["AZPAR_JOB_STORE"] = store
    import azpar_magic

    loops = calibrate()
    xs = list(range(args.n))
    timed(azpar_magic, list(range(50)), False)  # start the pool
    plain, first, rerun = [], [], []
    try:
        expected = [work(x) for x in xs[:100]]
        for rep in range(args.reps):
            azpar_magic.cache_clear()
            for cache in ((False, True) if rep % 2 == 0 else (True, False)):  # alternate: no order bias
                seconds, (values, job) = timed(azpar_magic, xs, cache)
                assert values[:100] == expected and job.from_cache == 0
                (first if cache else plain).append(seconds)
            seconds, (values, job) = timed(azpar_magic, xs, True)
            assert values[:100] == expected and job.from_cache == args.n, job.from_cache
            rerun.append(seconds)
    finally:
        from azpar_magic import jobstore
        jobstore.flush()  # the writer thread's last records, before their folder goes
        shutil.rmtree(store, ignore_errors=True)
    p, f, r = statistics.median(plain), statistics.median(first), statistics.median(rerun)
    from azpar_magic.jobs import JobOptions
    from azpar_magic.run import cache as run_cache
    from azpar_magic.run.parsing import parse_cell
    from azpar_magic.run.request import RunRequest
    request = RunRequest(parse_cell("for x in xs", "work(x)"), {"xs": xs, "work": work}, JobOptions(cache=True))
    start = time.perf_counter()
    run_cache.iteration_keys(request, xs)
    keys = time.perf_counter() - start
    print(machine_calibration.format_calibration(machine) + " (measured at the start of this run)")
    print(f"{args.n:,} iterations of work(x) (~1 ms: {loops} inner loops), 2 workers, median of {args.reps}")
    print(f"  plain (no cache)      {p:8.3f} s   {sorted(round(s, 3) for s in plain)}")
    print(f"  first run with cache  {f:8.3f} s   {sorted(round(s, 3) for s in first)}")
    print(f"  rerun, all cached     {r:8.3f} s   {sorted(round(s, 3) for s in rerun)}")
    print(f"  keys alone            {keys:8.3f} s   (the first run's own extra work, besides writing the index)")
    print(f"  first/plain = {f / p:.3f}  (target <= 1.10; min/min {min(first) / min(plain):.3f}; "
          f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"  rerun/first = {r / f:.4f} (target < 0.05)")


if __name__ == "__main__":
    main()
