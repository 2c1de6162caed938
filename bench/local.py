#!/usr/bin/env python
"""Benchmark azpar_magic's local pool against the local parallel maps a user would pick instead.

    python bench/local.py                   # full run (~4-5 min on 2 cores)
    python bench/local.py --quick           # smoke run: fewer repetitions, smaller sizes
    python bench/local.py --only a,c --skip-peers ipyparallel,dask
    AZPAR_BENCH_ROOT=/other/checkout python bench/local.py --only a,c   # that checkout's azpar_magic

One run measures, in the same invocation, azpar_magic (Python API ``azpar_magic.run`` with
``workers=2``, and the ``%%azpar`` cell magic for workload c) and the peers: sequential,
``multiprocessing.Pool`` (fork), joblib (loky), ipyparallel (``LoadBalancedView.map``, 2 engines)
and dask.distributed (``LocalCluster``, 2 processes x 1 thread). Workloads:

  a  10,000 trivial iterations (x*x) on a warm pool; cold = pool start + map where cheap
  b  40 iterations of ~0.2 s pure-Python CPU work; speedup over sequential
  c  a warm two-iteration cell end to end through ``%%azpar`` in a real InteractiveShell,
     against each peer's two-item map on a warm pool
  d  100 iterations reading a 100 MB numpy array global: bytes serialised, namespace loads
     per worker, wall time; peers capture the array in a functools.partial
  d' (azpar, run with d) the identical second cell capturing the same unchanged array: its time,
     bytes written, whether it serialised again, and whether a namespace file or memory was added

Each peer runs in its own child process (``python bench/local.py --child PEER``), so that the
mapped functions are defined in ``__main__`` as in a notebook, pools never compete for the two
cores, and a peer that hangs is killed (with every process it started) and reported as "hang".
Results go to stdout as tables, then to bench/results/local-<timestamp>.json, with a calibration
of the machine measured in the same run (bench/calibration.py) so figures of other days compare.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import calibration as machine_calibration  # bench/calibration.py (this script's folder is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")
# Another checkout whose azpar_magic the children measure (first on their PYTHONPATH): without it
# the installed checkout is measured, whichever checkout's bench/local.py runs.
ROOT = os.environ.get("AZPAR_BENCH_ROOT")

# ----------------------------------------------------------------------------------------------
# The mapped code: defined at the top level of __main__, as a notebook defines it.
# ----------------------------------------------------------------------------------------------


def square(x):
    return x * x


def inc(x):
    return x + 1


def burn(n):
    """Pure-Python CPU work: about n loop steps, holding the GIL throughout."""
    s = 0
    for i in range(n):
        s += i
    return s


def row_sum(big, x):
    return float(big[x % 10].sum())


# Globals the azpar loop bodies read (set by the workloads in the child process).
xs = None
work = None
big = None

# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------

WORKLOADS = ("a", "b", "c", "d")
PEER_ORDER = ("sequential", "azpar", "multiprocessing", "joblib", "dask", "ipyparallel")
PARALLEL_PEERS = ("multiprocessing", "joblib", "dask", "ipyparallel")
ALIASES = {"mp": "multiprocessing", "multiprocessing": "multiprocessing", "joblib": "joblib", "loky": "joblib",
           "ipp": "ipyparallel", "ipyparallel": "ipyparallel", "dask": "dask", "distributed": "dask",
           "seq": "sequential", "sequential": "sequential"}
LABELS = {
    "azpar": "azpar_magic (run, workers=2)",
    "sequential": "sequential (plain for loop)",
    "multiprocessing": "multiprocessing.Pool(2), fork",
    "joblib": "joblib Parallel(n_jobs=2), loky",
    "dask": "dask LocalCluster(2 proc x 1 thr)",
    "ipyparallel": "ipyparallel LoadBalancedView, 2 eng",
}

FULL = dict(a_n=10_000, a_reps=9, a_cold_reps=3, a_budget=30.0,
            b_n=40, b_secs=0.2, b_reps=3, b_budget=30.0, b_ref=6,
            c_runs=2000, c_budget=20.0,
            d_mb=100, d_n=100, d_reps=3, d_budget=25.0, dp_reps=5)
QUICK = dict(a_n=2_000, a_reps=2, a_cold_reps=1, a_budget=10.0,
             b_n=8, b_secs=0.05, b_reps=1, b_budget=10.0, b_ref=4,
             c_runs=5, c_budget=10.0,
             d_mb=20, d_n=20, d_reps=2, d_budget=10.0, dp_reps=3)

# Seconds a child may spend on each step before it is declared hung and killed.
SETUP_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
WORKLOAD_TIMEOUT = {"a": 150.0, "b": 120.0, "c": 90.0, "d": 150.0}

TARGET_B_SPEEDUP = 1.85
TARGET_C_SECONDS = 0.050
TARGET_C_RATIO = 20.0  # issue 16 (c): joblib's warm two-item map / azpar's warm two-iteration cell
TARGET_DP_SECONDS = 0.050  # (d') the identical second cell over the unchanged array
TARGET_DP_MOVED = 1_000_000  # bytes written by the whole process tree: none of the array's


# ----------------------------------------------------------------------------------------------
# Process-tree helpers (psutil comes with ipyparallel and distributed)
# ----------------------------------------------------------------------------------------------


def _psutil():
    try:
        import psutil
        return psutil
    except ImportError:
        return None


def tree_write_bytes() -> int | None:
    """Bytes passed to write() by this process and all its descendants (/proc/PID/io wchar):
    pipes, sockets and files alike, so it counts every hop a payload makes."""
    ps = _psutil()
    if ps is None:
        return None
    me = ps.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.io_counters().write_chars
        except (ps.Error, AttributeError):
            pass
    return total


def loopback_bytes() -> int | None:
    """Bytes sent over the loopback interface, machine-wide (/sys/class/net/lo): what TCP
    peers move between their processes, which wchar does not count (send/sendmsg bypass it)."""
    try:
        with open("/sys/class/net/lo/statistics/tx_bytes") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None


def same_floats(got, expected) -> bool:
    """Equal up to summation-order rounding: numpy's SIMD sums depend on the array's alignment,
    which differs after unpickling in some workers (dask)."""
    import math

    return len(got) == len(expected) and all(math.isclose(g, e, rel_tol=1e-9) for g, e in zip(got, expected))


def tree_sockets() -> dict:
    """The inet sockets of this process tree: where they listen and whether all are loopback."""
    ps = _psutil()
    if ps is None:
        return {"checked": False}
    me = ps.Process()
    listening, peers, loopback = set(), set(), True

    def is_loop(ip: str) -> bool:
        return ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1") or ip.startswith("::ffff:127.")

    for p in [me, *me.children(recursive=True)]:
        try:
            conns = p.net_connections(kind="inet") if hasattr(p, "net_connections") else p.connections(kind="inet")
        except ps.Error:
            continue
        for c in conns:
            if c.laddr:
                if c.status == "LISTEN":
                    listening.add(f"{c.laddr.ip}:{c.laddr.port}")
                loopback &= is_loop(c.laddr.ip)
            if c.raddr:
                peers.add(c.raddr.ip)
                loopback &= is_loop(c.raddr.ip)
    return {"checked": True, "listening": sorted(listening), "remote_ips": sorted(peers), "loopback_only": loopback}


def descendants(pid: int) -> list:
    ps = _psutil()
    if ps is None:
        return []
    try:
        return ps.Process(pid).children(recursive=True)
    except ps.Error:
        return []


# ----------------------------------------------------------------------------------------------
# Peers (child side)
# ----------------------------------------------------------------------------------------------


class Peer:
    name = ""
    cheap_cold = True  # cold start + a full map is cheap enough to measure directly

    def start(self) -> dict:
        return {}

    def map(self, spec: dict) -> list:
        raise NotImplementedError

    def cold(self, spec: dict) -> tuple[float, list]:
        raise NotImplementedError

    def stop(self) -> dict:
        return {}


class Sequential(Peer):
    name = "sequential"
    cheap_cold = False

    def map(self, spec):
        fn = spec["fn"]
        return [fn(x) for x in spec["items"]]


class MultiprocessingFork(Peer):
    name = "multiprocessing"

    def start(self):
        import multiprocessing

        self.ctx = multiprocessing.get_context("fork")
        self.pool = self.ctx.Pool(2)
        return {"start_method": "fork", "python": platform.python_version()}

    def map(self, spec):
        return self.pool.map(spec["fn"], spec["items"])

    def cold(self, spec):
        self.pool.terminate()
        self.pool.join()
        t = time.perf_counter()
        self.pool = self.ctx.Pool(2)
        out = self.pool.map(spec["fn"], spec["items"])
        return time.perf_counter() - t, out

    def stop(self):
        self.pool.terminate()
        self.pool.join()
        return {}


class Joblib(Peer):
    name = "joblib"

    def start(self):
        import joblib

        self.joblib = joblib
        return {"joblib": joblib.__version__}

    def map(self, spec):
        Parallel, delayed = self.joblib.Parallel, self.joblib.delayed
        return Parallel(n_jobs=2, backend="loky")(delayed(spec["fn"])(x) for x in spec["items"])

    def _shutdown(self):
        from joblib.externals.loky import reusable_executor

        executor = reusable_executor._executor
        if executor is not None:
            executor.shutdown(wait=True, kill_workers=True)

    def cold(self, spec):
        self._shutdown()
        t = time.perf_counter()
        out = self.map(spec)
        return time.perf_counter() - t, out

    def stop(self):
        self._shutdown()
        return {}


class IPyParallel(Peer):
    name = "ipyparallel"
    cheap_cold = False

    def start(self):
        import logging

        import ipyparallel

        # controller_ip: the controller listens on loopback only; engines find it there.
        self.cluster = ipyparallel.Cluster(n=2, controller_ip="127.0.0.1", log_level=logging.WARNING)
        self.rc = self.cluster.start_and_connect_sync()
        self.rc.wait_for_engines(2, timeout=90)
        self.view = self.rc.load_balanced_view()
        self.processes = descendants(os.getpid())
        return {"ipyparallel": ipyparallel.__version__, "sockets": tree_sockets()}

    def map(self, spec):
        return self.view.map(spec["fn"], spec["items"], block=True)

    def stop(self):
        procs = descendants(os.getpid()) or getattr(self, "processes", [])
        try:
            self.rc.close()
        finally:
            self.cluster.stop_cluster_sync()
        return _await_exit(procs)


class Dask(Peer):
    name = "dask"
    cheap_cold = False

    def start(self):
        import dask
        import distributed
        from dask.distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                    host="127.0.0.1")
        self.client = Client(self.cluster)
        self.client.wait_for_workers(2, timeout=90)
        # dashboard_address=None turns the bokeh dashboard off; the scheduler still serves its
        # plain HTTP routes (health, metrics) on 127.0.0.1:8787.
        return {"dask": dask.__version__, "distributed": distributed.__version__, "sockets": tree_sockets(),
                "dashboard_loaded": "distributed.dashboard.scheduler" in sys.modules}

    def map(self, spec):
        # pure=False: never let the scheduler hand back a previous run's results by key.
        return self.client.gather(self.client.map(spec["fn"], spec["items"], pure=False))

    def stop(self):
        procs = descendants(os.getpid())
        try:
            self.client.close()
        finally:
            self.cluster.close()
        return _await_exit(procs)


class Azpar(Peer):
    name = "azpar"

    def start(self):
        import azpar_magic

        self.azpar = azpar_magic
        self.last_job = None
        self.loads_seen: dict[int, int] = {}  # worker pid -> cumulative namespace loads last reported
        return {"azpar_magic": azpar_magic.__version__, "from": os.path.dirname(os.path.abspath(azpar_magic.__file__))}

    def map(self, spec):
        job = self.azpar.run(spec["loop"], spec["body"], globals(), workers=2)
        out = job.result()
        self.last_job = job
        self.load_deltas = self._track(job)
        return out

    def _track(self, job) -> dict:
        """Namespace loads each worker did for this job (its cumulative count minus the
        count it reported after the previous job it ran)."""
        deltas = {}
        for node, stats in job.worker_stats.items():
            pid, loads = stats.get("pid"), stats.get("namespace_loads", 0)
            deltas[node] = {"pid": pid, "loads_this_job": loads - self.loads_seen.get(pid, 0), "loads_total": loads}
            self.loads_seen[pid] = loads
        return deltas

    def cold(self, spec):
        self.azpar.session.close()  # stops the pool; the next job starts a fresh one
        t = time.perf_counter()
        out = self.map(spec)
        return time.perf_counter() - t, out

    def stop(self):
        procs = descendants(os.getpid())
        self.azpar.session.close()
        return _await_exit(procs)


PEER_CLASSES = {cls.name: cls for cls in (Sequential, MultiprocessingFork, Joblib, IPyParallel, Dask, Azpar)}


def _await_exit(procs, timeout: float = 10.0) -> dict:
    """Did the processes the peer started end when it was stopped?"""
    ps = _psutil()

    def tracker(p) -> bool:  # multiprocessing's resource tracker lives until its client exits
        try:
            return "multiprocessing.resource_tracker" in " ".join(p.cmdline())
        except Exception:
            return False

    procs = [p for p in procs if not tracker(p)]
    if ps is None or not procs:
        return {"processes": len(procs), "left_running": 0}
    _gone, alive = ps.wait_procs(procs, timeout=timeout)
    left = []
    for p in alive:
        try:
            left.append(" ".join(p.cmdline())[:120])
        except ps.Error:
            pass
    return {"processes": len(procs), "left_running": len(alive), "left": left}


def repeat(fn, reps: int, budget: float) -> tuple[list[float], object]:
    """Up to ``reps`` timed calls; stop early when another would exceed ``budget`` seconds."""
    times, out, begun = [], None, time.perf_counter()
    for i in range(reps):
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        times.append(dt)
        if i + 1 < reps and (time.perf_counter() - begun) + dt > budget:
            break
    return times, out


# ----------------------------------------------------------------------------------------------
# Workloads (child side)
# ----------------------------------------------------------------------------------------------


def workload_a(peer: Peer, P: dict) -> dict:
    global xs
    xs = list(range(P["a_n"]))
    expected = [x * x for x in xs]
    spec = dict(fn=square, items=xs, loop="for x in xs", body="x * x")
    out: dict = {"n": len(xs)}
    ok = True
    if peer.cheap_cold:
        colds = []
        for _ in range(P["a_cold_reps"]):
            dt, res = peer.cold(spec)
            ok &= res == expected
            colds.append(dt)
        out["cold"] = colds
    peer.map(dict(spec, items=xs[:100], loop="for x in xs[:100]"))  # warm-up
    times, res = repeat(lambda: peer.map(spec), P["a_reps"], P["a_budget"])
    out["warm"] = times
    out["ok"] = bool(ok and res == expected)
    if isinstance(peer, Azpar):
        out["tasks"] = len(peer.last_job.tasks)
    return out


def workload_b(peer: Peer, P: dict) -> dict:
    global work
    n = P["burn_n"]
    work = [n] * P["b_n"]
    expected = [n * (n - 1) // 2] * P["b_n"]
    spec = dict(fn=burn, items=work, loop="for n in work", body="burn(n)")
    peer.map(dict(fn=burn, items=[1000] * 4, loop="for n in [1000] * 4", body="burn(n)"))  # warm-up
    # This child's own single-process speed, just before its runs: the machine's speed drifts
    # by several percent over minutes, so this corrects the comparison with the sequential child.
    ref = []
    for _ in range(P["b_ref"]):
        t = time.perf_counter()
        burn(n)
        ref.append(time.perf_counter() - t)
    times, res = repeat(lambda: peer.map(spec), P["b_reps"], P["b_budget"])
    out = {"n": len(work), "burn_n": n, "times": times, "ok": res == expected, "ref_per_item": statistics.median(ref)}
    if isinstance(peer, Azpar):
        out["tasks"] = len(peer.last_job.tasks)
    if isinstance(peer, Sequential):
        # The machine's own ceiling: two forked processes burning half the items each, no IPC.
        out["ceiling_times"], _ = repeat(lambda: _bare_pair(n, P["b_n"]), P["b_reps"], P["b_budget"])
    return out


def _bare_pair(n: int, count: int) -> float:
    t = time.perf_counter()
    pids = []
    for share in (count // 2, count - count // 2):
        pid = os.fork()
        if pid == 0:
            try:
                for _ in range(share):
                    burn(n)
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    return time.perf_counter() - t


def workload_c(peer: Peer, P: dict) -> dict:
    spec = dict(fn=inc, items=[0, 1], loop="for x in range(2)", body="x + 1")
    out: dict = {}
    if isinstance(peer, Azpar):
        # Creating the shell makes its user module sys.modules["__main__"]: put this script's
        # module back afterwards, or later workloads would see their functions as not-__main__
        # (dill would then ship them with this whole module's globals).
        script_main = sys.modules["__main__"]
        try:
            return _workload_c_magic(peer, P, spec, out)
        finally:
            sys.modules["__main__"] = script_main
    peer.map(spec)  # warm-up
    peer.map(spec)
    times, res = repeat(lambda: peer.map(spec), P["c_runs"], P["c_budget"])
    out.update(times=times, ok=res == [1, 2])
    return out


def _workload_c_magic(peer: Peer, P: dict, spec: dict, out: dict) -> dict:
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    loaded = ip.run_cell("%load_ext azpar_magic")
    if not loaded.success:
        raise RuntimeError(f"%load_ext azpar_magic failed: {loaded.error_in_exec or loaded.error_before_exec}")
    cell = "%%azpar -q -o r for x in range(2):\nx + 1"

    def one():
        ip.user_ns.pop("r", None)
        result = ip.run_cell(cell)
        if not result.success:
            raise RuntimeError(f"the %%azpar cell failed: {result.error_in_exec or result.error_before_exec}")
        return ip.user_ns.get("r")

    one()  # warm: starts the magic's pool
    times, res = repeat(one, P["c_runs"], P["c_budget"])
    out.update(times=times, ok=res == [1, 2], how="ip.run_cell(%%azpar -q -o r ...)")

    # What IPython alone costs around a cell magic that does nothing, through the same run_cell:
    # with a fork Pool's two-item map this is the floor of (c), the least any magic could take.
    ip.register_magic_function(lambda line, cell: None, "cell", "azpar_bench_nop")
    nop = cell.replace("%%azpar", "%%azpar_bench_nop", 1)
    ip.run_cell(nop)
    nop_times, _ = repeat(lambda: ip.run_cell(nop), P["c_runs"], P["c_budget"])
    out.update(nop_times=nop_times)
    peer.map(spec)
    api_times, api_res = repeat(lambda: peer.map(spec), P["c_runs"], P["c_budget"])
    out.update(api_times=api_times, api_ok=api_res == [1, 2])
    return out


def workload_d(peer: Peer, P: dict) -> dict:
    global big
    import numpy as np

    rows = int(P["d_mb"] * 1_000_000 / 8 / 10)
    big = np.random.default_rng(0).random((10, rows))
    n = P["d_n"]
    expected = [float(big[x % 10].sum()) for x in range(n)]
    part = functools.partial(row_sum, big)
    spec = dict(fn=part, items=list(range(n)), loop=f"for x in range({n})", body="float(big[x % 10].sum())")
    peer.map(dict(fn=inc, items=[0, 1, 2, 3], loop="for x in range(4)", body="x + 1"))  # warm-up
    out: dict = {"n": n, "array_bytes": int(big.nbytes)}

    def measured(spec_):
        reps, ok, begun = [], True, time.perf_counter()
        for i in range(P["d_reps"]):
            w0, l0 = tree_write_bytes(), loopback_bytes()
            t = time.perf_counter()
            res = peer.map(spec_)
            dt = time.perf_counter() - t
            w1, l1 = tree_write_bytes(), loopback_bytes()
            rep = {"time": dt, "written": (w1 - w0) if w0 is not None and w1 is not None else None,
                   "loopback": (l1 - l0) if l0 is not None and l1 is not None else None}
            if isinstance(peer, Azpar):
                job = peer.last_job
                rep.update(capture_bytes=job.capture.size, codec=job.capture.codec,
                           array_pickled=counter["array"], serialize_calls=counter["calls"],
                           workers=peer.load_deltas)
                counter.update(array=0, calls=0)
            reps.append(rep)
            ok &= same_floats(res, expected)
            if i + 1 < P["d_reps"] and (time.perf_counter() - begun) + dt > P["d_budget"]:
                break
        return reps, bool(ok)

    counter = {"array": 0, "calls": 0}
    if isinstance(peer, Azpar):
        # Instrument (in this process only) how often the capture serialises the namespace and
        # in how many pickling passes the array itself is written (first visit per pass: the C
        # pickler consults reducer_override only for objects not yet in its memo; the dill
        # pickler's save is checked against its memo here).
        import azpar_magic.worker as wire_mod
        from azpar_magic.run import capture as capture_mod

        original_serialize = capture_mod.serialize_inspected  # the capture's one serialisation
        original_override = wire_mod._FastPickler.reducer_override
        dill_pickler = wire_mod._dill_pickler()  # (made on first use: the worker imports dill only when needed)
        original_save = dill_pickler.save

        def counting_override(self, obj):
            if obj is big:
                counter["array"] += 1
            return original_override(self, obj)

        def counting_save(self, obj, save_persistent_id=True):
            if obj is big and id(obj) not in self.memo:
                counter["array"] += 1
            return original_save(self, obj, save_persistent_id)

        def counting_serialize(namespace):
            counter["calls"] += 1
            return original_serialize(namespace)

        capture_mod.serialize_inspected = counting_serialize
        wire_mod._FastPickler.reducer_override = counting_override
        dill_pickler.save = counting_save
        try:
            out["reps"], out["ok"] = measured(spec)
            # The same loop when the body calls a notebook helper, as real notebooks do.
            variant = dict(spec, body="row_sum(big, x)")
            out["variant_body"] = variant["body"]
            out["variant_reps"], out["variant_ok"] = measured(variant)
            # The capture's name order comes from set iteration (it varies with PYTHONHASHSEED):
            # serialise both orders directly to see whether a failed fast pass costs a copy.
            order_check = {}
            for names in (("row_sum", "big"), ("big", "row_sum")):
                counter.update(array=0, calls=0)
                t = time.perf_counter()
                codec, data, _mods = capture_mod.serialize({name: globals()[name] for name in names})
                order_check[",".join(names)] = {"array_pickled": counter["array"], "codec": codec,
                                                "bytes": len(data), "seconds": time.perf_counter() - t}
            out["order_check"] = order_check
            counter.update(array=0, calls=0)
            out["dprime"] = _identical_cell(peer, P, counter)
        finally:
            capture_mod.serialize_inspected = original_serialize
            wire_mod._FastPickler.reducer_override = original_override
            dill_pickler.save = original_save
        return out
    out["reps"], out["ok"] = measured(spec)
    if isinstance(peer, MultiprocessingFork):
        from multiprocessing.reduction import ForkingPickler

        chunksize, extra = divmod(n, 2 * 4)  # Pool.map's own rule for 2 processes
        chunksize += bool(extra)
        chunks = -(-n // chunksize)
        per_chunk = len(ForkingPickler.dumps(part))
        out.update(pickled_per_chunk=per_chunk, chunks=chunks, pickled_total=per_chunk * chunks)
    return out


def _rss() -> int | None:
    ps = _psutil()
    return ps.Process().memory_info().rss if ps is not None else None


def _identical_cell(peer: Peer, P: dict, counter: dict) -> dict:
    """(d') The identical second cell over the unchanged array (a cell run again as it is): what it
    costs beyond its two trivial iterations, what it writes (the whole process tree), whether the
    namespace was serialised again, whether the job store got another namespace file, and how much
    this kernel's memory grew over the repetitions (a kept copy of the array would add its size)."""
    from azpar_magic import jobstore

    spec = dict(fn=None, items=[0, 1], loop="for x in range(2)", body="float(big[x % 10].sum())")
    expected = [float(big[x % 10].sum()) for x in range(2)]
    ok = same_floats(peer.map(spec), expected)  # the first cell: the array is captured and kept
    jobstore.flush()
    folder = jobstore.store_root() / jobstore.NAMESPACES

    def kept() -> set:
        return set(os.listdir(folder)) if folder.is_dir() else set()

    files, rss0 = kept(), _rss()
    reps = []
    for _ in range(P["dp_reps"]):
        counter.update(array=0, calls=0)
        w0 = tree_write_bytes()
        t = time.perf_counter()
        res = peer.map(spec)
        dt = time.perf_counter() - t
        w1 = tree_write_bytes()
        jobstore.flush()
        job = peer.last_job
        reps.append({"time": dt, "written": (w1 - w0) if w0 is not None and w1 is not None else None,
                     "serialize_calls": counter["calls"], "array_pickled": counter["array"],
                     "capture_bytes": job.capture.size, "job_keeps_bytes": len(job.capture.data)})
        ok &= same_floats(res, expected)
    rss1 = _rss()
    return {"reps": reps, "ok": bool(ok), "new_store_files": len(kept() - files),
            "rss_growth": (rss1 - rss0) if rss0 is not None and rss1 is not None else None}


WORKLOAD_FUNCS = {"a": workload_a, "b": workload_b, "c": workload_c, "d": workload_d}


def child_main(args) -> int:
    P = json.loads(args.params)
    report = os.fdopen(args.report_fd, "w", buffering=1)

    def emit(**event):
        report.write(json.dumps(event, default=str) + "\n")
        report.flush()

    peer = PEER_CLASSES[args.child]()
    started = False
    try:
        t = time.perf_counter()
        info = peer.start()
        started = True
        emit(event="ready", start_s=time.perf_counter() - t, info=info)
        for w in args.workloads.split(","):
            emit(event="start", workload=w)
            try:
                data = WORKLOAD_FUNCS[w](peer, P)
                emit(event="result", workload=w, data=data)
            except Exception as exc:
                traceback.print_exc()
                emit(event="error", workload=w, error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        traceback.print_exc()
        emit(event="setup_error", error=f"{type(exc).__name__}: {exc}")
    finally:
        if started:
            try:
                emit(event="stopped", info=peer.stop())
            except Exception as exc:
                traceback.print_exc()
                emit(event="stopped", info={"error": f"{type(exc).__name__}: {exc}"})
    return 0


# ----------------------------------------------------------------------------------------------
# Parent: run the children, guard them, collect their reports
# ----------------------------------------------------------------------------------------------


def _stat_jiffies() -> tuple[int, int] | None:
    """(all, idle) CPU jiffies since boot, summed over CPUs (/proc/stat)."""
    try:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(values), values[3] + (values[4] if len(values) > 4 else 0)


class ForeignLoad:
    """CPU time other processes of the machine used while one peer ran: all busy CPU time
    (/proc/stat) minus what the bench and its children used (getrusage)."""

    def __init__(self):
        import resource

        self.resource = resource
        self.stat0 = _stat_jiffies()
        self.ru0 = self._ours()

    def _ours(self) -> float:
        r = self.resource
        a, b = r.getrusage(r.RUSAGE_SELF), r.getrusage(r.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    def result(self) -> dict | None:
        stat1 = _stat_jiffies()
        if self.stat0 is None or stat1 is None:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        total = (stat1[0] - self.stat0[0]) / tick
        busy = total - (stat1[1] - self.stat0[1]) / tick
        ours = self._ours() - self.ru0
        foreign = max(0.0, busy - ours)
        return {"cpu_seconds_available": total, "busy": busy, "ours": ours, "foreign": foreign,
                "foreign_fraction": foreign / total if total > 0 else 0.0}


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat), before the bench loads them."""
    def sample():
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values), idle
    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def calibrate(seconds: float) -> tuple[int, float]:
    """Loop count for burn() that takes about ``seconds`` on this machine."""
    n = 200_000
    t = time.perf_counter()
    burn(n)
    n = max(1000, int(n * seconds / (time.perf_counter() - t)))
    for _ in range(2):
        samples = []
        for _ in range(3):
            t = time.perf_counter()
            burn(n)
            samples.append(time.perf_counter() - t)
        n = max(1000, int(n * seconds / min(samples)))
    t = time.perf_counter()
    burn(n)
    return n, time.perf_counter() - t


class ChildRunner:
    """Runs one peer's child process, workload by workload, with a deadline per step."""

    def __init__(self, peer: str, workloads: list[str], params: dict, env: dict, logdir: str, scale: float = 1.0):
        self.peer, self.params, self.env, self.cwd, self.scale = peer, params, env, logdir, scale
        self.remaining = list(workloads)
        self.record: dict = {"workloads": {}, "starts": [], "info": {}, "stops": [], "leftover_killed": 0,
                             "log": os.path.join(logdir, f"{peer}.log")}
        self.proc: subprocess.Popen | None = None
        self.known: dict = {}

    def run(self) -> dict:
        load = ForeignLoad()
        while self.remaining:
            self._one_child()
        self.record["foreign_load"] = load.result()
        return self.record

    def _track(self) -> None:
        for p in descendants(self.proc.pid):
            try:
                self.known[(p.pid, p.create_time())] = p
            except Exception:
                pass

    def _kill_tree(self) -> None:
        """SIGKILL the child and everything it started (ipyparallel puts engines in their own
        sessions, so a process-group kill would miss them)."""
        if self.proc is None:
            return
        self._track()
        for p in list(self.known.values()):
            try:
                p.kill()
            except Exception:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        self.proc.wait()

    def _reap_leftovers(self) -> None:
        """Processes the child started that outlive it get a few seconds to exit on their own
        (resource trackers notice their parent is gone), then are killed and counted."""
        ps = _psutil()
        procs = list(self.known.values())
        self.known.clear()
        if ps is None or not procs:
            return
        _gone, alive = ps.wait_procs(procs, timeout=5)
        for p in alive:
            try:
                name = " ".join(p.cmdline())[:120]
                p.kill()
                self.record["leftover_killed"] += 1
                self.record.setdefault("leftovers", []).append(name)
            except ps.Error:
                pass

    def _tail(self, lines: int = 6) -> str:
        try:
            with open(self.record["log"], encoding="utf-8", errors="replace") as fh:
                return " | ".join(fh.read().strip().splitlines()[-lines:])
        except OSError:
            return ""

    def _one_child(self) -> None:
        r, w = os.pipe()
        logf = open(self.record["log"], "ab")
        # The child runs in a scratch folder, as a notebook runs in its own folder: azpar ships
        # .py modules found under the current folder, and from the repository root that would
        # include this script and azpar_magic's own sources.
        cmd = [sys.executable, os.path.abspath(__file__), "--child", self.peer, "--workloads",
               ",".join(self.remaining), "--params", json.dumps(self.params), "--report-fd", str(w)]
        self.proc = subprocess.Popen(cmd, pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=logf,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                                     start_new_session=True)
        os.close(w)
        logf.close()
        phase, current = "setup", None
        deadline = time.monotonic() + SETUP_TIMEOUT * self.scale
        buf = b""
        step_began = time.monotonic()
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._kill_tree()
                    if phase == "setup":
                        self.record["starts"].append({"status": "hang", "after_s": SETUP_TIMEOUT * self.scale})
                        for wl in self.remaining:
                            self.record["workloads"][wl] = {"status": "hang", "detail": "peer did not start"}
                        self.remaining = []
                        log(f"{self.peer}: start HUNG after {SETUP_TIMEOUT * self.scale:.0f} s; killed")
                    elif current is not None:
                        limit = WORKLOAD_TIMEOUT[current] * self.scale
                        self.record["workloads"][current] = {"status": "hang", "detail": f"killed after {limit:.0f} s"}
                        self.remaining.remove(current)
                        log(f"{self.peer}: workload {current} HUNG after {limit:.0f} s; killed (and its processes)")
                    else:
                        self.record["stops"].append({"status": "hang"})
                        log(f"{self.peer}: stop HUNG; killed")
                    break
                ready, _, _ = select.select([r], [], [], min(left, 1.0))
                self._track()
                if not ready:
                    continue
                data = os.read(r, 1 << 16)
                if not data:
                    break  # the child closed its report pipe: it is exiting
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    event = json.loads(line)
                    kind = event["event"]
                    now = time.monotonic()
                    if kind == "ready":
                        phase = "run"
                        self.record["starts"].append({"status": "ok", "start_s": event["start_s"]})
                        self.record["info"] = event.get("info", {})
                        deadline = now + STOP_TIMEOUT * self.scale
                        log(f"{self.peer}: started in {event['start_s']:.2f} s")
                    elif kind == "setup_error":
                        self.record["starts"].append({"status": "error", "error": event["error"]})
                        for wl in self.remaining:
                            self.record["workloads"][wl] = {"status": "error", "detail": "start: " + event["error"]}
                        self.remaining = []
                        log(f"{self.peer}: could not start: {event['error']}")
                    elif kind == "start":
                        current = event["workload"]
                        step_began = now
                        deadline = now + WORKLOAD_TIMEOUT[current] * self.scale
                    elif kind in ("result", "error"):
                        wl = event["workload"]
                        if kind == "result":
                            self.record["workloads"][wl] = {"status": "ok", **event["data"]}
                        else:
                            self.record["workloads"][wl] = {"status": "error", "detail": event["error"]}
                        if wl in self.remaining:
                            self.remaining.remove(wl)
                        current = None
                        deadline = now + STOP_TIMEOUT * self.scale
                        log(f"{self.peer}: workload {wl} {'done' if kind == 'result' else 'FAILED: ' + event['error']}"
                            f" in {now - step_began:.1f} s")
                    elif kind == "stopped":
                        self.record["stops"].append({"status": "ok", **event.get("info", {})})
        finally:
            os.close(r)
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._kill_tree()
        if current is not None and current in self.remaining:  # the child died mid-workload
            detail = f"child exited with code {self.proc.returncode}: {self._tail()}"
            self.record["workloads"][current] = {"status": "error", "detail": detail}
            self.remaining.remove(current)
            log(f"{self.peer}: workload {current} FAILED: {detail}")
        elif phase == "setup" and self.remaining:
            detail = f"child exited before starting (code {self.proc.returncode}): {self._tail()}"
            for wl in self.remaining:
                self.record["workloads"][wl] = {"status": "error", "detail": detail}
            self.remaining = []
        self._reap_leftovers()
        self.proc = None


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def fmt_t(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms" if seconds < 0.1 else f"{seconds * 1e3:.0f} ms"
    return f"{seconds:.2f} s"


def fmt_b(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_ratio(peer: float | None, ours: float | None) -> str:
    if peer is None or ours is None or ours <= 0:
        return "-"
    r = peer / ours
    if r < 0.1:
        return f"{r:.2g}x"
    return f"{r:.2f}x" if r < 100 else f"{r:.0f}x"


def _med(values):
    return statistics.median(values) if values else None


def summarise(results: dict, params: dict) -> dict:
    """Per peer and workload: the figures the tables and targets use (None when missing)."""
    S: dict = {}
    for peer, rec in results.items():
        s: dict = {"start_s": next((st["start_s"] for st in rec["starts"] if st.get("status") == "ok"), None)}
        for wl in WORKLOADS:
            d = rec["workloads"].get(wl)
            s[wl + "_status"] = None if d is None else (d["status"] if d["status"] != "ok" or d.get("ok", True)
                                                        else "wrong result")
            s[wl + "_detail"] = None if d is None else d.get("detail")
        a = rec["workloads"].get("a", {})
        if a.get("status") == "ok":
            s.update(a_min=min(a["warm"]), a_med=_med(a["warm"]), a_runs=len(a["warm"]),
                     a_cold_min=min(a["cold"]) if a.get("cold") else None,
                     a_cold_med=_med(a.get("cold")), a_cold_runs=len(a.get("cold") or []), a_tasks=a.get("tasks"))
        b = rec["workloads"].get("b", {})
        if b.get("status") == "ok":
            s.update(b_min=min(b["times"]), b_med=_med(b["times"]), b_runs=len(b["times"]), b_tasks=b.get("tasks"))
            if b.get("ref_per_item"):
                s["b_local_speedup"] = b["ref_per_item"] * b["n"] / min(b["times"])
            if b.get("ceiling_times"):
                s.update(b_ceiling_min=min(b["ceiling_times"]), b_ceiling_med=_med(b["ceiling_times"]),
                         b_ceiling_runs=len(b["ceiling_times"]))
                s["b_ceiling_local"] = b["ref_per_item"] * b["n"] / min(b["ceiling_times"])
        c = rec["workloads"].get("c", {})
        if c.get("status") == "ok":
            s.update(c_min=min(c["times"]), c_med=_med(c["times"]), c_runs=len(c["times"]))
            if c.get("api_times"):
                s.update(c_api_min=min(c["api_times"]), c_api_med=_med(c["api_times"]))
            if c.get("nop_times"):
                s.update(c_nop_min=min(c["nop_times"]), c_nop_med=_med(c["nop_times"]))
        d = rec["workloads"].get("d", {})
        if d.get("status") == "ok":
            times = [r["time"] for r in d["reps"]]
            s.update(d_min=min(times), d_med=_med(times), d_runs=len(times), d_moved=fmt_moved(d["reps"]),
                     d_array=d["array_bytes"], d_pickled=d.get("pickled_total"), d_chunks=d.get("chunks"),
                     d_per_chunk=d.get("pickled_per_chunk"))
            if peer == "azpar":
                s["d_reps"] = d["reps"]
                s["d_variant_reps"] = d.get("variant_reps")
                s["d_variant_body"] = d.get("variant_body")
                s["d_order_check"] = d.get("order_check")
                s["d_prime"] = d.get("dprime")
        S[peer] = s
    seq = S.get("sequential", {})
    for s in S.values():
        if s.get("b_min") and seq.get("b_min"):
            s["b_speedup"] = seq["b_min"] / s["b_min"]
    return S


def fmt_moved(reps) -> str:
    """Per run: bytes written to pipes/files by the peer's processes + loopback TCP bytes."""
    parts = []
    for r in reps or []:
        w, lo = r.get("written"), r.get("loopback")
        if w is None and lo is None:
            continue
        parts.append(f"{fmt_b(w)} + {fmt_b(lo)} lo")
    return ", ".join(parts) or "-"


def cell(s: dict, wl: str, text: str) -> str:
    status = s.get(wl + "_status")
    if status is None:
        return "-"
    if status != "ok":
        return status
    return text


def _loads_ok(reps) -> tuple[bool, str]:
    worst, text = 0, []
    for rep in reps or []:
        per = rep.get("workers") or {}
        loads = [v["loads_this_job"] for v in per.values()]
        worst = max([worst, *loads])
        text.append("/".join(str(v) for v in loads) or "?")
    return worst <= 1 and bool(reps), ", ".join(text)


def _c_floor(S: dict) -> dict | None:
    """The least a warm two-iteration cell can cost on this machine: IPython's own work around a cell
    magic that does nothing, plus the round trip of a fork Pool's two-item map (no capture, no job,
    no store). joblib / floor is the largest (c) ratio any pool-backed magic could show in this run."""
    nop = S.get("azpar", {}).get("c_nop_med")
    pool = S.get("multiprocessing", {}).get("c_med")
    joblib_c = S.get("joblib", {}).get("c_med")
    if nop is None or pool is None:
        return None
    floor = nop + pool
    return dict(nop=nop, pool=pool, floor=floor, ratio=joblib_c / floor if joblib_c else float("nan"))


def render(results: dict, params: dict, meta: dict) -> tuple[str, dict, dict]:
    S = summarise(results, params)
    peers = [p for p in PEER_ORDER if p in S]
    A = S.get("azpar", {})
    lines: list[str] = []
    out = lines.append
    W = 38

    out(f"azpar_magic local-pool benchmark: {meta['cpus']} CPUs, Python {meta['python']}, "
        f"{'QUICK smoke run' if meta['quick'] else 'full run'}, {meta['when']}")
    if meta.get("calibration"):
        out(machine_calibration.format_calibration(meta["calibration"]) + " (measured at the start of this run)")
    out("Each peer ran in its own child process with the mapped functions defined in __main__ "
        "(as in a notebook).")
    for key, when_ in (("cpu_busy_before", "before"), ("cpu_busy_after", "after")):
        busy = meta.get(key)
        if busy is not None and busy > 0.10:
            out(f"WARNING: {busy:.0%} of the CPUs were busy {when_} the run (other processes): figures are unreliable.")
    noisy = [f"{p} ({results[p]['foreign_load']['foreign_fraction']:.0%})" for p in results
             if (results[p].get("foreign_load") or {}).get("foreign_fraction", 0) > 0.05]
    if noisy:
        out("WARNING: other processes used more than 5% of the CPUs while these peers ran: " + ", ".join(noisy)
            + ". Their figures are pessimistic; rerun on an idle machine.")
    out("")

    if "a" in meta["workloads"]:
        out(f"(a) {params['a_n']:,} trivial iterations (x*x), warm pool: min / median of up to {params['a_reps']} "
            f"runs; cold = pool start + the same map")
        out(f"  {'peer':<{W}} {'warm min':>9} {'warm med':>9} {'runs':>4} {'cold (start+map)':>18} "
            f"{'med/azpar':>9}  notes")
        for p in peers:
            s = S[p]
            if s.get("a_status") != "ok":
                out(f"  {LABELS[p]:<{W}} {cell(s, 'a', ''):>9}  {s.get('a_detail') or ''}")
                continue
            if s.get("a_cold_min") is not None:
                cold = f"{fmt_t(s['a_cold_med'])} (n={s['a_cold_runs']})"
            elif p == "sequential":
                cold = "-"
            else:
                cold = f"~{fmt_t((s.get('start_s') or 0) + s['a_med'])} (est.)"
            notes = []
            if p == "azpar" and s.get("a_tasks"):
                notes.append(f"{s['a_tasks']} tasks")
            if p in ("ipyparallel", "dask"):
                notes.append(f"one task per item; start {fmt_t(s.get('start_s'))}; cold = start + warm")
            out(f"  {LABELS[p]:<{W}} {fmt_t(s['a_min']):>9} {fmt_t(s['a_med']):>9} {s['a_runs']:>4} {cold:>18} "
                f"{fmt_ratio(s['a_med'], A.get('a_med')):>9}  {'; '.join(notes)}")
        out("")

    if "b" in meta["workloads"]:
        out(f"(b) {params['b_n']} iterations of ~{params['b_secs']} s pure-Python CPU work (burn({params['burn_n']:,}), "
            f"calibrated {params['burn_calibrated_s']:.3f} s): best of up to {params['b_reps']} runs")
        out(f"    speedup = best sequential run / best run; 'vs own 1-core' = {params['b_n']} x the peer child's "
            "single-process time per item, measured just before its runs / best run (corrects for the machine's "
            "speed drift)")
        out(f"  {'peer':<{W}} {'best':>9} {'median':>9} {'runs':>4} {'speedup vs seq':>15} {'time/azpar':>10} "
            f"{'vs own 1-core':>13}")
        for p in peers:
            s = S[p]
            if s.get("b_status") != "ok":
                out(f"  {LABELS[p]:<{W}} {cell(s, 'b', ''):>9}  {s.get('b_detail') or ''}")
                continue
            sp = f"{s['b_speedup']:.2f}" if s.get("b_speedup") else "-"
            local = f"{s['b_local_speedup']:.2f}" if s.get("b_local_speedup") and p != "sequential" else "-"
            out(f"  {LABELS[p]:<{W}} {fmt_t(s['b_min']):>9} {fmt_t(s['b_med']):>9} {s['b_runs']:>4} {sp:>15} "
                f"{fmt_ratio(s['b_min'], A.get('b_min')):>10} {local:>13}")
            if p == "sequential" and s.get("b_ceiling_min"):
                out(f"  {'  ceiling: 2 bare forked processes':<{W}} {fmt_t(s['b_ceiling_min']):>9} "
                    f"{fmt_t(s['b_ceiling_med']):>9} {s['b_ceiling_runs']:>4} "
                    f"{s['b_min'] / s['b_ceiling_min']:>15.2f} {'':>10} {s['b_ceiling_local']:>13.2f}"
                    f"  (half the items each, no IPC: the machine's limit)")
        out("")

    if "c" in meta["workloads"]:
        out(f"(c) warm two-iteration cell: azpar = ip.run_cell('%%azpar -q -o r for x in range(2):\\nx + 1') "
            f"in a real InteractiveShell; peers = 2-item map on a warm pool; up to {params['c_runs']} runs")
        out(f"  {'peer':<{W}} {'min':>9} {'median':>9} {'runs':>4} {'med/azpar':>9}")
        for p in peers:
            s = S[p]
            if s.get("c_status") != "ok":
                out(f"  {LABELS[p]:<{W}} {cell(s, 'c', ''):>9}  {s.get('c_detail') or ''}")
                continue
            label = "azpar_magic %%azpar cell (magic)" if p == "azpar" else LABELS[p]
            out(f"  {label:<{W}} {fmt_t(s['c_min']):>9} {fmt_t(s['c_med']):>9} {s['c_runs']:>4} "
                f"{fmt_ratio(s['c_med'], A.get('c_med')):>9}")
            if p == "azpar" and s.get("c_api_med") is not None:
                out(f"  {'  (same loop via azpar_magic.run)':<{W}} {fmt_t(s['c_api_min']):>9} "
                    f"{fmt_t(s['c_api_med']):>9}")
            if p == "azpar" and s.get("c_nop_med") is not None:
                out(f"  {'  (a cell magic that does nothing)':<{W}} {fmt_t(s['c_nop_min']):>9} "
                    f"{fmt_t(s['c_nop_med']):>9}")
        floor = _c_floor(S)
        if floor is not None:
            out(f"  floor: IPython around a no-op cell magic {fmt_t(floor['nop'])} + a fork Pool's two-item map "
                f"{fmt_t(floor['pool'])} = {fmt_t(floor['floor'])} (medians); joblib / floor = "
                f"{floor['ratio']:.1f}: no magic that also maps on a pool can beat joblib by more here")
        out("")

    if "d" in meta["workloads"]:
        out(f"(d) {params['d_n']} iterations reading a {params['d_mb']} MB numpy array global "
            f"(azpar body: float(big[x % 10].sum())); peers map functools.partial(row_sum, big)")
        out("    moved = per run, bytes the peer's processes passed to write() (pipes, files: /proc/PID/io wchar) "
            "+ bytes sent over loopback TCP (\"lo\", machine-wide)")
        out(f"  {'peer':<{W}} {'min':>9} {'median':>9} {'runs':>4} {'med/azpar':>9}  bytes")
        for p in peers:
            s = S[p]
            if s.get("d_status") != "ok":
                out(f"  {LABELS[p]:<{W}} {cell(s, 'd', ''):>9}  {s.get('d_detail') or ''}")
                continue
            extra = f"moved {s.get('d_moved')}"
            if p == "azpar":
                reps = s["d_reps"]
                _, loads = _loads_ok(reps)
                extra = (f"serialised {fmt_b(reps[0]['capture_bytes'])}/job ({reps[0]['codec']}), array pickled "
                         f"{'/'.join(str(r['array_pickled']) for r in reps)}x per job, namespace loads per worker "
                         f"per job {loads}; {extra}")
            if p == "multiprocessing" and s.get("d_pickled"):
                extra = (f"pickled {fmt_b(s['d_per_chunk'])} x {s['d_chunks']} chunks = {fmt_b(s['d_pickled'])} "
                         f"per map; {extra}")
            if p == "joblib":
                extra += " (array auto-memmapped per call)"
            out(f"  {LABELS[p]:<{W}} {fmt_t(s['d_min']):>9} {fmt_t(s['d_med']):>9} {s['d_runs']:>4} "
                f"{fmt_ratio(s['d_med'], A.get('d_med')):>9}  {extra}")
            if p == "azpar" and s.get("d_variant_reps"):
                v = s["d_variant_reps"]
                times = [r["time"] for r in v]
                _, vloads = _loads_ok(v)
                out(f"  {'  variant: body ' + s['d_variant_body']:<{W}} {fmt_t(min(times)):>9} "
                    f"{fmt_t(_med(times)):>9} {len(times):>4} {'':>9}  serialised {fmt_b(v[0]['capture_bytes'])}/job "
                    f"({v[0]['codec']}), array pickled {'/'.join(str(r['array_pickled']) for r in v)}x per job, "
                    f"namespace loads per worker per job {vloads}; moved {fmt_moved(v)}")
            dp = s.get("d_prime") if p == "azpar" else None
            if dp and dp.get("reps"):
                times = [r["time"] for r in dp["reps"]]
                label = "  (d') identical second cell, 2 its"
                out(f"  {label:<{W}} {fmt_t(min(times)):>9} {fmt_t(_med(times)):>9} "
                    f"{len(times):>4} {'':>9}  serialised {'/'.join(str(r['serialize_calls']) for r in dp['reps'])}x, "
                    f"written {'/'.join(fmt_b(r['written']) for r in dp['reps'])}, new store files "
                    f"{dp['new_store_files']}, kernel memory {fmt_b(dp.get('rss_growth'))} over the runs, job keeps "
                    f"{fmt_b(max(r['job_keeps_bytes'] for r in dp['reps']))}")
        out("")

    # Summary of ratios
    out("Ratios: peer time / azpar time (>1 = azpar faster; <1 = the peer is faster). (a) warm and (c), (d) "
        "on medians, (b) on best runs")
    head = f"  {'peer':<{W}} {'(a) warm':>9} {'(a) cold':>9} {'(b) CPU':>9} {'(c) 2-item':>10} {'(d) array':>9}"
    out(head)
    for p in peers:
        if p == "azpar":
            continue
        s = S[p]
        a_cold_peer = s.get("a_cold_med")
        cols = [
            cell(s, "a", fmt_ratio(s.get("a_med"), A.get("a_med"))),
            cell(s, "a", fmt_ratio(a_cold_peer, A.get("a_cold_med")) if a_cold_peer is not None else
                 ("-" if p == "sequential" else
                  "~" + fmt_ratio((s.get("start_s") or 0) + (s.get("a_med") or 0), A.get("a_cold_med")))),
            cell(s, "b", fmt_ratio(s.get("b_min"), A.get("b_min"))),
            cell(s, "c", fmt_ratio(s.get("c_med"), A.get("c_med"))),
            cell(s, "d", fmt_ratio(s.get("d_med"), A.get("d_med"))),
        ]
        out(f"  {LABELS[p]:<{W}} {cols[0]:>9} {cols[1]:>9} {cols[2]:>9} {cols[3]:>10} {cols[4]:>9}")
    out("")

    # Infrastructure checks
    out("Peer processes:")
    for p in peers:
        rec = results[p]
        bits = []
        sockets = (rec.get("info") or {}).get("sockets")
        if sockets and sockets.get("checked"):
            hosts = sorted({a.rsplit(":", 1)[0] for a in sockets["listening"]})
            bits.append(f"{len(sockets['listening'])} listening TCP ports on {', '.join(hosts) or 'nothing'}, all "
                        f"connections loopback: {'yes' if sockets['loopback_only'] else 'NO'}")
        if "dashboard_loaded" in (rec.get("info") or {}):
            bits.append(f"dashboard {'ON' if rec['info']['dashboard_loaded'] else 'off'}")
        for st in rec["stops"]:
            if st.get("status") != "ok":
                bits.append("stop: " + st.get("status", "?"))
            elif "processes" in st:
                left = f" (still running: {'; '.join(st['left'])})" if st.get("left") else ""
                bits.append(f"stopped: {st['processes'] - st['left_running']}/{st['processes']} processes "
                            f"exited{left}")
            elif "error" in st:
                bits.append("stop error: " + st["error"])
        fl = rec.get("foreign_load")
        if fl:
            killed = any(d.get("status") == "hang" for d in rec["workloads"].values())
            bits.append(f"other processes used {fl['foreign_fraction']:.0%} of the CPUs meanwhile"
                        + (" (counting the processes killed on a hang)" if killed else ""))
        if rec.get("leftover_killed"):
            bits.append(f"{rec['leftover_killed']} leftover processes killed by the bench: "
                        + "; ".join(rec.get("leftovers", [])))
        hangs = [wl for wl, d in rec["workloads"].items() if d.get("status") == "hang"]
        if hangs:
            bits.append("hung on " + ",".join(hangs))
        if bits:
            out(f"  {LABELS[p]}: " + "; ".join(bits))
    out("Notes:")
    out("  - multiprocessing forkserver/spawn pools are not run: with functions defined in a notebook (kernel "
        "__main__) their workers cannot unpickle the function, respawn, and map() never returns "
        "(notes/local-pools.md: stopped after 120 s). Python 3.14 makes forkserver the Linux default.")
    out("  - ipyparallel and dask run one task per item (their map default); their (a) cold figure is start + "
        "warm median, an estimate, since a second 10k map would cost ~20 s more.")
    out("  - the %%azpar magic uses the session's default pool (one worker per core = 2 here); the Python API "
        "runs used workers=2.")
    out("")

    # Targets
    targets: dict = {}
    parallel = {p: S[p]["a_med"] for p in PARALLEL_PEERS if p in S and S[p].get("a_med") is not None}
    if A.get("a_med") is not None and parallel:
        fastest = min(parallel, key=parallel.get)
        ok = A["a_med"] <= parallel[fastest]
        targets["a"] = dict(ok=ok, text=f"(a) no slower than the fastest parallel peer on 10k trivial, warm: azpar "
                                        f"{fmt_t(A['a_med'])} vs {LABELS[fastest]} {fmt_t(parallel[fastest])} "
                                        f"(median; sequential {fmt_t(S.get('sequential', {}).get('a_med'))})")
    if A.get("b_speedup") is not None:
        ok = A["b_speedup"] >= TARGET_B_SPEEDUP
        seq = S["sequential"]
        ceiling = (f"; the machine's ceiling (2 bare processes) is {seq['b_min'] / seq['b_ceiling_min']:.2f}"
                   if seq.get("b_ceiling_min") else "")
        if A.get("b_local_speedup"):
            ceiling += f"; against azpar's own 1-core speed measured just before: {A['b_local_speedup']:.2f}"
        targets["b"] = dict(ok=ok, text=f"(b) speedup >= {TARGET_B_SPEEDUP} on CPU work: "
                                        f"{A['b_speedup']:.2f} ({fmt_t(seq['b_min'])} sequential / "
                                        f"{fmt_t(A['b_min'])} azpar{ceiling})")
    if A.get("c_med") is not None:
        ok = A["c_med"] < TARGET_C_SECONDS
        targets["c"] = dict(ok=ok, text=f"(c) warm two-iteration %%azpar cell under {TARGET_C_SECONDS * 1e3:.0f} ms: "
                                        f"median {fmt_t(A['c_med'])}, min {fmt_t(A['c_min'])}")
        joblib_c = S.get("joblib", {}).get("c_med")
        if joblib_c is not None:
            ratio = joblib_c / A["c_med"]
            targets["c_ratio"] = dict(ok=ratio >= TARGET_C_RATIO,
                                      text=f"(c) the same cell at least {TARGET_C_RATIO:.0f}x faster than joblib's warm "
                                           f"two-item map (issue 16): joblib / azpar {ratio:.1f} "
                                           f"({fmt_t(joblib_c)} / {fmt_t(A['c_med'])}, medians)"
                                           + (f"; the floor allows at most {floor['ratio']:.1f}"
                                              if (floor := _c_floor(S)) else ""))
    if A.get("d_reps"):
        reps = A["d_reps"]
        nbytes = A["d_array"]
        # The first run serialises the array once; later runs of the unchanged array may reuse it (0).
        once = all(r["array_pickled"] == r["serialize_calls"] and r["serialize_calls"] in ((1,) if i == 0 else (0, 1))
                   and r["capture_bytes"] < 1.5 * nbytes for i, r in enumerate(reps))
        loads_ok, loads = _loads_ok(reps)
        targets["d"] = dict(ok=once and loads_ok,
                            text=f"(d) array serialised once per job ({'yes' if once else 'NO'}: "
                                 f"{'/'.join(str(r['array_pickled']) for r in reps)} pickling pass(es), "
                                 f"{fmt_b(reps[0]['capture_bytes'])} for a {fmt_b(nbytes)} array) and sent at most "
                                 f"once per worker ({'yes' if loads_ok else 'NO'}: loads per worker per job {loads})")
        v = A.get("d_variant_reps")
        if v:
            v_once = all(r["array_pickled"] <= 1 for r in v)
            v_loads_ok, v_loads = _loads_ok(v)
            oc = A.get("d_order_check") or {}
            oc_once = all(x["array_pickled"] == 1 for x in oc.values())
            oc_text = "; ".join(f"{{{k}}}: {x['array_pickled']} pass(es), {fmt_t(x['seconds'])}" for k, x in oc.items())
            targets["d_variant"] = dict(
                ok=v_once and v_loads_ok and oc_once, informational=True,
                text=f"(d, extra check) body `{A['d_variant_body']}` (namespace = array + a notebook function): "
                     f"array pickled {'/'.join(str(r['array_pickled']) for r in v)}x per job, loads per worker per "
                     f"job {v_loads}; capture.serialize by name order: {oc_text}")
    dp = A.get("d_prime")
    if dp and dp.get("reps"):
        reps = dp["reps"]
        med = _med([r["time"] for r in reps])
        moved = max((r["written"] or 0) for r in reps)
        growth = dp.get("rss_growth") or 0
        ok = (med < TARGET_DP_SECONDS and moved < TARGET_DP_MOVED and dp["new_store_files"] == 0
              and all(r["serialize_calls"] == 0 and r["job_keeps_bytes"] == 0 for r in reps)
              and growth < A["d_array"] / 2 and dp["ok"])
        targets["d_prime"] = dict(ok=ok, text=f"(d') identical second cell over the unchanged {fmt_b(A['d_array'])} "
                                              f"array under {TARGET_DP_SECONDS * 1e3:.0f} ms, nothing moved or kept: "
                                              f"median {fmt_t(med)}, at most {fmt_b(moved)} written, serialised "
                                              f"{sum(r['serialize_calls'] for r in reps)}x in {len(reps)} runs, "
                                              f"{dp['new_store_files']} new store files, kernel memory "
                                              f"{fmt_b(growth)}")
    out("Targets (computed from the measurements above):")
    for key in ("a", "b", "c", "c_ratio", "d", "d_prime", "d_variant"):
        t = targets.get(key)
        if t is None:
            if key not in ("d_variant", "d_prime", "c_ratio"):
                out(f"  n/a   ({key}) not measured in this run")
            continue
        out(f"  {'PASS' if t['ok'] else 'MISS'}  {t['text']}{'  [informational]' if t.get('informational') else ''}")
    return "\n".join(lines), S, targets


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def versions() -> dict:
    from importlib import metadata

    found = {}
    for dist in ("azpar-magic", "dill", "numpy", "ipython", "joblib", "ipyparallel", "dask", "distributed", "psutil"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer repetitions, smaller sizes")
    ap.add_argument("--only", metavar="a,b", help="workloads to run (default: a,b,c,d)")
    ap.add_argument("--skip-peers", metavar="NAME,...", default="",
                    help="peers to leave out: sequential, multiprocessing (mp), joblib, ipyparallel (ipp), dask")
    ap.add_argument("--timeout-scale", type=float, default=1.0, metavar="F",
                    help="multiply every per-step time limit by F (default 1; >1 on slower machines)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--workloads", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    ap.add_argument("--report-fd", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args)

    workloads = [w.strip() for w in (args.only or ",".join(WORKLOADS)).split(",") if w.strip()]
    bad = [w for w in workloads if w not in WORKLOADS]
    if bad:
        ap.error(f"--only takes letters among {','.join(WORKLOADS)}, not {','.join(bad)}")
    skip = set()
    for name in (n.strip().lower() for n in args.skip_peers.split(",") if n.strip()):
        if name not in ALIASES:
            ap.error(f"--skip-peers: unknown peer {name!r} (known: {', '.join(sorted(ALIASES))})")
        skip.add(ALIASES[name])
    peers = [p for p in PEER_ORDER if p not in skip]
    if "b" in workloads and "sequential" not in peers:
        log("note: (b) speedups need the sequential peer; it was skipped")

    params = dict(QUICK if args.quick else FULL)
    busy_before = cpu_busy()
    if busy_before is not None and busy_before > 0.10:
        log(f"WARNING: {busy_before:.0%} of the CPUs were busy before the run (other processes); "
            "timings and speedups will be off")
    began = time.monotonic()
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    machine = machine_calibration.calibrate()
    log(machine_calibration.format_calibration(machine))
    if "b" in workloads:
        params["burn_n"], params["burn_calibrated_s"] = calibrate(params["b_secs"])
        log(f"calibrated burn({params['burn_n']:,}) = {params['burn_calibrated_s']:.3f} s")
    else:
        params["burn_n"], params["burn_calibrated_s"] = 1000, 0.0

    scratch = tempfile.mkdtemp(prefix="azpar-bench-")
    env = dict(os.environ)
    env["IPYTHONDIR"] = os.path.join(scratch, "ipython")  # ipyparallel profiles and the shell's history
    os.makedirs(env["IPYTHONDIR"])
    env["PYTHONUNBUFFERED"] = "1"
    # Children run in the scratch folder: a relative PYTHONPATH (PYTHONPATH=.) must name the same checkout there.
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    for key in [k for k in env if k.startswith("AZPAR_") and k != "AZPAR_PORTABLE"]:
        del env[key]  # the default, local backend whatever the caller's environment says (AZPAR_PORTABLE: its path)
    # A job store of the run's own, as bench/scaling.py has: the figures must not depend on how many
    # jobs the user's store already holds (a folder of 400,000 jobs made each job's mkdir ~20x slower).
    env["AZPAR_JOB_STORE"] = os.path.join(scratch, "store")
    if ROOT:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.abspath(ROOT), env.get("PYTHONPATH")]))
    results: dict = {}
    runner = None
    try:
        for peer in peers:
            log(f"{peer}: running workloads {','.join(workloads)}")
            runner = ChildRunner(peer, workloads, params, env, scratch, args.timeout_scale)
            results[peer] = runner.run()
            runner = None
    except KeyboardInterrupt:
        if runner is not None and runner.proc is not None:
            runner._kill_tree()
            runner._reap_leftovers()
        log("interrupted")
        raise
    meta = dict(cpus=os.cpu_count(), python=platform.python_version(), quick=args.quick, when=when,
                workloads=workloads, peers=peers, elapsed_s=None, cpu_busy_before=busy_before,
                cpu_busy_after=cpu_busy(0.5), calibration=machine)
    meta["elapsed_s"] = time.monotonic() - began
    table, summary, targets = render(results, params, meta)
    print(table)
    print(f"\n(whole run: {meta['elapsed_s']:.0f} s)")

    os.makedirs(RESULTS_DIR, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(RESULTS_DIR, f"local-{stamp}.json")
    logs = {}
    for peer in results:
        try:
            with open(results[peer]["log"], encoding="utf-8", errors="replace") as fh:
                logs[peer] = fh.read()[-20_000:]
        except OSError:
            logs[peer] = ""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"meta": {**meta, "machine": platform.platform(), "versions": versions(), "argv": sys.argv[1:]},
                   "params": params, "results": results, "summary": summary, "targets": targets,
                   "table": table, "child_logs": logs}, fh, indent=1, default=str)
    print(f"results: {os.path.relpath(path)}")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
