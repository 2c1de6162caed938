"""The Azure Batch backend: the engine's Backend protocol over a Batch pool and a Storage
account described by a profile (DESIGN section 5).

What the backend's parts share (profile, accounts, clients built on first use) is an
``AzureContext``. The pool is attached to (or created) once per backend; each cell run is an
``AzureRun`` with its own job, containers and threads, given the context, not the backend.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from azure.core.exceptions import AzureError

from ...config import Profile, check_profile
from ...errors import ConfigError
from ...jobs import NodeInfo
from ...jobs.cost import Price
from ..base import BaseBackend, EventSink, JobSpec, TaskSpec
from . import errors, pool, storage
from .context import AzureContext
from .files import check_blobs
from .prices import ahead_note, node_prices as profile_prices, pool_cost_note, vcpus_of
from .run import MANIFEST_BLOB, AzureRun, nodes_still_fresh

logger = logging.getLogger(__name__)
NODE_CACHE_SECONDS = 1.0


class AzureBackend(BaseBackend):
    """Runs tasks on an Azure Batch pool; stages through Blob storage. It has every optional
    capability of base.BaseBackend."""

    name = "azure"
    size_label = "VM size"
    reads_options = frozenset({"packages", "auto_packages", "merge", "keep", "max_cost"})
    blob_inputs = True  # az:// paths in --inputs and --outputs-to (data.py)
    files_are_remote = True  # nodes see only what --inputs brings
    outlives_kernel = True  # a Batch job runs on when the kernel ends; attach takes it over later
    installs_packages = True  # the nodes install the kernel's distributions (--packages, auto_packages)
    pool_admin = True  # %azpar pool, the configuration form's buttons

    def __init__(self, profile: Profile, *, environ: dict[str, str] | None = None, **_settings: Any):
        check_profile(profile)
        self.context = AzureContext(profile, environ)
        self.profile = profile
        self.accounts = self.context.accounts
        self._lock = threading.RLock()
        self._runs: dict[str, AzureRun] = {}
        self._nodes: tuple[float, list[NodeInfo]] = (0.0, [])
        self._pool_ready = False
        self.resized_for_run = False  # an empty autoscale pool was resized for a run
        # May this identity write the pool? False: never try (create_pool = false: the pool is the
        # administrator's, its size and formula too), or a write was refused for the role (403).
        self.pool_writes: bool | None = None if profile["create_pool"] else False
        self._background: list[threading.Thread] = []  # cleanups close() waits for

    # ------------------------------------------------------------------ clients

    @property
    def client(self) -> Any:
        return self.context.client

    @property
    def staging(self) -> storage.Staging:
        return self.context.staging

    def blob_storage(self) -> storage.Staging:
        """The profile's storage account, for ``azpar storage``."""
        return self.context.staging

    # ------------------------------------------------------------------ protocol

    def describe(self) -> str:
        return (
            f"Azure Batch pool {self.profile['pool_id']} ({self.profile['vm_size']}) of "
            f"{self.accounts.batch_url} (profile {self.profile.name})"
        )

    def pool_info(self) -> tuple[str, str]:
        return self.profile["pool_id"], self.profile["vm_size"]

    def node_prices(self) -> Price:
        """The profile's prices, else the retail list price of its size and region (prices.py)."""
        return profile_prices(self.profile)

    def cores_per_task(self) -> float:
        return vcpus_of(self.profile["vm_size"]) / max(1, int(self.profile["task_slots_per_node"]))

    def cost_cap(self) -> float | None:
        return float(self.profile["max_cost_per_job"]) or None

    def _cost_ahead(self, dedicated: int, spot: int) -> str:
        if dedicated + spot == 0:
            return ""
        return ahead_note(self.profile["pool_id"], self.profile["vm_size"], dedicated, spot, self.node_prices())

    def cost_note(self) -> str:
        """The pool's burn rate now and since when it is idle (prices.burn_note)."""
        return pool_cost_note(self.client, self.profile["pool_id"], self.node_prices())

    def default_chunk_size(self, n_items: int) -> int:
        return 1  # one task per iteration: Batch schedules, retries and reports per task

    def start(self) -> None:
        with self._lock:
            if self._pool_ready:
                return
            try:
                _, created = pool.ensure(self.client, self.profile, self.context.registry_password())
                logger.info("pool %s %s", self.profile["pool_id"], "created" if created else "exists")
                if created and not self.profile["autoscale"]:  # what the new pool costs an hour (issue 19)
                    self._say(self._cost_ahead(self.profile["dedicated_nodes"], self.profile["spot_nodes"]))
            except AzureError as exc:
                what = f"the pool {self.profile['pool_id']!r} could not be reached or created"
                raise errors.translate(exc, what) from None
            self._pool_ready = True

    def submit(self, job: JobSpec, tasks: Sequence[TaskSpec], on_event: EventSink) -> None:
        self.start()
        run = AzureRun(self.context, job, tasks, on_event)
        try:
            run.stage()
        except BaseException as exc:
            # Whatever stopped it (the service, a setting, an error stage() words itself, Ctrl-C), what
            # it staged goes: the translated errors of create-job (a full job quota, too large a job)
            # left the job's containers behind. Only what it made: a job of the same id that is not
            # this run's, and containers it found, stay.
            self._remove_staged(run)
            if isinstance(exc, ConfigError):  # a setting, not the service: the message as before, not translated
                raise RuntimeError(f"staging the job on Azure failed: {errors.describe(exc)}") from None
            if isinstance(exc, AzureError):
                raise errors.translate(exc, "staging the job on Azure failed") from None
            raise
        self._say(storage.delegation_note(self.staging, run.lifetime))
        logger.info("job %s staged on pool %s; adding %d tasks", job.job_id, self.profile["pool_id"], len(tasks))
        with self._lock:
            self._runs[job.job_id] = run
        # The tasks are added while the pool is looked at (and an empty one resized): that look
        # was 45-50 ms before the first add of every cell (issue 16 f), and Batch queues tasks
        # whatever the pool's size. The follower starts after it, so the spot fallback's first
        # look at the pool comes after this run's resize, as before.
        run.start_adding()
        try:
            self._make_room(len(tasks))
        finally:
            run.start_following()

    @staticmethod
    def _say(line: str) -> None:
        """One line in the cell (stderr of the thread running it), before the run starts."""
        if line:
            print(f"azpar: {line}", file=sys.stderr)

    def _make_room(self, n_tasks: int) -> None:
        """An interactive run on an empty pool asks for nodes now (autoscale lags minutes), if
        this identity may write the pool; otherwise it says once why it does not, and the tasks
        wait in the queue for the pool's own autoscale or its administrator."""
        try:
            found = pool.status(self.client, self.profile["pool_id"])
        except AzureError:
            return  # the follower names a service that does not answer; the tasks are added regardless
        if found is None or found.dedicated + found.spot + found.target_dedicated + found.target_spot > 0:
            return
        dedicated, spot = pool.nodes_needed(self.profile, n_tasks)
        if dedicated + spot == 0:
            return
        if self.pool_writes is not False:
            try:
                logger.info("pool %s is empty: resizing to %d dedicated + %d spot", found.pool_id, dedicated, spot)
                pool.resize(self.client, self.profile["pool_id"], dedicated, spot)
            except AzureError as exc:  # the job is staged already: say why, and let the tasks wait
                if pool.write_refused(exc):
                    self.pool_writes = False
                    why = (
                        f"this identity may not resize it (403 AuthorizationFailed: {pool.SUBMIT_ONLY_ROLE} "
                        f"reads pools but cannot write them; {pool.POOL_WRITE_ROLE} can)"
                    )
                else:
                    why = f"the resize failed ({errors.describe(exc)})"
                    self.resized_for_run = found.autoscale  # autoscale may be off already: finish() restores it
            else:
                self.pool_writes = True
                self.resized_for_run = found.autoscale
                self._say(self._cost_ahead(dedicated, spot))
                return
        else:
            why = "the profile says create_pool = false (the pool, its size and formula are the administrator's)"
        waits = (
            "its autoscale formula adds nodes (evaluated every 5 minutes or more)"
            if found.autoscale
            else "its administrator resizes it"
        )
        self._say(
            f"pool {self.profile['pool_id']} has no nodes and is not resized for this run: {why}; "
            f"the tasks are queued and start when {waits}."
        )

    def manifest_info(self, job_id: str, backend_options: dict[str, Any]) -> dict[str, Any]:
        """Where the job lives on Azure, for the job store's manifest: enough for a later
        kernel to find and follow it (never a key or a SAS token)."""
        return {
            "outlives_kernel": True,
            "profile": self.profile.name,
            "batch_account_url": self.accounts.batch_url,
            "batch_job_id": job_id,
            "pool_id": self.profile["pool_id"],
            "storage_account_url": self.accounts.storage_url,
            "containers": {
                "inputs": storage.input_container(job_id),
                "outputs": storage.output_container(job_id),
                "cache": storage.CACHE_CONTAINER,
            },
            "manifest_blob": f"{storage.input_container(job_id)}/{MANIFEST_BLOB}",
            "packages": list(backend_options.get("packages") or []),
            "auto_packages": bool(self.profile["auto_packages"]) and backend_options.get("auto_packages") is not False,
            "merge": backend_options.get("merge") or "client",
            "keep": bool(backend_options.get("keep")) or bool(self.profile["keep"]),
        }

    def image_packages(self) -> tuple[dict[str, str] | None, str]:
        """What the pool's image has installed, as a node of the pool reported it (``%azpar env``)."""
        return pool.image_packages(self.client, self.profile["pool_id"])

    def staged_namespace(self, manifest: dict[str, Any], file_name: str) -> bytes | None:
        """The namespace bytes a stored job staged (``ns/FILE`` in its cache container), for
        ``%azpar debug`` in the kernel; None when the blob is gone (removed by ``%azpar storage
        rm``, a lifecycle rule or by hand). The job store keeps the envelope, not these bytes."""
        info = manifest.get("backend_info") or {}
        if info.get("storage_account_url") not in (None, self.accounts.storage_url):
            raise RuntimeError(
                f"job {manifest.get('id')} staged its namespace in {info['storage_account_url']}, but "
                f"profile {self.profile.name!r} now points at {self.accounts.storage_url}; restore the "
                "profile's storage account to debug it"
            )
        container = (info.get("containers") or {}).get("cache") or storage.CACHE_CONTAINER
        try:
            return self.staging.download(container, f"ns/{file_name}")
        except AzureError as exc:
            raise errors.translate(exc, f"the namespace blob {container}/ns/{file_name} could not be read") from None

    def reattach(
        self,
        job_id: str,
        manifest: dict[str, Any],
        tasks: Sequence[TaskSpec],
        on_event: EventSink,
        *,
        failed_before: bool = False,
    ) -> None:
        """Follow a job an earlier kernel submitted (``tasks``: those without a final record
        in the job store), adding the ones that kernel had not added before it ended.
        ``failed_before``: some iteration had failed already, so the job is kept at the end."""
        info = manifest.get("backend_info") or {}
        if info.get("batch_account_url") not in (None, self.accounts.batch_url):
            raise RuntimeError(
                f"job {job_id} ran on {info['batch_account_url']}, but profile {self.profile.name!r} "
                f"now points at {self.accounts.batch_url}; restore the profile's account to follow it"
            )
        options = manifest.get("options") or {}
        spec = JobSpec(
            job_id,
            {},
            b"",
            timeout=options.get("timeout"),
            cwd=manifest.get("cwd"),
            retries=int(options.get("retries", 2)),
            backend_options={"packages": info.get("packages") or [], "keep": info.get("keep")},
            manifest=manifest,
        )
        try:
            run = AzureRun(self.context, spec, tasks, on_event)
            run.failed_any = failed_before
            run.resume()
        except AzureError as exc:
            raise errors.translate(exc, "the job's storage could not be reached") from None
        with self._lock:
            self._runs[job_id] = run

    def delete_job(
        self, job_id: str, *, strict: bool = True, batch_job: bool = True, containers: Sequence[str] | None = None
    ) -> None:
        """Remove a job's Batch job and its containers (already gone: fine). ``strict``:
        a failure stops and is raised (``%azpar delete``, which then keeps the local copy);
        otherwise every part is tried and failures are ignored (cleanup after a run).
        ``batch_job``/``containers``: only those parts (a failed staging removes what it made)."""
        from azure.core.exceptions import ResourceNotFoundError

        def container(name: str) -> Callable[[], object]:
            return lambda: self.staging.delete_container(name)  # the client is made when first needed

        parts: list[tuple[str, Callable[[], object]]] = []
        if batch_job:
            parts.append(
                (
                    f"the Batch job {job_id}",
                    lambda: self.client.begin_delete_job(job_id, polling_interval=0.5).result(timeout=120),
                )
            )
        if containers is None:
            containers = [
                storage.input_container(job_id),
                storage.output_container(job_id),
                storage.files_container(job_id),
            ]
        parts += [(f"the container {name}", container(name)) for name in containers]
        for what, delete in parts:
            try:
                delete()
            except ResourceNotFoundError:
                pass
            except (AzureError, ValueError) as exc:  # ValueError: the client was closed meanwhile
                if strict:
                    raise errors.translate(exc, f"{what} could not be deleted") from None

    def check_data(self, plan: Any) -> None:
        """--inputs az://...: each must select blobs, listed now, before anything is submitted."""
        check_blobs(self.staging, plan)

    def resubmit(self, job_id: str, task: TaskSpec) -> None:
        run = self._runs.get(job_id)
        if run is not None:
            run.reactivate(task.task_id)

    def nodes(self) -> list[NodeInfo]:
        stamp, cached = self._nodes
        if time.monotonic() - stamp < NODE_CACHE_SECONDS or not self.context.connected:
            return cached
        if nodes_still_fresh(stamp, cached, list(self._runs.values())):  # the followers' polls say nothing moved
            return cached
        try:
            found = [
                NodeInfo(n.id, pool.state_name(n.state), None, bool(n.is_dedicated))
                for n in self.client.list_nodes(self.profile["pool_id"], select=["id", "state", "isDedicated"])
            ]
        except AzureError:
            found = cached
        self._nodes = (time.monotonic(), found)
        return found

    def unanswered(self, job_id: str) -> str:
        """The job's views say when Batch or Storage has stopped answering (else "")."""
        run = self._runs.get(job_id)
        return run.unanswered() if run is not None else ""

    def cancel(self, job_id: str, task_ids: Collection[str] | None = None) -> None:
        run = self._runs.get(job_id)
        if run is not None:
            run.cancel(list(task_ids) if task_ids is not None else None)

    def finish(self, job_id: str) -> None:
        """Clean up after a run that fully succeeded (unless --keep); keep everything of a run
        with any failure, so its logs and partial results stay readable."""
        with self._lock:
            run = self._runs.pop(job_id, None)
        if run is None:
            return
        if self.resized_for_run and pool.autoscale_formula(self.profile) is not None:
            self.resized_for_run = False
            self._in_background(self._restore_autoscale)
        self._in_background(self._end_run, run)

    def _end_run(self, run: AzureRun) -> None:
        run.close()
        if not (run.failed_any or run.keep):
            self._cleanup(run)
        else:  # kept: its copy of the manifest says how it ended
            run.save_manifest(final=True)

    def _in_background(self, target, *args: Any, **kwargs: Any) -> None:
        thread = threading.Thread(target=target, args=args, kwargs=kwargs, daemon=True, name="azpar-cleanup")
        thread.start()
        with self._lock:
            self._background = [t for t in self._background if t.is_alive()] + [thread]

    def _cleanup(self, run: AzureRun) -> None:
        self.delete_job(run.job_id, strict=False)

    def _remove_staged(self, run: AzureRun) -> None:
        """What a staging that failed made: the Batch job if it created it, and the job's containers it
        created (never one it found: with a job id taken by someone else, theirs)."""
        made = [c for c in (run.in_container, run.out_container, run.files_container) if c in self.staging.created_here]
        self.delete_job(run.job_id, strict=False, batch_job=run.job_created, containers=made)

    def _restore_autoscale(self) -> None:
        try:
            pool.restore_autoscale(self.client, self.profile)  # the profile's formula (pool.py)
        except AzureError:
            pass

    def close(self) -> None:
        # A job that has just ended may not have been handed to finish() yet (the waiter
        # wakes first): give it a moment, so its cleanup runs before the clients close.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(r.all_final() for r in list(self._runs.values())):
            time.sleep(0.05)
        with self._lock:
            runs = list(self._runs.values())
            self._runs.clear()
        for run in runs:
            run.close()
        for thread in list(self._background):
            thread.join(timeout=15)
        pool.wait_restores(self.profile["pool_id"])  # a restore may wait out Batch's 30 s enable window
        self.context.close()

    # ------------------------------------------------------------------ pool management

    def pool_status(self) -> pool.PoolStatus | None:
        return pool.status(self.client, self.profile["pool_id"])

    def pool_create(self) -> str:
        found, created = pool.ensure(self.client, self.profile, self.context.registry_password())
        return ("created " if created else "already exists: ") + found.describe()

    def pool_resize(self, dedicated: int, spot: int) -> str:
        logger.info("pool %s: resize to %d dedicated + %d spot nodes", self.profile["pool_id"], dedicated, spot)
        self._pool_write("resize", lambda: pool.resize(self.client, self.profile["pool_id"], dedicated, spot))
        return f"pool {self.profile['pool_id']} resizing to {dedicated} dedicated + {spot} spot nodes"

    def pool_delete(self) -> str:
        self._pool_write("delete", lambda: pool.delete(self.client, self.profile["pool_id"]))
        self._pool_ready = False
        return f"pool {self.profile['pool_id']} is being deleted"

    def _pool_write(self, what: str, call: Any) -> None:
        """``%azpar pool resize|delete``: a write the identity's role does not allow is said with
        the role it needs, not as the service's bare 403."""
        try:
            call()
        except AzureError as exc:
            if not pool.write_refused(exc):
                raise
            self.pool_writes = False
            raise errors.translate(
                exc,
                message=f"this identity may not {what} the pool {self.profile['pool_id']!r} "
                f"(403 AuthorizationFailed): that needs the {pool.POOL_WRITE_ROLE} role on the "
                f"Batch account ({pool.SUBMIT_ONLY_ROLE} can only submit jobs)",
            ) from None

    def test_connection(self) -> str:
        """One Batch call and one Storage call with the profile's credentials."""
        found = pool.status(self.client, self.profile["pool_id"])
        self.staging.container_exists(storage.CACHE_CONTAINER)
        where = found.describe() if found else f"pool {self.profile['pool_id']} does not exist yet"
        return f"connected to {self.accounts.batch_url} and {self.accounts.storage_url}: {where}"
