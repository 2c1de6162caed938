#!/usr/bin/env python
"""How the local pool scales, and what a kernel's first cell costs (issue 16, "Also").

    python bench/scaling.py            # full run (a few minutes on 2 cores)
    python bench/scaling.py --quick    # smoke run: small sizes, one repetition
    python bench/scaling.py --only n,tasks,alt,ns,kernel,mods,gc,items,fails,kinds,returns
    AZPAR_BENCH_ROOT=/other/checkout python bench/scaling.py --only tasks   # that checkout's code

The figures, each printed beside a calibration of the machine measured in the same run:

  n       N = 1e2..1e6 trivial iterations (``x * 2``) on a warm 2-worker pool: ``azpar_magic.run``
          against a fork ``multiprocessing.Pool(2).map`` of a module-level function; time per
          iteration, the ratio, and the kernel's (this client's) peak memory over its baseline
  tasks   (a') N = 1e3, 1e4 one-iteration tasks (``chunk_size=1``) against ``Pool(2).map(chunksize=1)``:
          the per-task cost of the pool, with the same calibration; then, for the target, 10,000
          such tasks with the two taking turns as in alt
  alt     (a) 10,000 trivial iterations (``x * x``), azpar and a fork ``Pool(2).map`` taking turns, each
          in a child of its own, a few hundred times each: both meet the same moments of a shared
          machine, where a few runs of each, one peer after the other (n, or bench/local.py's a),
          can rank two peers 10% apart either way; medians and means
  ns      a numpy array of 1, 10, 100, 500 MB read by the body, 100 iterations on a warm pool: the
          first cell's time, the identical second cell's (capture reuse), bytes written by the
          client and its workers, and the client's peak memory over its baseline
  kernel  a real ipykernel: ``%load_ext azpar_magic``, the first ``%%azpar`` cell (pool start,
          imports), the same cell again
  mods    a warm two-iteration cell calling a package of the notebook's own (beside it, not installed) of
          1 and of 300 modules (10 kB each, 3 MB), against a fork ``Pool(2).map`` of the same function: what a
          cell pays for shipping the user's own code, and the bytes the job store keeps per job
  gc      a full garbage collection (``gc.collect()``) in a client that ran 100 maps of 10,000 trivial
          iterations, keeping the last result (``out = ...``), against a fork Pool's client that ran the same:
          what the jobs the session keeps (the last 50, values and items) add to every full pass of the
          kernel's collector
  items   a loop over 20 numpy arrays of 20 MB (``for a in arrays``, the body sums one), warm: azpar's cell
          against a fork ``Pool(2).map`` of the same function, five runs each, the store caught up between
          them: seconds, the client's peak memory over its baseline, and how much the job store grew at the
          first run and at each later one (a hard-linked file counts once); then a loop returning
          20 arrays of 10 MB, run 8 times, its result dropped each time: seconds and what the client holds after

Every measurement of n and ns runs in a child process of its own (``--child``) in a scratch folder
(azpar ships ``.py`` files found under the current folder), with the job store in a temporary
folder. Peak memory is the child's VmHWM from /proc/self/status, reset through /proc/self/clear_refs
just before the measured call: a child's ``ru_maxrss`` would carry the parent's peak over.
Results are printed and saved to bench/results/scaling-<timestamp>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import calibration as machine_calibration  # bench/calibration.py (this script's folder is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")
FULL = {
    "n": [100, 1_000, 10_000, 100_000, 1_000_000],
    "tasks": [1_000, 10_000],
    "alt": 300,
    "tasks_turns": 20,
    "mb": [1, 10, 100, 500],
    "iterations": 100,
}
TARGET_TASKS_RATIO = 1.5  # issue 16 (a'): azpar / Pool(2).map(chunksize=1), per task, at 10,000 tasks
TARGET_ALT_RATIO = 1.0  # issue 16 (a): Pool(2).map / azpar, 10,000 trivial iterations, warm
ALT_N = 10_000
TASKS_N = 10_000  # (a'): one-iteration tasks a turn
QUICK = {"n": [100, 1_000], "tasks": [1_000], "tasks_turns": 2, "alt": 10, "mb": [1, 10], "iterations": 20}
ROOT = os.environ.get("AZPAR_BENCH_ROOT")  # another checkout whose azpar_magic the children measure
CHILD_TIMEOUT = 300.0


def double(x):
    """The mapped function of the Pool peer: module-level, as a notebook defines it."""
    return x * 2


def square(x):
    """alt's mapped function: (a) is bench/local.py's ``x * x``."""
    return x * x


# ----------------------------------------------------------------------------------------------
# Child side: one measurement per process
# ----------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"^{field}:\s+(\d+) kB", fh.read(), re.M).group(1))


def _reset_peak() -> None:
    """Make VmHWM start again from the current RSS (Linux >= 4.0), so it is this call's peak."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _tree_written() -> int:
    """Bytes passed to write() by this process and its descendants (pipes and files alike)."""
    import psutil

    total = 0
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.io_counters().write_chars
        except psutil.Error:
            pass
    return total


def _measured(fn) -> dict:
    """Time one call and the client's peak memory over its RSS just before it."""
    _reset_peak()
    base, w0 = _status_kb("VmRSS"), _tree_written()
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    return {
        "seconds": seconds,
        "peak_growth": (_status_kb("VmHWM") - base) * 1024,
        "written": _tree_written() - w0,
        "out": out,
    }


def _warm_map(peer: str, xs: list, chunk: int | None, body: str, fn):
    """A call that maps the cell body ``body`` (for azpar; ``fn``, the same as a module-level function,
    for the Pool) over ``xs`` on a warm pool of two workers, azpar's or a fork Pool's (``chunk``:
    iterations per task, as ``chunk_size`` and ``Pool.map``'s ``chunksize``; None: their defaults)."""
    if peer == "azpar":
        import azpar_magic

        ns = {"xs": xs}
        options = {"chunk_size": chunk} if chunk else {}
        azpar_magic.run("for x in range(100)", body, {}, workers=2).result()  # warm pool
        return lambda: azpar_magic.run("for x in xs", body, ns, workers=2, **options).result()
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(2)
    pool.map(fn, range(100))  # warm pool
    return lambda: pool.map(fn, xs, chunksize=chunk)


def child_n(peer: str, n: int, reps: int, chunk: int | None = None) -> dict:
    """``reps`` timed maps of ``x * 2`` over ``n`` items on a warm pool: azpar's or a fork Pool's."""
    xs = list(range(n))
    expected = [x * 2 for x in xs]
    call = _warm_map(peer, xs, chunk, "x * 2", double)
    runs = []
    for _ in range(reps):
        m = _measured(call)
        if m.pop("out") != expected:
            raise RuntimeError(f"{peer}: wrong result at N={n}")
        runs.append(m)
    return {"peer": peer, "n": n, "runs": runs, "rss_before": _status_kb("VmRSS") * 1024}


def child_turns(peer: str, n: int, chunk: int | None) -> None:
    """One peer of alt (or of tasks' alternated figure), in a process of its own: warm its pool, say
    "ready", then time one map of ``x * x`` over ``n`` items (``chunk``: iterations per task, as
    ``chunk_size`` and ``Pool.map``'s ``chunksize``; None: their defaults) each time the parent writes
    "go", answering with the seconds, until stdin ends. The result replaces the last one inside the
    timed call, as ``out = f()`` in a notebook."""
    xs = list(range(n))
    expected = [x * x for x in xs]
    call = _warm_map(peer, xs, chunk, "x * x", square)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        t = time.perf_counter()
        out = call()
        seconds = time.perf_counter() - t
        if out != expected:
            raise RuntimeError(f"{peer}: wrong result at N={n}")
        print(repr(seconds), flush=True)


MODS_SIZES = (1, 300)  # modules in the package of mods
MODS_REPS = 60


def _write_package(folder: str, modules: int) -> str:
    """A package of ``modules`` modules of ~10 kB (a comment, then one function) in ``folder``; its name."""
    name = f"azpar_bench_pkg{modules}"
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    with open(os.path.join(folder, name, "__init__.py"), "w") as fh:  # imports all of them, as packages do
        fh.write("".join(f"from . import m{i}\n" for i in range(modules)) + "from .m0 import f\n")
    for i in range(modules):
        with open(os.path.join(folder, name, f"m{i}.py"), "w") as fh:
            fh.write(f"# {'x' * 10_000}\ndef f(x):\n    return x + {i + 1}\n")
    old = time.time() - 3600  # as a package written before the session (files just written are read each time)
    for entry in os.scandir(os.path.join(folder, name)):
        os.utime(entry.path, (old, old))
    return name


def _store_bytes() -> int:
    """Bytes on disk in this child's job store: a file hard-linked into several job folders counts once."""
    store = os.environ.get("AZPAR_JOB_STORE", "")
    files = {}
    for d, _, names in os.walk(store) if store else ():
        for f in names:
            st = os.stat(os.path.join(d, f))
            files[(st.st_dev, st.st_ino)] = st.st_size
    return sum(files.values())


def child_mods(peer: str, modules: int, reps: int) -> dict:
    """``reps`` warm two-iteration maps of a function of a package of ``modules`` modules beside this
    (the current) folder: azpar's cell, or a fork Pool's map; the job store's bytes per azpar job."""
    import importlib

    sys.path.insert(0, os.getcwd())
    package = importlib.import_module(_write_package(os.getcwd(), modules))
    if peer == "azpar":
        import azpar_magic
        from azpar_magic import jobstore

        ns = {"pkg": package}
        call = lambda: azpar_magic.run("for x in range(2)", "pkg.f(x)", ns, workers=2).result()  # noqa: E731
    else:
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(2)
        call = lambda: pool.map(package.f, range(2))  # noqa: E731
    for _ in range(3):
        call()  # warm

    if peer == "azpar":
        jobstore.flush()
    before, times = _store_bytes(), []
    for _ in range(reps):
        t = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t)
        if out != [1, 2]:
            raise RuntimeError(f"{peer}: wrong result {out!r}")
    if peer == "azpar":
        jobstore.flush()
    return {
        "peer": peer,
        "modules": modules,
        "median_s": statistics.median(times),
        "store_bytes_per_job": (_store_bytes() - before) / reps,
    }


GC_CELLS = 100  # maps before the collections of gc are timed (more than session.KEPT_JOBS)
GC_N = 10_000


def child_gc(peer: str) -> dict:
    """``GC_CELLS`` maps of ``x * x`` over ``GC_N`` items, each result replacing the last, then the
    median of five full collections (after one that lets the collector see what it may stop watching)."""
    import gc

    xs = list(range(GC_N))
    call = _warm_map(peer, xs, None, "x * x", square)
    out = None
    for _ in range(GC_CELLS):
        out = call()
    if peer == "azpar":
        from azpar_magic import jobstore

        jobstore.flush()
    gc.collect()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - t)
    return {"peer": peer, "median_s": statistics.median(times), "tracked": len(gc.get_objects()), "kept": len(out)}


def measure_gc(scratch: str) -> dict:
    rows = {peer: run_child(scratch, "gc", peer) for peer in ("azpar", "pool")}
    a, p = rows["azpar"], rows["pool"]
    print(
        f"  a full collection after {GC_CELLS} maps of {GC_N:,}: azpar's client {a['median_s'] * 1e3:.2f} ms, "
        f"the Pool's {p['median_s'] * 1e3:.2f} ms, azpar / Pool {a['median_s'] / p['median_s']:.2f}",
        flush=True,
    )
    return rows


ITEMS_ARRAYS, ITEMS_MB, ITEMS_RUNS = 20, 20, 5


def total(a):
    """items' mapped function of the Pool peer."""
    return float(a.sum())


def child_items(peer: str) -> dict:
    import numpy as np

    arrays = [np.full(ITEMS_MB * 125_000, float(i)) for i in range(ITEMS_ARRAYS)]
    expected = [total(a) for a in arrays]
    if peer == "pool":
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(2)
        pool.map(abs, range(100))  # warm pool
        call = lambda: pool.map(total, arrays)  # noqa: E731
    else:
        import azpar_magic

        azpar_magic.run("for x in range(10)", "x", {}, workers=2).result()  # warm pool
        ns = {"arrays": arrays}
        call = lambda: azpar_magic.run("for a in arrays", "float(a.sum())", ns, workers=2).result()  # noqa: E731

    def flushed() -> int:
        if peer == "azpar":
            from azpar_magic import jobstore

            jobstore.flush(120)
        return _store_bytes()

    runs, sizes = [], [flushed()]
    for _ in range(ITEMS_RUNS):
        m = _measured(call)
        if m.pop("out") != expected:
            raise RuntimeError(f"{peer}: wrong result")
        runs.append(m)
        sizes.append(flushed())  # (after the timed call: the next run starts with the store caught up)
    return {
        "peer": peer,
        "median_s": statistics.median(r["seconds"] for r in runs),
        "peak_growth": max(r["peak_growth"] for r in runs),
        "store_bytes_first": sizes[1] - sizes[0],
        "store_bytes_later": (sizes[-1] - sizes[1]) / max(1, ITEMS_RUNS - 1),
    }


def full_array(i):
    """The values loop's mapped function of the Pool peer: 10 MB."""
    import numpy as np

    return np.full(1_250_000, float(i))


def _trimmed_rss() -> int:
    """The RSS once malloc gave its free memory back (glibc keeps freed 10 MB blocks otherwise: its
    mmap threshold grows to the largest block freed, so RSS would count memory nobody holds)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return _status_kb("VmRSS") * 1024


def child_values(peer: str) -> dict:
    import numpy as np

    if peer == "pool":
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(2)
        pool.map(abs, range(100))
        call = lambda: pool.map(full_array, range(ITEMS_ARRAYS))  # noqa: E731
    else:
        import azpar_magic

        azpar_magic.run("for x in range(10)", "x", {}, workers=2).result()
        ns = {"np": np}
        call = lambda: azpar_magic.run(  # noqa: E731
            f"for i in range({ITEMS_ARRAYS})", "np.full(1_250_000, float(i))", ns, workers=2
        ).result()
    base, times = _trimmed_rss(), []
    for _ in range(8):
        t = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t)
        if float(out[-1][0]) != ITEMS_ARRAYS - 1:
            raise RuntimeError(f"{peer}: wrong result")
        del out
    if peer == "azpar":
        from azpar_magic import jobstore

        jobstore.flush(120)
    return {"peer": peer, "median_s": statistics.median(times), "held": _trimmed_rss() - base}


def measure_items(scratch: str) -> dict:
    rows = {peer: run_child(scratch, "items", peer) for peer in ("azpar", "pool")}
    back = {peer: run_child(scratch, "values", peer) for peer in ("azpar", "pool")}
    a, p = back["azpar"], back["pool"]
    print(
        f"  returning {ITEMS_ARRAYS} arrays of 10 MB, 8 runs: azpar {a['median_s']:.2f} s, Pool {p['median_s']:.2f} s "
        f"(azpar / Pool {a['median_s'] / p['median_s']:.2f}); held after, results dropped: azpar "
        f"{a['held'] / 1e6:,.0f} MB, Pool {p['held'] / 1e6:,.0f} MB",
        flush=True,
    )
    rows["values"] = back
    a, p = rows["azpar"], rows["pool"]
    print(
        f"  {ITEMS_ARRAYS} arrays of {ITEMS_MB} MB: azpar {a['median_s']:.2f} s, Pool {p['median_s']:.2f} s "
        f"(azpar / Pool {a['median_s'] / p['median_s']:.2f}); peak over baseline azpar {a['peak_growth'] / 1e6:,.0f} MB, "
        f"Pool {p['peak_growth'] / 1e6:,.0f} MB; the job store grew {a['store_bytes_first'] / 1e6:,.0f} MB at the first "
        f"run, {a['store_bytes_later'] / 1e6:,.1f} MB at each later one",
        flush=True,
    )
    return rows


FAILS_N, FAILS_RUNS = 10_000, 15


def inverse_or_error(x):
    """fails' mapped function of the Pool peer: the loop's failures come back as their exceptions, as
    ``--errors pass`` gives them."""
    try:
        return 1 / (x % 2)
    except ZeroDivisionError as exc:
        return exc


def child_fails(peer: str) -> dict:
    """A loop of FAILS_N iterations, every other one failing (ZeroDivisionError), its failures kept in the
    result (``--errors pass``), on a warm pool; and the same loop with no failure, for what failing costs."""
    xs = list(range(FAILS_N))
    if peer == "pool":
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(2)
        pool.map(abs, range(100))  # warm pool
        failing = lambda: pool.map(inverse_or_error, xs)  # noqa: E731
        clean = lambda: pool.map(square, xs)  # noqa: E731
    else:
        import azpar_magic

        azpar_magic.run("for x in range(10)", "x", {}, workers=2).result()  # warm pool
        ns = {"xs": xs}
        failing = lambda: azpar_magic.run("for x in xs", "1 / (x % 2)", ns, workers=2, errors="pass").result()  # noqa: E731
        clean = lambda: azpar_magic.run("for x in xs", "x * x", ns, workers=2).result()  # noqa: E731
    out = failing()
    if [type(v).__name__ for v in out[:2]] != ["ZeroDivisionError", "float"] or "division by zero" not in str(out[0]):
        raise RuntimeError(f"{peer}: wrong result {out[:2]}")
    times, clean_times = [], []
    for _ in range(FAILS_RUNS):
        t = time.perf_counter()
        failing()
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        clean()
        clean_times.append(time.perf_counter() - t)
    return {"peer": peer, "median_s": statistics.median(times), "clean_median_s": statistics.median(clean_times)}


def measure_fails(scratch: str) -> dict:
    rows = {peer: run_child(scratch, "fails", peer) for peer in ("azpar", "pool")}
    a, p = rows["azpar"], rows["pool"]
    print(
        f"  {FAILS_N:,} iterations, every other one failing, failures kept (--errors pass): azpar "
        f"{a['median_s'] * 1e3:.1f} ms, Pool {p['median_s'] * 1e3:.1f} ms (azpar / Pool "
        f"{a['median_s'] / p['median_s']:.1f}); with no failure: azpar {a['clean_median_s'] * 1e3:.1f} ms, "
        f"Pool {p['clean_median_s'] * 1e3:.1f} ms",
        flush=True,
    )
    return rows


KINDS_N, KINDS_RUNS = 10_000, 9


def _kinds_data() -> dict:
    """What each kinds loop iterates over, made the same way in both peers' processes."""
    import datetime
    import pathlib

    import numpy as np
    import pandas as pd

    return {
        "xs": np.linspace(0, 1, KINDS_N),
        "ys": np.arange(KINDS_N),
        "M": np.arange(KINDS_N * 3, dtype=np.float64).reshape(KINDS_N, 3),
        "df": pd.DataFrame({"a": range(KINDS_N), "b": range(KINDS_N)}),
        "days": [datetime.date(2000, 1, 1) + datetime.timedelta(days=i) for i in range(KINDS_N)],
        "hours": pd.date_range("2000-01-01", periods=KINDS_N, freq="h", tz="UTC"),
        "paths": [pathlib.Path(f"data/part-{i:05d}.csv") for i in range(KINDS_N)],
        "configs": [Config(lr=i * 0.001, depth=i % 7) for i in range(KINDS_N)],
        "Config": Config,  # (defined in the notebook: its namespace has it)
    }


@dataclasses.dataclass
class Config:
    """A notebook's own dataclass (this module is the children's __main__, as a notebook is the kernel's)."""

    lr: float
    depth: int
    name: str = "model"


def kind_scalar(x):
    return x * 2


def kind_pair(pair):
    return pair[0] * pair[1]


def kind_row(row):
    return row.sum()


def kind_tuple_row(row):
    return row.a + row.b


def kind_day(day):
    return day.weekday()


def kind_hour(stamp):
    return stamp.hour


def kind_path(path):
    return path.stem


def kind_config(cfg):
    return cfg.lr * cfg.depth


# name: (the loop, the body, the Pool's function, what it maps over): loops over what notebooks
# iterate (numpy scalars, a matrix's rows, two arrays zipped, a DataFrame's itertuples(), dates,
# pd.date_range's Timestamps, paths, instances of the notebook's own dataclass).
KINDS = {
    "np.linspace scalars": ("for x in xs", "x * 2", kind_scalar, lambda d: d["xs"]),
    "zip of two arrays": ("for a, b in zip(xs, ys)", "a * b", kind_pair, lambda d: zip(d["xs"], d["ys"])),
    "rows of a matrix": ("for row in M", "row.sum()", kind_row, lambda d: d["M"]),
    "df.itertuples()": ("for row in df.itertuples()", "row.a + row.b", kind_tuple_row, lambda d: d["df"].itertuples()),
    "dates": ("for day in days", "day.weekday()", kind_day, lambda d: d["days"]),
    "pd.date_range": ("for stamp in hours", "stamp.hour", kind_hour, lambda d: d["hours"]),
    "paths": ("for path in paths", "path.stem", kind_path, lambda d: d["paths"]),
    "notebook dataclasses": ("for cfg in configs", "cfg.lr * cfg.depth", kind_config, lambda d: d["configs"]),
}


def child_kinds(peer: str) -> dict:
    """Each KINDS loop on a warm pool: azpar's cell (through run(), the magic's engine) or a fork Pool's
    map of the same function over the same iterable; the medians of KINDS_RUNS runs."""
    data = _kinds_data()
    if peer == "pool":
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(2)
        pool.map(abs, range(100))  # warm pool
    else:
        import azpar_magic

        azpar_magic.run("for x in range(10)", "x", {}, workers=2).result()  # warm pool
    out: dict = {}
    for name, (loop, body, fn, iterable) in KINDS.items():
        if peer == "pool":
            call = functools.partial(lambda f, it: pool.map(f, it(data)), fn, iterable)
        else:
            call = functools.partial(lambda lp, bd: azpar_magic.run(lp, bd, data, workers=2).result(), loop, body)
        try:
            first = call()
        except Exception as exc:  # a fork Pool cannot pickle df.itertuples()'s rows (their class is made at run time)
            out[name] = f"{type(exc).__name__}: {exc}"
            continue
        if first != [fn(value) for value in iterable(data)]:  # the same values as the loop run here
            raise RuntimeError(f"{peer}: {name}: wrong result")
        out[name] = _median_time(call, KINDS_RUNS)
    return {"peer": peer, "medians": out}


def _median_time(call, runs: int) -> float:
    """The median of ``runs`` timed calls of ``call``, in seconds."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure_kinds(scratch: str) -> dict:
    rows = {peer: run_child(scratch, "kinds", peer) for peer in ("azpar", "pool")}
    for name in KINDS:
        a, p = rows["azpar"]["medians"][name], rows["pool"]["medians"][name]
        if isinstance(a, str):
            raise RuntimeError(f"azpar: {name}: {a}")
        pool = f"Pool {p * 1e3:.1f} ms (azpar / Pool {a / p:.2f})" if not isinstance(p, str) else f"Pool cannot: {p}"
        print(f"  {KINDS_N:,} {name}: azpar {a * 1e3:.1f} ms, {pool}", flush=True)
    return rows


RETURNS_N, RETURNS_RUNS = 10_000, 7


def returns_series(x):
    import pandas as pd

    return pd.Series({"i": x, "v": x * 0.5})


def returns_frame(x):
    import pandas as pd

    return pd.DataFrame({"i": [x, x + 1], "v": [x * 0.5, x * 1.5]})


def returns_record(x):
    import numpy as np

    return {"i": x, "mean": np.float64(x) * 2, "std": np.float64(x) ** 0.5}


# name: (the body, the Pool's function): values notebooks return per iteration, to concat or tabulate later.
RETURNS = {
    "a small Series": ("pd.Series({'i': x, 'v': x * 0.5})", returns_series),
    "a small DataFrame": ("pd.DataFrame({'i': [x, x + 1], 'v': [x * 0.5, x * 1.5]})", returns_frame),
    "a dict of numpy scalars": ("{'i': x, 'mean': np.float64(x) * 2, 'std': np.float64(x) ** 0.5}", returns_record),
}


def child_returns(peer: str) -> dict:
    """Each RETURNS loop of RETURNS_N iterations on a warm pool, RETURNS_RUNS times in a row, every result
    dropped (the session keeps azpar's jobs, as a notebook's does); the medians. A fork Pool maps the same
    function."""
    import numpy as np
    import pandas as pd

    xs = list(range(RETURNS_N))
    if peer == "pool":
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(2)
        pool.map(abs, range(100))  # warm pool
    else:
        import azpar_magic

        azpar_magic.run("for x in range(10)", "x", {}, workers=2).result()  # warm pool
    ns = {"xs": xs, "np": np, "pd": pd}
    out: dict = {}
    for name, (body, fn) in RETURNS.items():
        if peer == "pool":
            call = functools.partial(pool.map, fn, xs)
        else:
            call = functools.partial(lambda b: azpar_magic.run("for x in xs", b, ns, workers=2).result(), body)
        got = call()
        if not all(
            pd.Series(a).equals(pd.Series(fn(x))) if not isinstance(a, pd.DataFrame) else a.equals(fn(x))
            for x, a in zip(xs[:50], got)
        ):
            raise RuntimeError(f"{peer}: {name}: wrong result")
        del got
        out[name] = _median_time(call, RETURNS_RUNS)
    return {"peer": peer, "medians": out}


def measure_returns(scratch: str) -> dict:
    rows = {peer: run_child(scratch, "returns", peer) for peer in ("azpar", "pool")}
    for name in RETURNS:
        a, p = rows["azpar"]["medians"][name], rows["pool"]["medians"][name]
        print(
            f"  {RETURNS_N:,} iterations returning {name}: azpar {a * 1e3:.0f} ms, Pool {p * 1e3:.0f} ms "
            f"(azpar / Pool {a / p:.2f})",
            flush=True,
        )
    return rows


def measure_mods(scratch: str) -> dict:
    rows = []
    for modules in MODS_SIZES:
        for peer in ("azpar", "pool"):
            r = run_child(scratch, "mods", peer, str(modules), str(MODS_REPS))
            rows.append(r)
            print(f"  {modules} modules, {peer}: {r['median_s'] * 1e3:.2f} ms a cell", flush=True)
    return {"rows": rows}


def child_ns(mb: float, iterations: int) -> dict:
    """A cell reading an array of ``mb`` MB, then the identical cell once the job store has written
    the first one's namespace file (as a user's second run comes), then the same pair run back to
    back on a fresh array of that size: a cell run again before the store's background thread has
    written the file does not find the kept bytes, and serialises again."""
    import numpy as np

    import azpar_magic
    from azpar_magic import jobstore
    from azpar_magic.run import capture

    serialize, calls = capture.serialize_inspected, [0]

    def counted(namespace):  # whether a cell serialised its namespace or reused the kept bytes
        calls[0] += 1
        return serialize(namespace)

    capture.serialize_inspected = counted  # (the capture's one serialisation of a namespace)
    # Warm pool, numpy imported in the workers: what is left is the array's own cost.
    azpar_magic.run("for x in range(4)", "float(tiny.sum())", {"tiny": np.zeros(4)}, workers=2).result()
    big = np.random.default_rng(0).random((10, max(1, int(mb * 1_000_000 / 80))))
    ns = {"big": big}

    def cell() -> dict:
        calls[0] = 0
        m = _measured(
            lambda: azpar_magic.run(f"for x in range({iterations})", "float(big[x % 10].sum())", ns, workers=2).result()
        )
        got, expected = m.pop("out"), [float(ns["big"][x % 10].sum()) for x in range(iterations)]
        if len(got) != iterations or any(abs(g - e) > 1e-9 * abs(e) for g, e in zip(got, expected)):
            raise RuntimeError(f"wrong result at {mb} MB")
        m["serialised"] = calls[0]
        return m

    def flushed() -> float:
        t = time.perf_counter()
        jobstore.flush()
        return time.perf_counter() - t

    out: dict = {"mb": mb, "array_bytes": int(big.nbytes), "first": cell()}
    w0 = _tree_written()
    out["store_flush_s"] = flushed()
    out["first"]["written_by_store"] = _tree_written() - w0  # the job store's own copy, written after the cell
    out["second"] = cell()
    ns["big"] = big + 1.0  # a new array of the same size, run twice at once
    del big
    out["at_once_first"], out["at_once"] = cell(), cell()
    flushed()
    return out


# ----------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------


def _isolated_env(scratch: str) -> dict:
    """This environment without AZPAR_* settings (cells run on the local pool), a private job store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZPAR_")}
    for name in ("ipython", "config", "cwd"):  # not the store: azpar creates it 0700 (it refuses a wider one)
        os.makedirs(os.path.join(scratch, name), exist_ok=True)
    env.update(
        AZPAR_JOB_STORE=os.path.join(scratch, "store"),
        IPYTHONDIR=os.path.join(scratch, "ipython"),
        XDG_CONFIG_HOME=os.path.join(scratch, "config"),
    )
    env.pop("PYTHONSTARTUP", None)
    if ROOT:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


def run_child(scratch: str, *args: str) -> dict:
    """One measurement in a fresh child process; its last stdout line is the JSON result."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", *args]
    proc = subprocess.run(
        cmd,
        cwd=os.path.join(scratch, "cwd"),
        env=_isolated_env(scratch),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_turns(scratch: str, n: int, reps: int, chunk: int | None = None) -> dict:
    """azpar and a fork Pool taking turns, a millisecond apart, each in a child process of its own:
    both meet the same moments of a shared machine, and neither meets the other's memory. (Both in
    one process, each call met the memory the other peer had just freed or kept: one way azpar's
    call freed the Pool's 10,000 new ints and faulted their pages in again, ~140 minor faults a
    call, and the other way the Pool's did, ~95; Pool / azpar moved from 0.83 to 0.95 with that alone.)"""
    procs = {}
    try:
        for peer in ("azpar", "pool"):
            procs[peer] = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--child", "turns", peer, str(n), str(chunk or 0)],
                cwd=os.path.join(scratch, "cwd"),
                env=_isolated_env(scratch),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            line = procs[peer].stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"turns: the {peer} child did not start: {line!r}")
        r: dict = {"n": n, "reps": reps, "chunk": chunk, "azpar": [], "pool": []}
        for _ in range(reps):
            for peer, proc in procs.items():
                proc.stdin.write("go\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"turns: the {peer} child ended (exit code {proc.wait()})")
                r[peer].append(float(line))
                time.sleep(0.001)
    finally:
        for proc in procs.values():
            try:
                proc.stdin.close()
                proc.wait(timeout=30)
            except Exception:
                proc.kill()
    r["azpar_median_s"], r["pool_median_s"] = statistics.median(r["azpar"]), statistics.median(r["pool"])
    # Means too: a median leaves out the rare turns that pay for what came before them, such as the
    # garbage collector's passes, or azpar letting go of the values of its older jobs.
    r["azpar_mean_s"], r["pool_mean_s"] = statistics.fmean(r["azpar"]), statistics.fmean(r["pool"])
    return r


def measure_alt(scratch: str, reps: int) -> dict:
    r = measure_turns(scratch, ALT_N, reps)
    r["ratio"] = r["pool_median_s"] / r["azpar_median_s"]
    print(
        f"  N={ALT_N:,}, {reps} turns each: azpar {r['azpar_median_s'] * 1e3:.2f} ms, "
        f"Pool {r['pool_median_s'] * 1e3:.2f} ms (medians), Pool / azpar {r['ratio']:.2f}; means "
        f"{r['azpar_mean_s'] * 1e3:.2f} and {r['pool_mean_s'] * 1e3:.2f} ms, "
        f"{r['pool_mean_s'] / r['azpar_mean_s']:.2f}",
        flush=True,
    )
    return r


def measure_tasks_turns(scratch: str, reps: int) -> dict:
    """(a') with the peers taking turns: one peer after the other, a few runs each (the table), ranked
    them 1.04-1.64 in one evening, mostly as the Pool's own time moved (16-24 us a task)."""
    r = measure_turns(scratch, TASKS_N, reps, chunk=1)
    r["ratio"] = r["azpar_median_s"] / r["pool_median_s"]
    print(
        f"  N={TASKS_N:,} one-iteration tasks, {reps} turns each: azpar {r['azpar_median_s'] / TASKS_N * 1e6:.1f} us, "
        f"Pool {r['pool_median_s'] / TASKS_N * 1e6:.1f} us a task (medians), azpar / Pool {r['ratio']:.2f}",
        flush=True,
    )
    return r


def reps_for(n: int, quick: bool) -> int:
    return 1 if quick else (5 if n <= 10_000 else 3)


def measure_n(scratch: str, sizes: list[int], quick: bool, chunk: int | None = None) -> list[dict]:
    rows = []
    for n in sizes:
        row = {"n": n}
        for peer in ("azpar", "pool"):
            r = run_child(scratch, "n", peer, str(n), str(reps_for(n, quick)), str(chunk or 0))
            row[peer] = {
                "median_s": statistics.median(x["seconds"] for x in r["runs"]),
                "peak_growth": max(x["peak_growth"] for x in r["runs"]),
                "rss_before": r["rss_before"],
                "runs": r["runs"],
            }
        row["ratio"] = row["azpar"]["median_s"] / row["pool"]["median_s"]
        rows.append(row)
        print(
            f"  N={n:>9,}: azpar {row['azpar']['median_s'] / n * 1e9:,.0f} ns/it, "
            f"Pool {row['pool']['median_s'] / n * 1e9:,.0f} ns/it, ratio {row['ratio']:.2f}",
            flush=True,
        )
    return rows


def measure_ns(scratch: str, sizes: list[float], iterations: int) -> list[dict]:
    rows = []
    for mb in sizes:
        r = run_child(scratch, "ns", str(mb), str(iterations))
        rows.append(r)
        print(
            f"  {mb:g} MB: first {r['first']['seconds']:.3f} s, second {r['second']['seconds']:.3f} s "
            f"(serialised {r['second']['serialised']}x)",
            flush=True,
        )
    return rows


def measure_kernel(scratch: str) -> dict:
    """A real ipykernel's first cells, timed at the client as a frontend sees them."""
    from jupyter_client.manager import start_new_kernel

    env = _isolated_env(scratch)
    t = time.perf_counter()
    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=120, env=env, cwd=os.path.join(scratch, "cwd"))
    out: dict = {"kernel_start_s": time.perf_counter() - t}

    def cell(code: str) -> tuple[float, str]:
        texts: list = []

        def hook(msg):
            if msg["msg_type"] == "stream":
                texts.append(msg["content"]["text"])

        t0 = time.perf_counter()
        reply = kc.execute_interactive(code, output_hook=hook, timeout=120, allow_stdin=False)
        dt = time.perf_counter() - t0
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"kernel cell failed: {code!r}: {reply['content']}")
        return dt, "".join(texts)

    modules = "import sys as _s; print(len(_s.modules))"
    try:
        out["modules_at_start"] = int(cell(modules)[1])
        out["load_ext_s"] = cell("%load_ext azpar_magic")[0]
        out["modules_after_load_ext"] = int(cell(modules)[1])
        azpar = "%%azpar -o r for x in range(4):\nx"
        out["first_cell_s"] = cell(azpar)[0]
        out["modules_after_first_cell"] = int(cell(modules)[1])
        out["second_cell_s"] = cell(azpar)[0]
        cell("import azpar_magic as _a; _a.session.close()")  # stop the pool: the next cell starts one
        out["new_pool_cell_s"] = cell(azpar)[0]  # the pool's start without the first cell's imports
        if cell("print(r)")[1].strip() != "[0, 1, 2, 3]":
            raise RuntimeError("the kernel's %%azpar cell gave a wrong result")
        out["kernel_peak_kb"] = int(cell("print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])")[1])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)  # a clean exit lets the extension close its pool
    return out


def _mb(b: float) -> str:
    return f"{b / 1e6:,.1f} MB"


def report(res: dict) -> None:
    print()
    print(machine_calibration.format_calibration(res["calibration"]))
    if "n" in res:
        print(
            "\n| N | azpar, ns/iteration | Pool(2).map, ns/iteration | azpar / Pool | kernel peak, azpar | kernel peak, Pool |"
        )
        print("|---|---|---|---|---|---|")
        for r in res["n"]:
            a, p, n = r["azpar"], r["pool"], r["n"]
            print(
                f"| {n:,} | {a['median_s'] / n * 1e9:,.0f} | {p['median_s'] / n * 1e9:,.0f} | {r['ratio']:.2f} | "
                f"+{_mb(a['peak_growth'])} | +{_mb(p['peak_growth'])} |"
            )
    if "tasks" in res:
        print("\n| N one-iteration tasks | azpar, us/task | Pool(2).map(chunksize=1), us/task | azpar / Pool |")
        print("|---|---|---|---|")
        for r in res["tasks"]:
            a, p, n = r["azpar"], r["pool"], r["n"]
            print(f"| {n:,} | {a['median_s'] / n * 1e6:,.1f} | {p['median_s'] / n * 1e6:,.1f} | {r['ratio']:.2f} |")
        r = res["tasks_turns"]
        print(
            f"\n| N one-iteration tasks, turns | azpar median, us/task | Pool median, us/task | azpar / Pool |\n"
            f"|---|---|---|---|\n| {r['n']:,}, {r['reps']} | {r['azpar_median_s'] / r['n'] * 1e6:.1f} | "
            f"{r['pool_median_s'] / r['n'] * 1e6:.1f} | {r['ratio']:.2f} |"
        )
        met = "PASS" if r["ratio"] <= TARGET_TASKS_RATIO else "MISS"
        print(
            f"{met}  (a') {r['n']:,} one-iteration tasks at most {TARGET_TASKS_RATIO}x a Pool's per task, "
            f"taking turns (issue 16): {r['ratio']:.2f}"
        )
    if "alt" in res:
        r = res["alt"]
        print(
            f"\n| N, turns | azpar median | Pool(2).map median | Pool / azpar |\n|---|---|---|---|\n"
            f"| {r['n']:,}, {r['reps']} | {r['azpar_median_s'] * 1e3:.2f} ms | {r['pool_median_s'] * 1e3:.2f} ms | "
            f"{r['ratio']:.2f} |"
        )
        met = "PASS" if r["ratio"] >= TARGET_ALT_RATIO else "MISS"
        print(
            f"{met}  (a) {r['n']:,} trivial iterations no slower than a fork Pool's map (issue 16): "
            f"Pool / azpar {r['ratio']:.2f}"
        )
    if "ns" in res:
        print(
            "\n| array | first cell | identical second cell | written, first (with the store's copy) / second "
            "| client peak, first / second |"
        )
        print("|---|---|---|---|---|")
        for r in res["ns"]:
            f, s, a = r["first"], r["second"], r["at_once"]
            print(
                f"| {r['mb']:g} MB | {f['seconds'] * 1000:,.0f} ms | {s['seconds'] * 1000:,.0f} ms | "
                f"{_mb(f['written'] + f['written_by_store'])} / {_mb(s['written'])} | "
                f"+{_mb(f['peak_growth'])} / +{_mb(s['peak_growth'])} |"
            )
        for r in res["ns"]:
            for key in ("second", "at_once"):
                if r[key]["serialised"]:
                    print(
                        f"note: {r['mb']:g} MB, {key}: the identical cell serialised the namespace again "
                        f"({r[key]['seconds'] * 1000:,.0f} ms)"
                    )
    if "mods" in res:
        rows = {(r["peer"], r["modules"]): r for r in res["mods"]["rows"]}
        print("\n| package beside the notebook | azpar cell | fork Pool map | azpar / Pool | job store, per job |")
        print("|---|---|---|---|---|")
        for modules in MODS_SIZES:
            a, p = rows[("azpar", modules)], rows[("pool", modules)]
            print(
                f"| {modules} modules | {a['median_s'] * 1e3:.2f} ms | {p['median_s'] * 1e3:.2f} ms | "
                f"{a['median_s'] / p['median_s']:.2f} | {a['store_bytes_per_job'] / 1000:,.1f} kB |"
            )
        small, large = rows[("azpar", MODS_SIZES[0])], rows[("azpar", MODS_SIZES[-1])]
        print(
            f"mods: a {MODS_SIZES[-1]}-module package / a {MODS_SIZES[0]}-module one, azpar: "
            f"{large['median_s'] / small['median_s']:.2f}"
        )
    if "kernel" in res:
        k = res["kernel"]
        print(
            f"\nkernel: start {k['kernel_start_s']:.2f} s; %load_ext azpar_magic {k['load_ext_s'] * 1000:,.0f} ms "
            f"(modules {k['modules_at_start']} -> {k['modules_after_load_ext']}); first %%azpar cell "
            f"{k['first_cell_s'] * 1000:,.0f} ms (modules -> {k['modules_after_first_cell']}); the same cell "
            f"again {k['second_cell_s'] * 1000:,.0f} ms; after the pool was closed {k['new_pool_cell_s'] * 1000:,.0f} ms; kernel peak {k['kernel_peak_kb'] / 1000:,.0f} MB"
        )


SCRATCH_FIGURES = {
    "kernel": ("a real ipykernel's first cells", measure_kernel),
    "mods": ("a package of the notebook's own, warm two-iteration cells", measure_mods),
    "gc": ("a full collection in a client that ran many maps", measure_gc),
    "items": ("a loop over large arrays", measure_items),
    "fails": ("a loop whose iterations fail half the time, failures kept", measure_fails),
    "kinds": (
        "loops over what notebooks iterate (numpy scalars and rows, itertuples, dates, Timestamps, paths)",
        measure_kinds,
    ),
    "returns": (
        "loops returning a small Series, DataFrame or dict of numpy scalars, run again and again",
        measure_returns,
    ),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, one repetition")
    ap.add_argument(
        "--only",
        default="n,tasks,alt,ns,kernel,mods,gc,items,fails,kinds,returns",
        help="figures to measure: n, tasks, alt, ns, kernel, mods, gc, items, fails, kinds, returns",
    )
    ap.add_argument("--n", help="iteration counts for n, comma-separated (default 1e2..1e6)")
    ap.add_argument("--mb", help="array sizes in MB for ns, comma-separated (default 1,10,100,500)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "n":
            out = child_n(rest[0], int(rest[1]), int(rest[2]), int(rest[3]) or None)
        elif kind == "turns":
            child_turns(rest[0], int(rest[1]), int(rest[2]) or None)
            return 0
        elif kind == "mods":
            out = child_mods(rest[0], int(rest[1]), int(rest[2]))
        elif kind == "gc":
            out = child_gc(rest[0])
        elif kind == "items":
            out = child_items(rest[0])
        elif kind == "values":
            out = child_values(rest[0])
        elif kind == "fails":
            out = child_fails(rest[0])
        elif kind == "kinds":
            out = child_kinds(rest[0])
        elif kind == "returns":
            out = child_returns(rest[0])
        else:
            out = child_ns(float(rest[0]), int(rest[1]))
        print(json.dumps(out))
        return 0
    params = dict(QUICK if args.quick else FULL)
    if args.n:
        params["n"] = [int(float(x)) for x in args.n.split(",")]
    if args.mb:
        params["mb"] = [float(x) for x in args.mb.split(",")]
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    res: dict = {"calibration": machine_calibration.calibrate(), "quick": args.quick, "params": params}
    print(machine_calibration.format_calibration(res["calibration"]), flush=True)
    scratch = tempfile.mkdtemp(prefix="azpar-scaling-")
    try:
        if "n" in only:
            print("n: trivial iterations, warm pool", flush=True)
            res["n"] = measure_n(scratch, params["n"], args.quick)
        if "tasks" in only:
            print("tasks: one-iteration tasks (chunk size 1), warm pool", flush=True)
            res["tasks"] = measure_n(scratch, params["tasks"], args.quick, chunk=1)
            res["tasks_turns"] = measure_tasks_turns(scratch, params["tasks_turns"])
        if "alt" in only:
            print("alt: trivial iterations, azpar and a Pool taking turns, warm pools", flush=True)
            res["alt"] = measure_alt(scratch, params["alt"])
        if "ns" in only:
            print("ns: an array read by the body", flush=True)
            res["ns"] = measure_ns(scratch, params["mb"], params["iterations"])
        for key, (title, measure) in SCRATCH_FIGURES.items():  # each measured from the scratch folder alone
            if key in only:
                print(f"{key}: {title}", flush=True)
                res[key] = measure(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    res["calibration_after"] = machine_calibration.calibrate()
    report(res)
    print(machine_calibration.format_calibration(res["calibration_after"]).replace("calibration", "calibration after"))
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, time.strftime("scaling-%Y%m%d-%H%M%S.json"))
    with open(path, "w") as fh:
        json.dump(res, fh, indent=1)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
