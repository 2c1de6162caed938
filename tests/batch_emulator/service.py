"""BatchEmulator: the object tests hold. Starts the HTTP front end and the scheduler, owns the
state, and exposes the fault hooks, request log and autoscale tick.

    svc = BatchEmulator(account="testbatch")
    url = svc.start()            # http://127.0.0.1:PORT (https with tls=True)
    ... BatchClient(url, AzureNamedKeyCredential(svc.account, svc.key)) ...
    svc.stop()
"""
from __future__ import annotations

import base64
import datetime as dt
import secrets
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import autoscale
from .auth import Authenticator
from .engine import Engine
from .errors import BatchServiceError
from .executor import ProcessTable
from .faults import Faults
from .server import HttpFrontEnd, RecordedRequest, Response
from .spec import load_spec
from .state import Pool
from .util import fmt_time, parse_duration, utcnow

# REST spec 2025-06-01, Pools_EnablePoolAutoScale: "You cannot call this API for the same Pool more
# than once every 30 seconds." (handlers.enable_autoscale)
ENABLE_AUTOSCALE_WINDOW = 30.0
# "Batch service quotas and limits", resource quotas: dedicated cores per Batch account 0-900 and
# low-priority (spot) cores per account 0-100 by default, lower (even 0) for new accounts in some
# regions. An account as made has the upper end of that range: a pool asked for far more nodes
# stops there with AccountCoreQuotaReached, as on Azure, instead of creating every one asked for
# (a resize to 1,000,000 nodes made the service try). Tests set other quotas; None is no limit.
DEFAULT_CORE_QUOTA: dict[str, int | None] = {"dedicated": 900, "lowPriority": 100}
# The same page: "Active jobs and job schedules per Batch account (completed jobs have no limit)":
# 100-300 by default; the upper end, as for cores. Every job not completed counts (the service's own
# definition, as BatchExplorer#2043 adopted it), every user's on a shared account. None: no limit.
DEFAULT_ACTIVE_JOB_QUOTA: int | None = 300


class BatchEmulator:
    """A local Azure Batch account (REST api-version 2025-06-01) running tasks as processes.

    Parameters: ``account``/``key`` (SharedKey credentials; a random key by default),
    ``tls`` (serve https with a self-signed cert, needed for bearer tokens), ``token_validator``
    (which bearer tokens to accept), ``node_state_delay`` (seconds spent in each of creating and
    starting), ``resize_delay`` (seconds a pool stays "resizing"), ``blob_endpoint`` (Azurite URL,
    informational: transfers use the SAS URLs in task definitions).
    """

    def __init__(self, account: str = "testbatch", key: str | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, tls: bool = False, token_validator: Callable[[str], bool] | None = None,
                 node_state_delay: float = 0.0, resize_delay: float = 0.0, blob_endpoint: str | None = None,
                 work_dir: str | Path | None = None) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the emulator only listens on loopback")
        self.account = account
        self.key = key or base64.b64encode(secrets.token_bytes(64)).decode()
        self.host, self.port, self.tls = host, port, tls
        self.node_state_delay = node_state_delay
        self.resize_delay = resize_delay
        self.blob_endpoint = blob_endpoint
        self.spec = load_spec()
        self.auth = Authenticator(account, self.key, tls=tls, token_validator=token_validator)
        self.cond = threading.Condition(threading.RLock())
        self.pools: dict[str, Pool] = {}
        self.jobs: dict[str, Any] = {}
        self.faults = Faults()
        self.procs = ProcessTable()
        self.engine = Engine(self)
        self.requests: list[RecordedRequest] = []
        self._log: list[str] = []
        self._log_lock = threading.Lock()
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="batch-emulator-"))
        self.root = self.work_dir / "nodes"
        self.root.mkdir(parents=True, exist_ok=True)
        self._own_root = self._traversable_root()
        # Nodes as Azure makes them (engine.py, nodes.py; README "Nodes"): non-admin commands run
        # as an unprivileged pool user, and a node's python is a bare interpreter. Per test:
        # ``svc.node_users = False`` / ``svc.bare_nodes = False``; reset() turns both back on.
        self.node_users = True
        self.bare_nodes = True
        # The prefix of another interpreter whose bare copy nodes run instead of the kernel's (an
        # image with another Python, nodes.bare_python_bin); None: the kernel's version. reset(): None.
        self.node_python: Path | None = None
        # Wheels baked into the nodes' Python, as in an image with packages of its own (its site-packages,
        # seen by every command; nodes.bare_python_bin). reset(): none.
        self.image_wheels: tuple[Path, ...] = ()
        # EnablePoolAutoScale at most once per 30 s per pool (REST spec); tests shorten it or call
        # pass_enable_autoscale_window() instead of sleeping. reset(): 30 s.
        self.enable_autoscale_window = ENABLE_AUTOSCALE_WINDOW
        self.ca_cert: Path | None = None
        self.metrics: dict[str, autoscale.Metrics] = {}
        self.cpu_percent: dict[str, float] = {}
        self.weekday_sunday = 0  # autoscale conventions the sources leave open (autoscale.py docstring)
        #: The account's core quotas ("Batch service quotas and limits"): dedicated and
        #: low-priority (spot) vCPUs across all pools; None is no limit. A new account's may be 0.
        self.core_quota: dict[str, int | None] = dict(DEFAULT_CORE_QUOTA)
        self.active_job_quota: int | None = DEFAULT_ACTIVE_JOB_QUOTA  # jobs not completed (handlers.create_job)
        self.cpu_percent_scale = "percent"
        self.strict_command_lines = True  # refuse command lines no source shows split (rules.check_command_line)
        self._http: HttpFrontEnd | None = None
        self.url = ""

    def _traversable_root(self) -> Path | None:
        """The pool user must reach the node folders: make our own work folder 0755, and when
        a folder above the given one is private (a mkdtemp of the caller's), keep the nodes in a
        0755 temporary folder of their own instead (returned, to be removed by stop())."""
        from .nodes import traversable

        if self._own_dir:
            self.work_dir.chmod(0o755)
        self.root.chmod(0o755)
        if traversable(self.root):
            return None
        self.root = Path(tempfile.mkdtemp(prefix="batch-emulator-nodes-"))
        self.root.chmod(0o755)
        return self.root

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> str:
        """Start serving; returns the account URL (no trailing slash)."""
        ctx = None
        if self.tls:
            from .certs import make_self_signed
            cert, key = make_self_signed(self.work_dir / "tls")
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self.ca_cert = cert
        self._http = HttpFrontEnd(self, self.host, self.port, ctx)
        self.port = self._http.port
        self.url = f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"
        self._http.start()
        self.engine.start()
        return self.url

    def stop(self) -> None:
        """Stop serving, kill every task process, and remove the node directories."""
        if self._http is not None:
            self._http.stop()
            self._http = None
        self.engine.stop()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        if self._own_root is not None:
            shutil.rmtree(self._own_root, ignore_errors=True)

    def __enter__(self) -> BatchEmulator:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget all pools, jobs, faults and recorded requests (running processes are killed)."""
        with self.cond:
            for job in self.jobs.values():
                for t in job.tasks.values():
                    self.engine.kill_task(t, "delete")
            for pool in self.pools.values():
                pool.state = "deleting"
            self.jobs.clear()
            self.cond.notify_all()
        self.procs.kill_all()
        self.engine.join_workers(timeout=10)
        with self.cond:
            self.pools.clear()
            self.jobs.clear()
            self.metrics.clear()
            self.cpu_percent.clear()
            self.weekday_sunday, self.cpu_percent_scale = 0, "percent"
            self.core_quota = dict(DEFAULT_CORE_QUOTA)
            self.active_job_quota = DEFAULT_ACTIVE_JOB_QUOTA
            self.strict_command_lines = True
            self.node_users = self.bare_nodes = True
            self.node_python = None
            self.image_wheels = ()
            self.enable_autoscale_window = ENABLE_AUTOSCALE_WINDOW
        self.faults.clear()
        self.auth.clear_roles()
        self.requests.clear()
        with self._log_lock:
            self._log.clear()

    # ---- request plumbing ---------------------------------------------------------------------
    def record(self, rec: RecordedRequest) -> None:
        self.requests.append(rec)

    def dispatch(self, operation_id: str, params: dict, query: dict, headers: dict, body: Any,
                 raw_len: int) -> Response:
        from .handlers import HANDLERS
        # Authorization by the credential's role (auth.py: sources and what they leave open),
        # for every operation of the API, served here or not.
        self.auth.authorize(operation_id, self.spec.by_operation[operation_id].method, headers)
        handler = HANDLERS.get(operation_id)
        if handler is None:
            raise BatchServiceError(501, "NotImplemented",
                                    f"{operation_id} is not served by the Batch emulator.")
        return handler(self, params, query, headers, body, raw_len)

    def log(self, line: str) -> None:
        with self._log_lock:
            self._log.append(f"{time.strftime('%H:%M:%S')} {line}")
            del self._log[:-2000]

    @property
    def log_text(self) -> str:
        with self._log_lock:
            return "\n".join(self._log)

    def requests_for(self, operation_id: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.operation_id == operation_id]

    # ---- pool sizing and autoscale ---------------------------------------------------------------
    def resize(self, pool: Pool, dedicated: int, low_priority: int, option: str | None) -> None:
        """Set targets and start a resize (lock held). Applied by the scheduler after resize_delay."""
        if dedicated < 0 or low_priority < 0:
            from .errors import invalid_value
            raise invalid_value("targetDedicatedNodes", min(dedicated, low_priority), "must not be negative")
        pool.target_dedicated, pool.target_low_priority = dedicated, low_priority
        pool.deallocation_option = option or "requeue"
        pool.resize_errors = []
        pool.allocation_state, pool.allocation_time = "resizing", utcnow()
        pool.resize_due = time.monotonic() + self.resize_delay
        pool.touch()

    def _metrics_for(self, pool_id: str) -> autoscale.Metrics:
        return self.metrics.setdefault(pool_id.lower(), autoscale.Metrics())

    def evaluate_formula(self, pool: Pool, formula: str, *, now: dt.datetime | None = None,
                         syntax_errors_raise: bool = False) -> tuple[dict, autoscale.AutoScaleResult | None]:
        """Evaluate a formula for a pool; returns (AutoScaleRun JSON, result or None on error)."""
        now = now or utcnow()
        try:
            r = autoscale.evaluate(formula, now=now, metrics=self._metrics_for(pool.id),
                                   current_dedicated=pool.counted_nodes(True),
                                   current_low_priority=pool.counted_nodes(False),
                                   target_dedicated=pool.target_dedicated,
                                   target_low_priority=pool.target_low_priority,
                                   preempted_nodes=sum(1 for n in pool.nodes.values() if n.state == "preempted"),
                                   task_slots_per_node=pool.slots_per_node,
                                   sunday=self.weekday_sunday, cpu_scale=self.cpu_percent_scale)
        except autoscale.FormulaSyntaxError as e:
            if syntax_errors_raise:
                raise BatchServiceError(400, e.code, f"The autoscale formula has a syntax error: {e.message}",
                                        [("Message", e.message)]) from None
            return {"timestamp": fmt_time(now), "error": {"code": e.code, "message": e.message}}, None
        except autoscale.AutoScaleError as e:
            return {"timestamp": fmt_time(now), "error": {"code": e.code, "message": e.message,
                                                          "values": [{"name": "Message", "value": e.message}]}}, None
        return {"timestamp": fmt_time(now), "results": r.results}, r

    def run_autoscale(self, pool: Pool, *, now: dt.datetime | None = None, validate: bool = False) -> dict:
        """One autoscale evaluation of the pool's formula, applied as a resize (lock held)."""
        run, result = self.evaluate_formula(pool, pool.autoscale_formula or "", now=now, syntax_errors_raise=validate)
        pool.autoscale_run = run
        if result is not None:
            if (result.target_dedicated, result.target_low_priority) != (pool.target_dedicated,
                                                                         pool.target_low_priority):
                self.resize(pool, result.target_dedicated, result.target_low_priority,
                            result.node_deallocation_option)
        pool.touch()
        return run

    def add_metric_sample(self, pool_id: str, time: dt.datetime, **values: float) -> None:
        """Add one metric sample (ActiveTasks=..., RunningTasks=..., CPUPercent=...) for a pool."""
        with self.cond:
            self._metrics_for(pool_id).add(time, **values)

    def set_cpu_percent(self, pool_id: str, value: float) -> None:
        """The $CPUPercent value recorded by subsequent autoscale ticks for this pool."""
        with self.cond:
            self.cpu_percent[pool_id.lower()] = value

    def autoscale_tick(self, now: dt.datetime | None = None, *, sample: bool = True) -> dict[str, dict]:
        """Do what the service does every evaluation interval, on demand.

        For each autoscale pool: record a metric sample of the live task counts at ``now``
        (unless ``sample=False``), evaluate the formula, resize to the result. Returns
        {pool_id: AutoScaleRun JSON}.
        """
        now = now or utcnow()
        out = {}
        with self.cond:
            for pool in list(self.pools.values()):
                if not pool.enable_autoscale or pool.state != "active":
                    continue
                if sample:
                    self._metrics_for(pool.id).add(now, **self._live_sample(pool))
                out[pool.id] = self.run_autoscale(pool, now=now)
            self.cond.notify_all()
        return out

    def _live_sample(self, pool: Pool) -> dict[str, float]:
        """The pool's metric sample now: its active jobs' queued and running tasks, and CPU."""
        active = running = 0
        for job in self.jobs.values():
            if (job.pool_id or "").lower() == pool.id.lower() and job.state == "active":
                for t in job.tasks.values():
                    if t.state == "active":
                        active += 1
                    elif t.state in ("preparing", "running"):
                        running += 1
        return {"ActiveTasks": active, "RunningTasks": running,
                "CPUPercent": self.cpu_percent.get(pool.id.lower(), 0.0)}

    def autoscale_advance(self, minutes: float, *, start: dt.datetime | None = None) -> list[tuple[str, dict]]:
        """Let ``minutes`` of the service's own autoscale schedule pass at once: an accelerated
        clock for tests whose real waits would be long. From ``start`` (default now) on, every
        autoscale pool gets a sample of its live task counts every 30 s, which formulas see only
        a minute later, and an evaluation of its formula every evaluation interval, the first
        one interval after ``start`` (call it right after the pool was created or autoscale
        enabled, which evaluated the formula then). Sources, the autoscale article ("Automatically
        scale compute nodes in an Azure Batch pool"): samples "are recorded every 30 seconds";
        "It takes approximately one minute for samples to propagate through the system"; the
        formula is evaluated every autoScaleEvaluationInterval (5 minutes at least), a new
        schedule starting when autoscale is enabled. Task counts do not change while the clock
        jumps (nothing runs meanwhile); resizes it asks for are applied in real time by the
        scheduler. Returns (pool id, AutoScaleRun JSON) of each evaluation, in time order."""
        start = start or utcnow()
        end = start + dt.timedelta(minutes=minutes)
        step = dt.timedelta(seconds=autoscale.SAMPLE_INTERVAL)
        lag = dt.timedelta(seconds=autoscale.SAMPLE_LAG)
        runs: list[tuple[str, dict]] = []
        with self.cond:
            pools = [p for p in self.pools.values() if p.enable_autoscale and p.state == "active"]
            taken: dict[str, list[tuple[dt.datetime, dict[str, float]]]] = {p.id: [] for p in pools}
            every = {p.id: dt.timedelta(seconds=parse_duration(p.autoscale_interval or "PT15M")) for p in pools}
            due = {p.id: start + every[p.id] for p in pools}
            now = start
            while now <= end:
                for pool in pools:
                    if not pool.enable_autoscale:
                        continue
                    queue = taken[pool.id]
                    queue.append((now, self._live_sample(pool)))
                    while queue and queue[0][0] + lag <= now:
                        at, values = queue.pop(0)
                        self._metrics_for(pool.id).add(at, **values)
                    if now >= due[pool.id]:
                        runs.append((pool.id, self.run_autoscale(pool, now=now)))
                        due[pool.id] = now + every[pool.id]
                now += step
            self.cond.notify_all()
        return runs

    def pass_enable_autoscale_window(self) -> None:
        """Let the EnablePoolAutoScale window of every pool pass at once (the service's clock moved
        30 s on for that limit), for tests that enable twice without waiting."""
        with self.cond:
            for pool in self.pools.values():
                pool.autoscale_enabled_at = None

    # ---- roles -------------------------------------------------------------------------------------
    def add_identity(self, role: str, name: str | None = None) -> tuple[str, str]:
        """A credential standing in for a Microsoft Entra identity that holds ``role`` (e.g.
        ``auth.JOB_SUBMITTER``): returns (SharedKey name, key) for a client's
        AzureNamedKeyCredential. Requests its role does not allow get 403 AuthorizationFailed.
        Forgotten by reset()."""
        name = name or f"{role.split()[-1].lower()}{secrets.token_hex(3)}"  # an account-like name
        key = base64.b64encode(secrets.token_bytes(64)).decode()
        self.auth.add_identity(name, key, role)
        return name, key

    def grant_token(self, token: str, role: str) -> None:
        """Bearer token ``token`` (tls=True) acts with ``role``; other tokens keep full access."""
        self.auth.grant_token(token, role)

    # ---- fault hooks -------------------------------------------------------------------------------
    def fail_requests(self, path_pattern: str, count: int = 1, status: int = 503, method: str | None = None) -> None:
        """Answer the next ``count`` requests whose decoded path matches the regex with ``status``."""
        self.faults.add_request_fault(path_pattern, count, status, method)

    def fail_output_uploads(self, count: int = 1) -> None:
        """Make the next ``count`` output-file uploads fail (the task gets a FileUpload failure)."""
        with self.faults._lock:
            self.faults.upload_failures += count

    def fail_start_task(self, pool_id: str | None = None, count: int = 1) -> None:
        """Make the next ``count`` start-task runs (of ``pool_id``, or any pool) exit with code 1."""
        with self.faults._lock:
            self.faults.start_task_failures[pool_id] = self.faults.start_task_failures.get(pool_id, 0) + count

    def delay_node_start(self, seconds: float, pool_id: str | None = None) -> None:
        """Nodes allocated from now on (for ``pool_id`` or any pool) stay ``creating`` this much longer."""
        with self.faults._lock:
            self.faults.node_start_delay[pool_id] = seconds

    def preempt_node(self, pool_id: str, node_id: str | None = None) -> str:
        """Preempt a node (a spot node if any, else any node): its running tasks are requeued
        (requeueCount, not a retry) and the node stays ``preempted``. Returns the node id."""
        with self.cond:
            pool = self.pools[pool_id.lower()]
            if node_id is None:
                candidates = sorted(pool.nodes.values(), key=lambda n: (n.dedicated, not n.running))
                node_id = candidates[0].id
            node = pool.nodes[node_id]
            self.engine._evict_node_tasks(node, "requeue")
            node.set_state("preempted")
            self.cond.notify_all()
            return node.id

    def restore_node(self, pool_id: str, node_id: str) -> None:
        """Bring a preempted node back to idle."""
        with self.cond:
            self.pools[pool_id.lower()].nodes[node_id].set_state("idle")
            self.cond.notify_all()

    # ---- helpers for tests ---------------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[BatchEmulator], bool], timeout: float = 30.0,
                 interval: float = 0.02) -> None:
        """Block until predicate(self) holds (checked under the lock) or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            with self.cond:
                if predicate(self):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("condition not reached in time")
            time.sleep(interval)

    def live_processes(self) -> list[int]:
        return self.procs.live()

    def node_root(self, pool_id: str, node_id: str) -> Path:
        return self.pools[pool_id.lower()].nodes[node_id].root


__all__ = ["BatchEmulator", "RecordedRequest"]
