"""One cell run on Azure Batch, from staging to the last result.

Staging and job creation happen in ``stage()`` (the cell is still blocking, so errors reach
the user at once, and nothing is left behind when they happen). Adding tasks and following
them happen in two background threads, so the panel shows progress while tasks are still
being added. Following a job costs one task-counts call per poll while nothing completes;
tasks are listed only when the counts say something changed, and only the ones that changed
(completed since the last watermark), and their results are downloaded concurrently. Counts
and filtered lists may lag or skip a task on the real service, so an unfiltered sweep of the
job's tasks backs them up (``_Sweeps``).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from azure.batch import models
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from ... import jobstore, worker as wire
from ...errors import AzureServiceError, RequirementError
from ..base import EventSink, JobSpec, TaskEvent, TaskSpec, timeout_grace
from . import commands, errors, files, storage
from .context import AzureContext
from .pool import container_settings, environment_settings, state_name, status as pool_status
from .spot import SpotFallback
from .submission import PendingTask, TaskAdder, wire_json
from .threads import ThreadPool, refused_by_the_exit

logger = logging.getLogger(__name__)
INLINE_LIMIT = 6_000  # task inputs up to this many bytes travel in the task definition
STALL_CHECK_POLLS = 10  # polls without progress before the job preparation status is read
SILENCE_NOTICE = 10.0  # seconds without an answer from Batch or Storage before the views say so
MERGE_TASK = "merge"
MANIFEST_BLOB = "manifest.json"  # the job store's manifest, also beside the job (in its inputs container)
_TERMINAL_NODE_STATES = ("starttaskfailed", "unusable")
_COMPLETED_FIELDS = ["id", "stateTransitionTime", "executionInfo", "nodeInfo"]  # what reading a result needs
_SWEEP_FIELDS = ["id", "state", *_COMPLETED_FIELDS[1:]]
SWEEP_INTERVAL = 60.0  # seconds between unfiltered sweeps of the job's tasks while some have no result
RUNNING_GAP_MAX = 32  # polls between running lists that keep disagreeing with the counts
FIRST_POLL_GAP = 0.25  # seconds before the poll after a change (the gap then doubles up to the poll interval)
TAIL_POLL_GAP = 0.1  # the same once at most TAIL_TASKS tasks are left: any completion may be the last
TAIL_TASKS = 16
NODE_LIST_MAX_AGE = 20.0  # seconds a pool's node list serves the views while followed runs see nothing change
POST_ATTEMPTS = 3  # create-job / merge-task calls whose answer never arrived, sent again (then *Exists = done)


def _blob_url(container_sas_url: str, name: str) -> str:
    base, _, token = container_sas_url.partition("?")
    return f"{base}/{name}?{token}"


def _first_line(source: str | None) -> str:
    lines = (source or "").strip().splitlines()
    return lines[0][:200] if lines else ""


def _short_error(exc: BaseException) -> str:
    """One line about a failed call: the HTTP status and code, or the connection error."""
    status = getattr(exc, "status_code", None)
    code = getattr(getattr(exc, "error", None), "code", None) or getattr(exc, "error_code", None)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    return f"HTTP {status}{' ' + code if code else ''}" if status else f"{type(exc).__name__}: {first}"


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _is_download_failure(code: str, message: str) -> bool:
    """A Batch failure code of a resource file download (BlobNotFound, BlobAccessDenied,
    BlobDownloadMiscError, ResourceFileDownloadFailed, ...), as opposed to the command failing."""
    return code.startswith("Blob") or "ResourceFile" in code or "resource file" in message.lower()


def _exists(exc: HttpResponseError, code: str) -> bool:
    """409 ``code`` (JobExists, TaskExists): a POST that had already taken effect."""
    error = getattr(exc, "error", None)
    return exc.status_code == 409 and getattr(error, "code", None) in (code, None)


def _error_code(exc: HttpResponseError) -> str:
    """The Batch error code of a refusal ("" when the answer carried none)."""
    return getattr(getattr(exc, "error", None), "code", None) or ""


def _id_ranges(ids: Sequence[str]) -> list[tuple[int, int]]:
    """Numeric task ids as the fewest inclusive ranges (the merge task's dependencies)."""
    out: list[tuple[int, int]] = []
    for n in sorted(int(i) for i in ids):
        if out and n == out[-1][1] + 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def _once(text: str) -> str:
    """Lines said again (each retry of the job preparation task appends pip's message to the same
    stderr) kept once, where last said."""
    lines = text.splitlines()
    return "\n".join(line for i, line in enumerate(lines) if line not in lines[i + 1 :])


def _terminate_options(reason: str) -> Any:
    from azure.batch.models._models import BatchJobTerminateOptions  # not exported in 15.1

    return BatchJobTerminateOptions(termination_reason=reason)


class _Sweeps:
    """When to sweep the job's tasks unfiltered: every SWEEP_INTERVAL, and at once when the
    counts say results are missing; sweeps that find nothing new space out (doubling from
    the poll interval up to SWEEP_INTERVAL), so a lagging service is not listed in a loop."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.first_gap = max(interval, 0.05)
        self.gap = self.first_gap
        self.last = clock()

    def due(self, missing: bool) -> bool:
        since = self.clock() - self.last
        return since >= SWEEP_INTERVAL or (missing and since >= self.gap)

    def done(self, found: int) -> None:
        self.last = self.clock()
        self.gap = self.first_gap if found else min(self.gap * 2, SWEEP_INTERVAL)


class _Pace:
    """How long the follower waits before its next poll: FIRST_POLL_GAP at first, and
    TAIL_POLL_GAP after a change once few tasks are left (so the last completion of a short job
    is seen soon after it happens: lists show a change a while after it, and a ten-task cell on
    two nodes waited half a second more for the poll that saw its end, issue 16 f), doubling on
    each poll that saw nothing new up to the profile's poll interval (a job whose tasks run long
    is polled no more often than before, a long queue draining no more often than it moves).

    A gap runs from the start of a poll, not its end: a poll's requests (the counts, then a
    list or two) took 60-110 ms of a 0.1 s tail gap on two busy cores, so waiting the whole gap
    after them put the poll that saw a short job's end ~0.2 s after it, not ~0.1 s (issue 16 f).
    A poll that outlasts its gap still waits a quarter of it, so a slow service is not asked
    back to back."""

    def __init__(self, interval: float):
        self.interval = interval
        self.first = min(FIRST_POLL_GAP, interval)
        self.gap = self.first

    def next(self, changed_near_the_end: bool, spent: float = 0.0) -> float:
        """Seconds to wait now, ``spent`` seconds after the poll began."""
        if changed_near_the_end:
            self.gap = min(TAIL_POLL_GAP, self.interval)
        gap = self.gap
        self.gap = min(self.gap * 2, self.interval)
        return max(gap - spent, gap / 4)


def nodes_still_fresh(listed_at: float, nodes: Sequence[Any], runs: Iterable[AzureRun]) -> bool:
    """Whether a pool's node list read at ``listed_at`` (monotonic) still stands for the views, so
    the progress line and panel need not list the nodes again: while runs are being followed, no
    follower has seen a task start or end since, every node listed was idle or running (nodes
    starting or rebooting are watched closely), and the list is younger than NODE_LIST_MAX_AGE.
    The followers' own polls are then what tells the views that something moved."""
    following = [run for run in runs if run.following]
    if not following or not nodes or time.monotonic() - listed_at >= NODE_LIST_MAX_AGE:
        return False
    if any(getattr(n, "state", None) not in ("idle", "running") for n in nodes):
        return False
    return all(run.changed_at < listed_at for run in following)


class AzureRun:
    """Stages one job, adds its tasks and reports their events."""

    def __init__(self, context: AzureContext, spec: JobSpec, tasks: Sequence[TaskSpec], on_event: EventSink):
        self.context, self.spec, self.on_event = context, spec, on_event
        self.client, self.staging, self.profile = context.client, context.staging, context.profile
        self.job_id = spec.job_id
        self.tasks = {t.task_id: t for t in tasks}
        opts = spec.backend_options or {}
        self.packages: list[str] = list(opts.get("packages") or [])
        self.merge_cloud = opts.get("merge") == "cloud"
        self.keep = bool(opts.get("keep")) or self.profile["keep"]
        self.pip_options: list[str] = list(self.profile["pip_options"])
        # The kernel's environment travels (issue 15) unless the profile or the cell turns it off.
        self.auto_packages = bool(self.profile["auto_packages"]) and opts.get("auto_packages") is not False
        self.install: files.InstallPlan = files.InstallPlan(tuple(self.packages), None, ())
        self.wheel_bytes = 0  # bytes of local wheels this job uploaded (0 when all were in the cache)
        self.in_container = storage.input_container(self.job_id)
        self.out_container = storage.output_container(self.job_id)
        self.files_container = storage.files_container(self.job_id)
        self._files_url: str | None = None  # write SAS on files_container (--outputs), made when first needed
        self.lifetime = self.profile["job_timeout"]
        self.expiry = storage.Staging.expiry_for(self.lifetime)
        self._lock = threading.Lock()
        self._final: set[str] = set()  # tasks whose final event was sent
        self._started: set[str] = set()
        self._handling: set[str] = set()  # completed tasks whose results are being fetched
        self._cancelled: set[str] = set()
        self._all_cancelled = False
        self._deferred: list[str] = []  # merge mode: succeeded tasks whose results come merged
        self._seen_completed: set[str] = set()  # task ids a list has shown completed (merge included)
        self._merge_read = False
        self._adding = True  # tasks are still being added: counts cannot yet say the job is done
        self.run_token = secrets.token_hex(8)  # in the job's metadata: a JobExists answer is ours if it matches
        self.failed_any = False
        self.job_created = False  # the Batch job is this run's: a failed staging may delete it, and only then
        self.added_at: float | None = None  # monotonic time the first task became schedulable
        self.add_report = None
        self._stop = threading.Event()
        # Closed: this kernel no longer follows the job (its exit, or the job's end). The job runs
        # on without it, so nothing its threads still do may end a task here: see close().
        self._closed = False
        self._terminating: Any = None  # the terminate poller of a cancelled job
        # Its calls run on the follower itself once Python's exit has begun (threads.py): a thread still
        # waiting on the job then gets its results.
        self._downloads = ThreadPool(8, thread_name_prefix="azpar-results")
        self.calls: dict[str, int] = {}
        self.data = files.RunData(context, spec, self.expiry, self._count)  # --inputs/--outputs; inert without
        self._silent: dict[str, tuple[float, float, str]] = {}  # service -> (since: wall, monotonic; last error)
        self.spot = SpotFallback(lambda: context.client, self.profile)  # dedicated_fallback (spot.py)
        self._ran: dict[str, float] = {}  # task -> seconds it ran by Batch's execution times (its cost, issue 19)
        self.following = False  # the follower's loop runs (nodes_still_fresh)
        self.changed_at = 0.0  # monotonic time the follower started or last saw a task start or end
        self._template: dict[str, Any] | None = None  # what every task definition shares, as wire JSON
        self._command_lines: dict[bool, str] = {}
        self._data_outputs: list[dict[str, Any]] | None = None
        self._sign_output: Callable[[str], str] | None = None

    def _count(self, kind: str) -> None:
        with self._lock:
            self.calls[kind] = self.calls.get(kind, 0) + 1

    # ------------------------------------------------------------------ staging

    def stage(self) -> None:
        """Containers, content-addressed worker and namespace, envelope, and the Batch job."""
        st, spec = self.staging, self.spec
        logger.info("job %s: staging its worker, namespace and inputs in %s", self.job_id, st.account_url)
        if self.auto_packages:  # before anything is uploaded: a local build may fail
            try:
                self.install = files.install_plan(spec.envelope.get("packages") or {}, self.packages, self.pip_options)
            except RequirementError as exc:  # its message names the package, pip's lines and the ways out
                raise RuntimeError(str(exc)) from None
        st.ensure_container(storage.CACHE_CONTAINER)
        worker_bytes = self.context.worker_bytes
        worker_sha = wire.sha256(worker_bytes)
        worker_blob = f"worker/{worker_sha}.py"
        ns_name = spec.envelope["namespace"]["file"]
        cached = [(worker_blob, worker_bytes), (f"ns/{ns_name}", spec.namespace)]
        # The notebook's own modules go once per set, content-addressed as the namespace, not inside every
        # job's envelope: a package of a few MB was uploaded again with each run of a cell (issue 16).
        _, modules_name = wire.modules_apart(spec.envelope)
        if modules_name:
            cached.append((f"ns/{modules_name}", wire.json_dumps(spec.envelope["local_modules"]).encode()))
        # Checked even when this kernel uploaded them before: they may have been removed since
        # (and the cache container with them, which this creates again before the inputs go there).
        st.upload_once_many(storage.CACHE_CONTAINER, cached, verify=True)
        self.data.stage()  # inputs uploaded once and checked before anything of the job exists
        st.ensure_container(self.in_container)
        st.ensure_container(self.out_container)
        if self._has_output_files():
            st.ensure_container(self.files_container)
        self.spec = replace(spec, namespace=b"")  # uploaded: the run keeps no copy of the bytes
        envelope = self.data.envelope(spec.envelope)
        if self.install.overridden:  # --packages replaced these: the worker checks the rest
            envelope = dict(envelope, packages=self.install.envelope_packages(envelope.get("packages") or {}))
        envelope, _ = wire.modules_apart(envelope)  # the worker reads them beside it (worker.shipped_modules)
        st.upload(self.in_container, commands.ENVELOPE_FILE, wire.pack(wire.ENVELOPE_MAGIC, envelope))
        self.save_manifest()
        self.read_inputs = st.container_sas_url(self.in_container, "r", self.expiry)
        wheel_files, self.wheel_bytes = files.wheel_resource_files(st, self.expiry, self.install.wheels)
        prep_files = [
            models.ResourceFile(
                http_url=st.blob_sas_url(storage.CACHE_CONTAINER, worker_blob, "r", self.expiry),
                file_path=commands.WORKER_FILE,
            ),
            models.ResourceFile(
                http_url=st.blob_sas_url(storage.CACHE_CONTAINER, f"ns/{ns_name}", "r", self.expiry), file_path=ns_name
            ),
            models.ResourceFile(
                http_url=_blob_url(self.read_inputs, commands.ENVELOPE_FILE), file_path=commands.ENVELOPE_FILE
            ),
            *(
                [
                    models.ResourceFile(
                        http_url=st.blob_sas_url(storage.CACHE_CONTAINER, f"ns/{modules_name}", "r", self.expiry),
                        file_path=modules_name,
                    )
                ]
                if modules_name
                else []
            ),
            *self.data.prep_resource_files(),
            *wheel_files,
        ]
        prep_command = commands.job_preparation_command(
            list(self.install.specs),
            self.pip_options,
            digest=self.install.digest,
            kernel_python=spec.envelope.get("python"),
            wheels=bool(self.install.wheels),
            worker_sha=worker_sha,
        )
        prep = models.BatchJobPreparationTask(
            id="jobpreparation",
            command_line=prep_command.command_line,
            environment_settings=environment_settings(prep_command),
            container_settings=container_settings(self.profile),
            resource_files=prep_files,
            constraints=models.BatchTaskConstraints(max_task_retry_count=2),
            wait_for_success=True,
        )
        self._create_job(
            models.BatchJobCreateOptions(
                id=self.job_id,
                pool_info=models.BatchPoolInfo(pool_id=self.profile["pool_id"]),
                job_preparation_task=prep,
                all_tasks_complete_mode="noaction",
                uses_task_dependencies=self.merge_cloud,
                constraints=models.BatchJobConstraints(max_wall_clock_time=dt.timedelta(seconds=self.lifetime)),
                metadata=[
                    models.BatchMetadataItem(name="azpar-cell", value=_first_line(spec.envelope.get("source"))),
                    models.BatchMetadataItem(name="azpar-user", value=jobstore.creator()),
                    models.BatchMetadataItem(name="azpar-run", value=self.run_token),
                ],
            )
        )

    def _create_job(self, options: Any) -> None:
        """Create the job. JobExists after a lost answer is success once the job's metadata
        shows this run's token; any other job of that id is not ours, and is left alone.
        RequestEntityTooLarge (too long a list of resource files): the shared inputs are
        packed into one container resource file and the job is sent again, once."""
        try:
            self._post_once("create_job", lambda: self.client.create_job(options), "JobExists", self._job_is_ours)
            self.job_created = True  # (a JobExists is success only when the job there is ours)
        except HttpResponseError as exc:
            too_large = _error_code(exc) == "RequestEntityTooLarge"
            if too_large and self.data.can_pack:
                self._pack_shared_inputs(options)
                return self._create_job(options)
            if too_large:
                raise errors.translate(
                    exc,
                    message=(
                        "staging the job on Azure failed: Batch refused the job as too large (RequestEntityTooLarge: "
                        "its list of resource files is over the service's limit) and there are no shared input files "
                        "left to pack. Nothing was submitted; use fewer --inputs every iteration reads"
                    ),
                ) from None
            if _error_code(exc) == "ActiveJobAndScheduleQuotaReached":
                raise errors.translate(
                    exc,
                    message=(
                        "staging the job on Azure failed: the Batch account has reached its quota of active jobs "
                        "(ActiveJobAndScheduleQuotaReached; 100 to 300 by default, and every job not yet completed "
                        "counts, every user's on a shared account). Nothing was submitted. Wait for running jobs to "
                        "end or cancel some of yours (%azpar jobs --state running), or request a higher quota on the "
                        "Batch account's Quotas page in the Azure portal; then run the cell again"
                    ),
                ) from None
            if not _exists(exc, "JobExists"):
                raise
            raise errors.translate(
                exc,
                message=f"staging the job on Azure failed: a Batch job named {self.job_id} "
                "already exists and was not created by this run; it was left as it is. "
                "Run the cell again (it gets a new job id)",
            ) from None

    def _pack_shared_inputs(self, options: Any) -> None:
        """Batch found the job preparation task's resource files too many: copy the shared
        inputs into the job's inputs container and let one container resource file bring them."""
        prep = options.job_preparation_task
        self.data.pack()
        prep.resource_files = [
            rf for rf in prep.resource_files or [] if not files.is_shared_input(rf)
        ] + self.data.prep_resource_files()

    def _job_is_ours(self) -> bool:
        job = self.client.get_job(self.job_id, select=["id", "metadata"])
        self._count("get_job")
        return {m.name: m.value for m in job.metadata or []}.get("azpar-run") == self.run_token

    def _post_once(self, what: str, send: Callable[[], Any], exists_code: str, ours: Callable[[], bool]) -> None:
        """Send a create POST whose answer may be lost: the SDK sends it again on a 5xx, and
        this sends it again when the connection failed, so the thing may exist already.
        ``exists_code`` (JobExists, TaskExists) then means success when ``ours()`` says the
        one there is what this run sent; otherwise that error is raised."""
        for attempt in range(POST_ATTEMPTS):
            try:
                send()
                self._count(what)
                return
            except ServiceResponseError:
                if attempt + 1 == POST_ATTEMPTS:
                    raise
            except HttpResponseError as exc:
                if _exists(exc, exists_code) and ours():
                    return
                raise

    def save_manifest(self, *, final: bool = False) -> None:
        """Copy the job store's manifest into the job's inputs container, so the job can be
        identified from Azure alone (Storage Explorer, another machine). ``final``: the job
        has ended; wait for the store's writer so the copy carries the final state."""
        if self.spec.manifest is None:
            return
        if final:
            jobstore.flush(5.0)
        try:
            data = json.dumps(dict(self.spec.manifest), sort_keys=True, indent=1, default=str).encode()
            self.staging.upload(self.in_container, MANIFEST_BLOB, data)
        except (AzureError, ValueError, RuntimeError):
            if not final:
                raise  # while staging: the job is not created yet, so the user hears of it
            # at the end the copy is a convenience; the local store has the truth

    def resume(self) -> None:
        """Follow a job an earlier kernel staged and submitted: new SAS tokens (the tasks it
        has yet to add need them), then, on a thread, add what it had not added and follow."""
        self.merge_cloud = False  # results are read one by one: the dead kernel's deferrals are gone
        self.read_inputs = self.staging.container_sas_url(self.in_container, "r", self.expiry)
        threading.Thread(
            target=self._guard, args=(self._resume,), name=f"azpar-resume-{self.job_id}", daemon=True
        ).start()

    def _resume(self) -> None:
        try:
            batch_job = self.client.get_job(self.job_id, select=["id", "onAllTasksComplete"])
            self._count("get_job")
            # Switched to end by itself only after the last add: then every task is there.
            all_added = state_name(batch_job.all_tasks_complete_mode) == "terminatejob"
            existing = set() if all_added else {t.id for t in self.client.list_tasks(self.job_id, select=["id"])}
        except ResourceNotFoundError:
            self._fail_remaining("the Batch job no longer exists (it was deleted); rerun the missing iterations")
            return
        if all_added:
            self._adding = False
            self._follow()
            return
        self._count("list_tasks")
        missing = [t for task_id, t in self.tasks.items() if task_id not in existing]
        if missing:
            pending = (self._definition(t) for t in missing)
            adder = TaskAdder(self.client, self.job_id, should_stop=self._stop.is_set)
            report = adder.add(pending, prepare=self._upload_inputs)
            for task_id, why in report.failed.items():
                self._emit(TaskEvent(self.job_id, task_id, "failed", error=why, failure_kind="infrastructure"))
        try:  # the dead kernel may have ended before switching the job to end by itself
            self.client.update_job(self.job_id, models.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
            self._count("update_job")
        except HttpResponseError:
            pass  # it has ended already (or was terminated): the follower reads what is there
        self._adding = False
        self._follow()

    # ------------------------------------------------------------------ task definitions

    def _task_file(self, task: TaskSpec) -> bytes:
        """What ``worker.py TASK_IN`` reads, inline or as a blob."""
        header = {
            "envelope": commands.ENVELOPE_FILE,
            "items_codec": task.items_codec,
            "indices": list(task.indices),
            "task": task.task_id,
        }
        if self.data.active:
            header["data"] = self.data.task_header(task)
        return wire.pack(wire.TASK_MAGIC, header, task.items)

    def _definition(self, task: TaskSpec) -> PendingTask:
        """The task's definition as REST wire JSON: the job's template (``_task_template``) with
        this task's id, command line, inputs and result and log destinations filled in."""
        data = self._task_file(task)
        inline = len(data) <= INLINE_LIMIT
        definition = {**self._task_template(), "id": task.task_id, "commandLine": self._command_line(inline)}
        files: list[dict[str, Any]] = []
        upload, size = None, 1500
        if inline:
            encoded = base64.b64encode(data).decode("ascii")
            definition["environmentSettings"] = [{"name": commands.TASK_ENV, "value": encoded}]
            size += len(encoded)
        else:
            files.append(
                {"httpUrl": _blob_url(self.read_inputs, f"tasks/{task.task_id}.azpt"), "filePath": commands.TASK_FILE}
            )
            upload = (f"tasks/{task.task_id}.azpt", data)
            size += len(self.read_inputs) + 60
        own_inputs, own_size = self.data.task_resource_files(task)
        if own_inputs:
            files, size = files + [wire_json(f) for f in own_inputs], size + own_size
        if files:
            definition["resourceFiles"] = files
        outputs = self._outputs_json(task.task_id)
        definition["outputFiles"] = outputs
        size += sum(len(o["destination"]["container"]["containerUrl"]) + 100 for o in outputs)
        return PendingTask(definition, size, upload)

    def _task_template(self) -> dict[str, Any]:
        """What every task of this job shares (constraints, container, exit conditions), built with
        the SDK's models once and kept as the JSON it would send."""
        if self._template is None:
            constraints = models.BatchTaskConstraints(
                max_task_retry_count=self.spec.retries,
                # The worker stops the task at --timeout itself and sends what ended (worker.TaskTimer);
                # Batch kills only a task that did not stop, a grace later.
                max_wall_clock_time=(
                    dt.timedelta(seconds=self.spec.timeout + timeout_grace(self.spec.timeout))
                    if self.spec.timeout
                    else None
                ),
            )
            shared = models.BatchTaskCreateOptions(
                id="",
                command_line="",
                constraints=constraints,
                container_settings=container_settings(self.profile),
                exit_conditions=self._exit_conditions(),
            )
            self._template = {k: v for k, v in wire_json(shared).items() if k not in ("id", "commandLine")}
        return self._template

    def _command_line(self, inline: bool) -> str:
        if inline not in self._command_lines:
            self._command_lines[inline] = commands.task_command(self.packages, self.pip_options, inline=inline)
        return self._command_lines[inline]

    def _outputs_json(self, task_id: str) -> list[dict[str, Any]]:
        """Where the task's files go when it ends: its result and logs (a SAS per blob, ``_output``)
        and the --outputs entries, which are the job's and converted once."""
        if self._data_outputs is None:
            self._data_outputs = [wire_json(o) for o in self.data.output_files(self._files_output)]
        return [
            self._output_json(commands.RESULT_FILE, f"results/{task_id}.azpr"),
            self._output_json("../stdout.txt", f"logs/{task_id}/stdout.txt"),
            self._output_json("../stderr.txt", f"logs/{task_id}/stderr.txt"),
            *self._data_outputs,
        ]

    def _output_json(self, pattern: str, blob: str) -> dict[str, Any]:
        """``_output`` as the wire JSON its model serialises to."""
        return {
            "filePattern": pattern,
            "destination": {"container": {"containerUrl": self._output_url(blob), "path": blob}},
            "uploadOptions": {"uploadCondition": "taskcompletion"},
        }

    @staticmethod
    def _upload(pattern: str, url: str, path: str) -> models.OutputFile:
        """A file uploaded when the task ends, however it ends."""
        return models.OutputFile(
            file_pattern=pattern,
            destination=models.OutputFileDestination(
                container=models.OutputFileBlobContainerDestination(container_url=url, path=path)
            ),
            upload_options=models.OutputFileUploadConfiguration(upload_condition="taskcompletion"),
        )

    def _output(self, pattern: str, blob: str) -> models.OutputFile:
        """One file (``pattern`` has no wildcard) into the blob ``blob`` of the job's output
        container, through a SAS that may create or write that blob and nothing else: a task,
        or anyone reading its definition, cannot replace another task's result or logs. (A
        blob SAS on the container's URL: Batch appends ``path`` to the URL's path and keeps
        its query.)"""
        return self._upload(pattern, self._output_url(blob), blob)

    def _output_url(self, blob: str) -> str:
        if self._sign_output is None:  # one signer for the job's result and log blobs (three per task)
            self._sign_output = self.staging.blob_sas_signer(self.out_container, "cw", self.expiry)
        token = self._sign_output(blob).partition("?")[2]
        return f"{self.staging.container_url(self.out_container)}?{token}"

    def _has_output_files(self) -> bool:
        plan = self.data.plan
        return bool(plan is not None and plan.outputs and not plan.dest_is_blob)

    def _files_output(self, pattern: str, path: str) -> models.OutputFile:
        """--outputs files: names are not known before the task runs, so they go to a container
        of their own (``J-files``) with a container write SAS; the results container stays
        writable per blob only. The kernel reads these as files, never unpickles them."""
        if self._files_url is None:
            self._files_url = self.staging.container_sas_url(self.files_container, "cw", self.expiry)
        return self._upload(pattern, self._files_url, path)

    def _exit_conditions(self) -> models.ExitConditions | None:
        if not self.merge_cloud:
            return None
        satisfy = models.ExitOptions(dependency_action="satisfy")  # the merge runs whatever failed
        return models.ExitConditions(default=satisfy, pre_processing_error=satisfy, file_upload_error=satisfy)

    def _upload_inputs(self, group: list[PendingTask]) -> None:
        """Before a group is added: the task files too large to travel inline, uploaded as blobs."""
        large = [p.upload for p in group if p.upload is not None]
        if large:
            self.staging.upload_many(self.in_container, large)

    # ------------------------------------------------------------------ background work

    def start_adding(self) -> None:
        """Add the tasks on a thread of their own."""
        threading.Thread(
            target=self._guard, args=(self._submit,), name=f"azpar-submit-{self.job_id}", daemon=True
        ).start()

    def start_following(self) -> None:
        """Follow the job on a thread of its own (the spot fallback's checks ride on its polls)."""
        threading.Thread(
            target=self._guard, args=(self._follow,), name=f"azpar-follow-{self.job_id}", daemon=True
        ).start()

    def _guard(self, target) -> None:
        try:
            target()
        except Exception as exc:  # never leave the cell waiting forever: fail what is left
            if refused_by_the_exit(exc):  # not the job's failure: whoever attaches follows it on
                self.detach()
                return
            self._fail_remaining(f"the Azure backend lost track of the job: {type(exc).__name__}: {exc}")

    def _submit(self) -> None:
        pending = (self._definition(t) for t in self.tasks.values())  # built while the first groups are added
        # An empty pool is resized (or not, and the cell says why) by the backend while the first
        # tasks are added, before the follower starts: AzureBackend.submit and _make_room.

        def added(ids: list[str]) -> None:
            if self.added_at is None:
                self.added_at = time.monotonic()

        adder = TaskAdder(self.client, self.job_id, on_added=added, should_stop=self._stop.is_set)
        self.add_report = report = adder.add(pending, prepare=self._upload_inputs)
        for task_id, why in report.failed.items():
            self._emit(TaskEvent(self.job_id, task_id, "failed", error=why, failure_kind="infrastructure"))
        if self._stop.is_set():
            return
        if self.merge_cloud and report.added:
            self._add_merge_task(report.added)
        elif self.merge_cloud:
            self._without_merge()
        self._adding = False
        try:
            self.client.update_job(self.job_id, models.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
            self._count("update_job")
        except HttpResponseError:
            pass  # the job was cancelled meanwhile; the follower reports the tasks

    def _add_merge_task(self, added: Sequence[str]) -> None:
        """The merge task, depending on the tasks that were added (a task that could not be
        added would never complete, and a merge waiting for it would wait forever). If it
        cannot be added, results are read one by one instead."""
        n = len(self.tasks)
        read_results = self.staging.container_sas_url(self.out_container, "rl", self.expiry)
        ranges = _id_ranges(added)
        merge = models.BatchTaskCreateOptions(
            id=MERGE_TASK,
            command_line=commands.merge_command(self.packages, self.pip_options, n),
            resource_files=[models.ResourceFile(storage_container_url=read_results, blob_prefix="results/")],
            output_files=[self._output(commands.MERGED_FILE, commands.MERGED_FILE)],
            depends_on=models.BatchTaskDependencies(
                task_id_ranges=[models.BatchTaskIdRange(start=a, end=b) for a, b in ranges]
            ),
            container_settings=container_settings(self.profile),
            constraints=models.BatchTaskConstraints(max_task_retry_count=2),
        )
        try:
            self._create_merge_task(merge, ranges)
        except AzureError:
            self._without_merge()

    def _create_merge_task(self, merge: Any, ranges: list[tuple[int, int]]) -> None:
        """Add the merge task; TaskExists after a lost answer is success when the task there
        is this one (same command line and dependencies)."""

        def is_this_one() -> bool:
            there = self.client.get_task(self.job_id, MERGE_TASK, select=["id", "commandLine", "dependsOn"])
            self._count("get_task")
            deps = there.depends_on.task_id_ranges if there.depends_on else None
            return there.command_line == merge.command_line and [(r.start, r.end) for r in deps or []] == ranges

        self._post_once("create_task", lambda: self.client.create_task(self.job_id, merge), "TaskExists", is_this_one)

    # ------------------------------------------------------------------ following

    def _follow(self) -> None:
        """Follow the job (``_poll_loop``); while it runs, the views take their node list from here (``following``)."""
        self.following, self.changed_at = True, time.monotonic()
        try:
            self._poll_loop()
        finally:
            self.following = False

    def _poll_loop(self) -> None:
        """Poll the task counts; list what changed. Counts and filtered lists lag and calls
        fail (the spec: counts "may not always be up to date"), so what has been seen only
        advances after a list that succeeded, and an unfiltered sweep of the job's tasks
        runs every SWEEP_INTERVAL and whenever the counts say the job is done while results
        are missing (a task a filtered list skipped, as pypeliner met on real Batch).
        Polls start FIRST_POLL_GAP apart and space out to the poll interval (``_Pace``); they
        come close again after a change once at most TAIL_TASKS tasks are left (any completion
        may be the last), not while a long queue drains (that would multiply the calls of a
        large job)."""
        interval = self.context.poll_interval
        pace = _Pace(interval)
        last_counts: tuple[int, int, int] | None = None
        seen_completed = 0
        last_running = 0  # nothing runs yet: no listing until the counts say otherwise
        polls, running_gap, running_due = 0, 1, None  # running list repeated while it disagrees
        watermark: dt.datetime | None = None
        quiet_polls = 0
        sweep = _Sweeps(interval)
        while not self._stop.is_set():
            if self._done():
                return
            began = time.monotonic()
            self.asking("the Azure Batch service")
            try:
                counts = self.client.get_job_task_counts(self.job_id).task_counts
                self._count("get_job_task_counts")
            except ResourceNotFoundError:
                self.answered("the Azure Batch service")
                self._fail_remaining("the Batch job was deleted while it ran")
                return
            except AzureError as exc:
                self._count("get_job_task_counts_error")
                self.silence("the Azure Batch service", exc)
                self._stop.wait(interval)
                continue  # a transient error on a poll loses nothing: poll again
            self.answered("the Azure Batch service")
            self.spot.poll(counts.active)
            progressed = False
            if counts.completed > seen_completed:
                listed, watermark = self._collect_completed(watermark)
                if listed:  # a failed list leaves the counts to ask again next poll
                    seen_completed = counts.completed
                    progressed = True
            if sweep.due(self._missing_results(counts)):
                found = self._sweep_completed()
                if found is not None:
                    sweep.done(found)
                    progressed = progressed or found > 0
            polls += 1
            if counts.running != last_running or (running_due is not None and polls >= running_due):
                if counts.running != last_running:
                    running_gap, progressed = 1, True
                listed = self._collect_running()
                # The counts include preparing tasks and either view may lag: while the list
                # shows another number than the counts, ask again, less and less often.
                if listed is None or listed != counts.running:
                    running_due, running_gap = polls + running_gap, min(running_gap * 2, RUNNING_GAP_MAX)
                else:
                    running_due = None
                last_running = counts.running
            quiet_polls = 0 if progressed else quiet_polls + 1
            if quiet_polls and quiet_polls % STALL_CHECK_POLLS == 0 and counts.active and not counts.running:
                self._check_stalled()
            now_counts = (counts.active, counts.running, counts.completed)
            if last_counts is not None and now_counts[1:] != last_counts[1:]:
                self.changed_at = time.monotonic()
            changed = progressed or now_counts != last_counts
            last_counts = now_counts
            near_the_end = changed and counts.active + counts.running <= TAIL_TASKS
            self._stop.wait(pace.next(near_the_end, time.monotonic() - began))

    def _done(self) -> bool:
        with self._lock:
            return len(self._final) >= len(self.tasks)

    def all_final(self) -> bool:
        """Every task has had its final event (the engine is about to finish the job)."""
        return self._done()

    def _list(self, filter_text: str | None, select: list[str]) -> list[Any] | None:
        """The job's tasks (every page), or None when listing failed: the caller then
        keeps what it had seen, so the next poll asks again."""
        self._count("list_tasks")
        try:
            return list(self.client.list_tasks(self.job_id, filter=filter_text, select=select))
        except AzureError:
            self._count("list_tasks_error")
            return None

    def _collect_running(self) -> int | None:
        """Report tasks that started; how many the list showed running (None: it failed)."""
        running = self._list("state eq 'running'", ["id", "nodeInfo"])
        for task in running or []:
            if task.id in self.tasks and task.id not in self._started:
                self._started.add(task.id)
                node = task.node_info.node_id if task.node_info else None
                self._emit(TaskEvent(self.job_id, task.id, "started", node=node), final=False)
        return None if running is None else len(running)

    def _collect_completed(self, watermark: dt.datetime | None) -> tuple[bool, dt.datetime | None]:
        """(listed, new watermark): tasks completed since the watermark, handed to the
        download threads; the watermark moves only when the list succeeded."""
        text = "state eq 'completed'"
        if watermark is not None:
            # ge with the last time seen: a task completing in the same instant is not missed
            text += f" and stateTransitionTime ge datetime'{watermark.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}'"
        tasks = self._list(text, _COMPLETED_FIELDS)
        if tasks is None:
            return False, watermark
        newest = watermark
        for task in tasks:
            if newest is None or (task.state_transition_time and task.state_transition_time > newest):
                newest = task.state_transition_time
        self._take_completed(tasks)
        return True, newest

    def _sweep_completed(self) -> int | None:
        """Every task of the job, unfiltered (an unfiltered list does not depend on the
        index a filter reads): the completed ones not seen before are handled. Returns how
        many were new, or None when the list failed."""
        self._count("sweep")
        tasks = self._list(None, _SWEEP_FIELDS)
        if tasks is None:
            return None
        completed = [t for t in tasks if state_name(t.state) == "completed"]
        with self._lock:
            new = sum(1 for t in completed if t.id not in self._seen_completed)
        self._take_completed(completed)
        return new

    def _take_completed(self, tasks: Sequence[Any]) -> None:
        merge_done = None
        for task in tasks:
            with self._lock:
                self._seen_completed.add(task.id)
            if task.id == MERGE_TASK:
                merge_done = task
                continue
            self._fetch_in_background(task)
        if merge_done is not None:
            with self._lock:
                if self._merge_read:
                    return
                self._merge_read = True
                self._handling.add(MERGE_TASK)
            self._downloads.submit(self._guard_task, merge_done)

    def _missing_results(self, counts: Any) -> bool:
        """The counts say every task is done, yet some results have not arrived and none
        is being read: a list skipped a task (or failed at the last moment)."""
        if self._adding or counts.active or counts.running or not counts.completed:
            return False
        with self._lock:
            return not self._handling and len(self._final) < len(self.tasks)

    def _fetch_in_background(self, task: Any) -> None:
        """Read a completed task's result on the download threads, unless it is not this
        run's, already delivered, or already being read."""
        with self._lock:
            if task.id not in self.tasks or task.id in self._final or task.id in self._handling:
                return
            self._handling.add(task.id)
        self._downloads.submit(self._guard_task, task)

    def _guard_task(self, task: Any) -> None:
        try:
            if task.id == MERGE_TASK:
                self._read_merged(task)
            else:
                self._handle_completed(task)
        except Exception as exc:
            if refused_by_the_exit(exc):  # a pool of the SDK's (a large result) as Python exits: see _guard
                self.detach()
                return
            self._emit(
                TaskEvent(
                    self.job_id,
                    task.id,
                    "failed",
                    retryable=False,
                    error=f"the task's result could not be read: {type(exc).__name__}: {exc}",
                )
            )
        finally:
            with self._lock:
                self._handling.discard(task.id)

    def _handle_completed(self, task: Any) -> None:
        info = task.execution_info
        node = task.node_info.node_id if task.node_info else None
        if info is not None and info.start_time and info.end_time:
            self._ran[task.id] = (info.end_time - info.start_time).total_seconds()
        if task.id in self._cancelled or self._all_cancelled:
            self._emit(
                TaskEvent(self.job_id, task.id, "failed", node=node, error="cancelled", failure_kind="cancelled")
            )
            return
        failure = info.failure_info if info else None
        code = getattr(failure, "code", None)
        if code == "TaskEnded":
            self._emit(
                TaskEvent(
                    self.job_id, task.id, "failed", node=node, error="the task was terminated", failure_kind="cancelled"
                )
            )
            return
        if code == "MaxWallClockTimeExceeded":
            self._emit(
                TaskEvent(
                    self.job_id,
                    task.id,
                    "failed",
                    node=node,
                    failure_kind="timeout",
                    error=f"the task ran longer than its --timeout of {self.spec.timeout:g} s and did not stop there: "
                    f"Batch ended it {timeout_grace(self.spec.timeout):g} s later",
                )
            )
            return
        exit_code = getattr(info, "exit_code", None)
        if failure is not None and _is_download_failure(str(code), getattr(failure, "message", None) or ""):
            self._emit(
                TaskEvent(
                    self.job_id,
                    task.id,
                    "failed",
                    node=node,
                    retryable=False,
                    error=self._download_failure("the task", failure),
                )
            )
            return
        if failure is not None and code != "FileUploadMiscError" and not str(code).startswith("FileUpload"):
            retries = getattr(info, "retry_count", 0) or 0
            tail = self._stderr_tail(task.id)
            self._emit(
                TaskEvent(
                    self.job_id,
                    task.id,
                    "failed",
                    node=node,
                    retryable=False,
                    error=f"the worker failed with {code} (exit code {exit_code}) after "
                    f"{retries + 1} attempt(s) on node {node}" + (f": {tail}" if tail else ""),
                )
            )
            return
        if failure is None and self._defer(task.id):
            return
        self._deliver(task.id, node, self._fetch_result(task.id))

    def _defer(self, task_id: str) -> bool:
        """Merge mode: the result comes with the merged blob (False once there is no merge)."""
        with self._lock:
            if self.merge_cloud:
                self._deferred.append(task_id)
            return self.merge_cloud

    def _without_merge(self) -> None:
        """No merge task will run (it could not be added): results are read one by one,
        those already waiting for it included."""
        with self._lock:
            self.merge_cloud = False
            deferred, self._deferred = list(self._deferred), []
        for task_id in deferred:
            self._deliver(task_id, None, self._fetch_result(task_id))

    def _fetch_result(self, task_id: str) -> bytes | None:
        """The result blob; when its upload failed, the file on the node (nothing is lost
        while the node keeps the task's folder)."""
        data = self._from_storage(lambda: self.staging.download(self.out_container, f"results/{task_id}.azpr"))
        if data is not None:
            return data
        try:
            self._count("download_task_file")
            return b"".join(self.client.download_task_file(self.job_id, task_id, f"wd/{commands.RESULT_FILE}"))
        except AzureError:
            return None

    def _from_storage(self, call: Callable[[], bytes | None]) -> bytes | None:
        """``call()`` against Storage, waiting out an outage (the panel says since when it has
        not answered) instead of failing a finished task's result; cancelling stops the wait."""
        while True:
            self.asking("Azure Storage")
            try:
                data = call()
            except (ServiceRequestError, ServiceResponseError) as exc:
                self.silence("Azure Storage", exc)
            except HttpResponseError as exc:
                if (exc.status_code or 0) < 500:
                    self.answered("Azure Storage")  # it answered, with a refusal
                    raise
                self.silence("Azure Storage", exc)
            except BaseException:
                self.answered("Azure Storage")
                raise
            else:
                self.answered("Azure Storage")
                return data
            if self._stop.wait(self.context.poll_interval):
                raise AzureServiceError("Azure Storage did not answer before the job was stopped")

    def _deliver(self, task_id: str, node: str | None, data: bytes | None) -> None:
        if data is None:
            self._emit(
                TaskEvent(
                    self.job_id,
                    task_id,
                    "failed",
                    node=node,
                    retryable=True,
                    error="the task finished but its result could not be fetched from storage or from the node",
                )
            )
            return
        result = wire.read_result(data)
        if result.get("environment_error"):
            self._emit(
                TaskEvent(
                    self.job_id,
                    task_id,
                    "failed",
                    node=node,
                    failure_kind="environment",
                    error=result["environment_error"],
                )
            )
            return
        self._emit(TaskEvent(self.job_id, task_id, "finished", node=node, result=self.data.fetch(task_id, result)))

    def _read_merged(self, task: Any) -> None:
        data = self.staging.download(self.out_container, commands.MERGED_FILE)
        with self._lock:
            deferred = set(self._deferred)
        merged = dict(wire.read_merged(data)) if data is not None else {}
        for task_id in sorted(deferred, key=int):
            result = merged.get(int(task_id))
            if result is None:  # missing from the merge: read it on its own
                self._deliver(task_id, None, self._fetch_result(task_id))
            elif result.get("environment_error"):
                self._emit(
                    TaskEvent(
                        self.job_id, task_id, "failed", failure_kind="environment", error=result["environment_error"]
                    )
                )
            else:
                self._emit(TaskEvent(self.job_id, task_id, "finished", result=self.data.fetch(task_id, result)))

    def _stderr_tail(self, task_id: str, limit: int = 600) -> str:
        data = self.staging.download(self.out_container, f"logs/{task_id}/stderr.txt")
        if data is None:
            try:
                data = b"".join(self.client.download_task_file(self.job_id, task_id, "stderr.txt"))
            except AzureError:
                return ""
        text = data.decode("utf-8", "replace").strip()
        return text[-limit:]

    def _check_stalled(self) -> None:
        """Tasks wait and nothing runs: a failed job preparation or start task would keep
        them waiting forever, so say what failed instead."""
        try:
            nodes = list(
                self.client.list_nodes(self.profile["pool_id"], select=["id", "state", "startTaskInfo", "errors"])
            )
            self._count("list_nodes")
        except AzureError:
            return
        if nodes and all(state_name(n.state) in _TERMINAL_NODE_STATES for n in nodes):
            self._fail_remaining(self._image_pull_failure(nodes) or self._start_task_failure(nodes))
            return
        if not nodes:
            why = "" if self.spot.rescue() else self._quota_shortfall()  # dedicated_fallback first (spot.py)
            if why:
                self._fail_remaining(why)
            return
        try:
            statuses = list(self.client.list_job_preparation_and_release_task_status(self.job_id))
            self._count("list_job_preparation_and_release_task_status")
        except AzureError:
            return
        failed = [
            s
            for s in statuses
            if s.job_preparation_task_execution_info
            and state_name(s.job_preparation_task_execution_info.result) == "failure"
        ]
        if failed and len(failed) >= len([n for n in nodes if state_name(n.state) in ("idle", "running")]):
            self._fail_remaining(self._prep_failure(failed[0]))

    def _quota_shortfall(self) -> str:
        """The pool has no node and its last resize stopped at the account's core quota
        (AccountCoreQuotaReached and the like): nothing will run until someone raises the
        quota or changes the profile, so say that rather than wait. "" otherwise (a pool
        still resizing, or short for a reason that may pass, such as spot capacity)."""
        try:
            found = pool_status(self.client, self.profile["pool_id"])
            self._count("get_pool")
        except AzureError:
            return ""
        if found is None or found.allocation_state != "steady" or not found.quota_errors():
            return ""
        return (
            f"the pool {found.pool_id} has no nodes and cannot get any: {'; '.join(found.quota_errors())}. "
            f"The Batch account's core quota (dedicated and spot are separate quotas) is too small for "
            f"{found.vm_size} nodes: request an increase on the Batch account's Quotas page in the Azure portal, "
            "or "
            "choose a smaller vm_size or the other kind of node in the profile, then rerun these iterations "
            f"(%azpar rerun {self.job_id} --failed)"
        )

    def _image_pull_failure(self, nodes: Sequence[Any]) -> str:
        """The pool's nodes are unusable because the container image could not be pulled
        (a node error such as ContainerInvalidImage naming the image): say so, and how to fix
        it, instead of blaming the start task, which never ran. "" when no node says that."""
        for node in nodes:
            for error in node.errors or []:
                details = {d.name: d.value for d in error.error_details or [] if d.name}
                if not (str(error.code or "").startswith("Container") or "ContainerImage" in details):
                    continue
                image = details.get("ContainerImage") or self.profile["container_image"]
                said = "; ".join(x for x in (error.message, details.get("Message")) if x)
                return (
                    f"no node of the pool could pull the container image {image} ({error.code}: {said}). Check "
                    "the profile's container_image (name and tag) and, for a private registry, registry_server "
                    "and its credentials; the pool's nodes stay unusable, so after fixing the profile delete the "
                    "pool (%azpar pool delete) and run the cell again to create it with that image"
                )
        return ""

    def _start_task_failure(self, nodes: Sequence[Any]) -> str:
        """Every node failed its start task: its code, and the end of its stderr read from a
        node through the node file API (``startup/stderr.txt``), where pip says why."""
        why = "every node of the pool failed its start task (installing dill and the profile's packages)"
        failed = [n for n in nodes if n.start_task_info is not None and n.start_task_info.failure_info is not None]
        if failed:
            info = failed[0].start_task_info.failure_info
            why += f": {info.code}: {info.message}"
        tail = self._node_stderr(failed[0] if failed else nodes[0], "startup/stderr.txt")
        return why + (f"\nthe end of its stderr on node {(failed or nodes)[0].id}:\n{tail}" if tail else "")

    def _node_stderr(self, node: Any, path: str, limit: int = 1500) -> str:
        """The end of a file on a node of the pool, read through the files API; "" when it
        cannot be read (the node is gone, or the call was refused)."""
        try:
            self._count("download_node_file")
            data = b"".join(self.client.download_node_file(self.profile["pool_id"], node.id, path))
        except AzureError:
            return ""
        return data.decode("utf-8", "replace").strip()[-limit:]

    def _prep_failure(self, status: Any) -> str:
        """Why the job preparation task failed, named by its cause: a resource file that
        could not be downloaded (a cached blob removed from storage: this kernel forgets
        what it uploaded, so the next cell uploads it again), the node's Python not being the
        kernel's (the check's own paragraph, which names both versions and the image to use), or
        the install of the job's requirements, with pip's own last lines read from the node."""
        info = status.job_preparation_task_execution_info
        detail = info.failure_info
        code = getattr(detail, "code", None) or ""
        message = getattr(detail, "message", None) or ""
        if _is_download_failure(code, message):
            return self._download_failure("the job preparation task", detail)
        tail = self._prep_stderr(status)
        own = [line for line in tail.splitlines() if line.startswith("azpar: this node runs Python")]
        if own:
            return own[-1].removeprefix("azpar: ") + " No iteration ran."
        return self._install_failure(code, message, tail)

    def _install_failure(self, code: str, message: str, tail: str) -> str:
        """The job's requirements could not be installed: what was asked, pip's message (the end
        of the job preparation task's stderr) and the ways out."""
        specs = list(self.install.specs)
        if not specs:
            why = "the job preparation task failed on every node" + (f": {code}: {message}" if code else "")
            return why + (f"\n{tail}" if tail else "")
        shown = " ".join(specs[:12]) + (f" and {len(specs) - 12} more" if len(specs) > 12 else "")
        what = (
            f"the job's requirements ({shown}: the kernel's versions of what the cell uses"
            f"{', with --packages' if self.packages else ''})"
            if self.auto_packages
            else f"--packages {shown}"
        )
        fix = (
            (
                "Pin a version the index has with --packages NAME==VERSION, give the profile's pip_options the "
                "index or --find-links folder that has it, or bake the packages into container_image and set "
                "auto_packages = false (or --no-auto-packages)"
            )
            if self.auto_packages
            else ("Fix the --packages requirement or the profile's pip_options")
        )
        return (
            f"the job preparation task could not install {what} on the pool's nodes, so no iteration ran "
            f"({code or 'failed'}). {fix}." + (f" pip said:\n{_once(tail)}" if tail else "")
        )

    def _download_failure(self, who: str, detail: Any) -> str:
        """A resource file could not be downloaded: most likely a cached blob was removed.
        This kernel forgets what it uploaded, so the next cell checks and uploads again."""
        self.staging.forget(storage.CACHE_CONTAINER)
        code = getattr(detail, "code", None) or ""
        message = (getattr(detail, "message", None) or "").strip()
        details = {d.name: d.value for d in (getattr(detail, "details", None) or []) if d.name}
        what = details.get("FilePath") or "a resource file"
        return (
            f"{who} could not download {what} ({code}: {message.splitlines()[0][:200] if message else ''}): "
            "a blob the job needs is missing or unreadable in storage, e.g. removed from the "
            f"{storage.CACHE_CONTAINER} container by %azpar storage rm, a lifecycle rule or a storage "
            "emulator restart. This kernel forgot what it had uploaded there: run the cell again to upload it anew"
        )

    def _prep_stderr(self, status: Any, limit: int = 1500) -> str:
        """The end of the job preparation task's stderr (pip says there why an install
        failed), read from its node through the files API; empty when it cannot be read."""
        info = status.job_preparation_task_execution_info
        url = getattr(info, "task_root_directory_url", None) or ""
        root = url.split("/files/", 1)[1] if "/files/" in url else (info.task_root_directory or "")
        if "workitems/" in root:
            root = root[root.index("workitems/") :]
        if not root or not status.node_id:
            return ""
        try:
            self._count("download_node_file")
            data = b"".join(
                self.client.download_node_file(
                    status.pool_id or self.profile["pool_id"], status.node_id, f"{root.rstrip('/')}/stderr.txt"
                )
            )
        except AzureError:
            return ""
        return data.decode("utf-8", "replace").strip()[-limit:]

    # ------------------------------------------------------------------ events and ending

    def asking(self, service: str) -> None:
        """A call to ``service`` starts: if it hangs (an address that drops packets waits for
        the connection timeout, minutes), the views say so from SILENCE_NOTICE seconds on."""
        with self._lock:
            if service not in self._silent:
                self._silent[service] = (time.time(), time.monotonic(), "")

    def silence(self, service: str, exc: BaseException) -> None:
        """A call to ``service`` failed: remember since when it has not answered (the panel
        says so after SILENCE_NOTICE seconds instead of showing "running" with no word)."""
        error = _short_error(exc)
        with self._lock:
            since = self._silent.get(service)
            self._silent[service] = (since[0], since[1], error) if since else (time.time(), time.monotonic(), error)

    def answered(self, service: str) -> None:
        if self._silent:
            with self._lock:
                self._silent.pop(service, None)

    def unanswered(self) -> str:
        """A sentence for each service silent for SILENCE_NOTICE seconds or more, then the spot fallback's
        (spot.py: "spot nodes preempted after 5 min: 2 dedicated nodes added"), else ""."""
        with self._lock:
            silent = dict(self._silent)
        now = time.monotonic()
        said = []
        for service, (wall, mono, error) in sorted(silent.items()):
            if now - mono >= SILENCE_NOTICE:
                at = dt.datetime.fromtimestamp(wall).strftime("%H:%M:%S")
                said.append(f"{service} is not answering since {at} ({_ago(now - mono)}): {error or 'no reply yet'}")
        spot = self.spot.note()
        return "; ".join([*said, spot] if spot else said)

    def _emit(self, event: TaskEvent, final: bool = True) -> None:
        if final and event.ran is None and event.task_id in self._ran:
            event = replace(event, ran=self._ran.pop(event.task_id))
        with self._lock:
            if self._closed or event.task_id in self._final:
                return
            if final and not event.retryable:
                self._final.add(event.task_id)
                if event.kind == "failed" or (event.result or {}).get("failed"):
                    self.failed_any = True  # keep the job, its logs and results for inspection
        self.on_event(event)

    def reactivate(self, task_id: str) -> None:
        with self._lock:
            self._started.discard(task_id)
        try:
            self.client.reactivate_task(self.job_id, task_id)
            self._count("reactivate_task")
        except HttpResponseError as exc:
            self._emit(
                TaskEvent(self.job_id, task_id, "failed", retryable=False, error=self._reactivation_refused(exc))
            )

    @staticmethod
    def _reactivation_refused(exc: HttpResponseError) -> str:
        """Why Batch would not run the task again, by its code (REST spec, ReactivateTask:
        refused for a task that exited 0 and in a completed or terminating job)."""
        code = _error_code(exc) or str(exc.reason or exc.status_code)
        if code == "TaskCompleted":
            return (
                "the task ran (exit code 0) but its result could not be fetched from storage or from the node, and "
                "Batch does not run again a task that exited 0 (TaskCompleted); run the missing iterations "
                "with a new cell"
            )
        if code in ("JobCompleted", "JobBeingTerminated", "JobBeingDeleted"):
            return (
                f"its result could not be fetched and the task could not be run again: the Batch job had already "
                f"ended ({code}); run the missing iterations with a new cell"
            )
        return (
            f"its result could not be fetched and Batch refused to run the task again ({_short_error(exc)}); "
            "run the missing iterations with a new cell"
        )

    def cancel(self, task_ids: Sequence[str] | None) -> None:
        if task_ids is None:
            self._stop.set()
            try:
                self._terminating = self.client.begin_terminate_job(
                    self.job_id, options=_terminate_options("cancelled by the user"), polling_interval=0.5
                )
                self._count("terminate_job")
            except AzureError:
                pass
            self._keep_finished()
            self._all_cancelled = True
            self._fail_remaining("cancelled", kind="cancelled")
            return
        with self._lock:
            self._cancelled.update(task_ids)
        for task_id in task_ids:
            try:
                self.client.terminate_task(self.job_id, task_id)
                self._count("terminate_task")
            except (AzureError, ValueError):  # ValueError: the backend was closed meanwhile
                pass

    def _keep_finished(self, timeout: float = 30.0) -> None:
        """Before a cancelled job's other tasks are reported cancelled: fetch the results of
        every task Batch completed that this run has not delivered yet (the follower had not
        seen them, or a kernel ended before it did), so cancelling never loses one."""
        self.merge_cloud = False
        with self._lock:
            deferred, self._deferred = list(self._deferred), []
        for task_id in deferred:  # merge mode: succeeded tasks waiting for the merged blob
            self._deliver(task_id, None, self._fetch_result(task_id))
        tasks = self._list(None, _SWEEP_FIELDS)  # unfiltered: a filtered list may lag
        for task in tasks or []:
            if state_name(task.state) == "completed" and task.id != MERGE_TASK:
                self._fetch_in_background(task)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._handling:
                    return
            time.sleep(0.02)

    def _fail_remaining(self, why: str, kind: str = "infrastructure") -> None:
        for task_id in self.tasks:
            self._emit(TaskEvent(self.job_id, task_id, "failed", error=why, failure_kind=kind))
        self._stop.set()

    def detach(self) -> None:
        """No event reaches the job from now on, and the follower and the adder stop; what the run
        holds stays open (``close`` shuts it). Also when Python's exit keeps a result from being read
        (``threads.refused_by_the_exit``): the job is not failed for it, and whoever attaches reads it."""
        with self._lock:
            self._closed = True
        self._stop.set()

    def close(self) -> None:
        """Stop following the job. At a kernel's exit the Batch job runs on for whoever attaches, so
        from here on no event reaches the job: a poll or download still in flight fails once the
        executor and the clients are shut, and reporting that would record every task left as
        failed in the job store, and the job as ended (the next kernel's attach would then take
        neither the results nor the cancel). Tasks without a final record are followed again by
        the kernel that attaches."""
        self.detach()
        self.spot.close()  # the pool's size from before a spot fallback
        if self._terminating is not None:
            try:
                self._terminating.result(timeout=30)
            except Exception:  # the job ends by itself anyway; closing must not fail on it
                pass
        self._downloads.shutdown(wait=False)
