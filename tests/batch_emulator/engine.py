"""The scheduler and node agent: node lifecycle, task placement, and task execution.

One scheduler thread advances node states, allocates pools, finishes job termination and
deletion, and places active tasks on free slots. Each placed task runs in its own thread
(the "node agent" for that slot): job preparation once per node per job, resource files,
the process (with maxWallClockTime), output files by upload condition, then retry /
requeue / completion and exit-condition actions. All shared state changes happen under the
service's condition lock; processes and transfers run outside it.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import nodes, rules, storage
from .executor import ProgramNotFound, build_environment
from .state import Job, Node, Pool, PrepStatus, Task, node_id_for
from .util import fmt_time, parse_duration, utcnow

if TYPE_CHECKING:
    from .service import BatchEmulator

TICK = 0.05


def _failure(category: str, code: str, message: str, details: dict[str, str] | None = None) -> dict:
    out: dict[str, Any] = {"category": category, "code": code, "message": message}
    if details:
        out["details"] = [{"name": k, "value": v} for k, v in details.items()]
    return out


class Engine:
    def __init__(self, svc: BatchEmulator) -> None:
        self.svc = svc
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._workers: set[threading.Thread] = set()
        self._workers_lock = threading.Lock()

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="batch-emulator-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self.svc.cond:
            self._stopping = True
            for job in self.svc.jobs.values():
                for t in job.tasks.values():
                    if t.proc is not None and t.kill_reason is None:
                        t.kill_reason = "delete"
            self.svc.cond.notify_all()
        self.svc.procs.kill_all()
        if self._thread:
            self._thread.join(timeout=10)
        self.join_workers(timeout=15)
        self.svc.procs.kill_all()

    def join_workers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self._workers_lock:
                workers = [w for w in self._workers if w.is_alive()]
                self._workers = set(workers)
            if not workers or time.monotonic() > deadline:
                return
            self.svc.procs.kill_all()
            for w in workers:
                w.join(timeout=max(0.0, min(0.5, deadline - time.monotonic())))

    def _spawn(self, target, *args: Any) -> None:
        t = threading.Thread(target=self._guard, args=(target, *args), daemon=True, name="batch-emulator-agent")
        with self._workers_lock:
            self._workers.add(t)
        t.start()

    def _guard(self, target, *args: Any) -> None:
        try:
            target(*args)
        except Exception:  # keep the service alive; the failure is logged for the test report
            import traceback
            self.svc.log("agent thread failed:\n" + traceback.format_exc())
        finally:
            with self._workers_lock:
                self._workers.discard(threading.current_thread())
            with self.svc.cond:
                self.svc.cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self.svc.cond:
                if self._stopping:
                    return
                self.svc.cond.wait(timeout=TICK)
                if self._stopping:
                    return
                try:
                    self.tick()
                except Exception:
                    import traceback
                    self.svc.log("scheduler tick failed:\n" + traceback.format_exc())

    # ---- the tick (called with the lock held) -------------------------------------------
    def tick(self) -> None:
        now = time.monotonic()
        for pool in list(self.svc.pools.values()):
            self._advance_pool(pool, now)
        for key, job in list(self.svc.jobs.items()):
            self._advance_job(key, job)
        self._schedule()

    def _advance_pool(self, pool: Pool, now: float) -> None:
        if pool.state == "deleting":
            for node in pool.nodes.values():
                self._evict_node_tasks(node, "requeue")
            if not any(n.running for n in pool.nodes.values()):
                del self.svc.pools[pool.id.lower()]
            return
        if pool.allocation_state in ("resizing", "stopping") and now >= pool.resize_due:
            if pool.allocation_state == "resizing":
                self._reconcile(pool)
            pool.allocation_state = "steady"
            pool.allocation_time = utcnow()
            pool.touch()
        for node in list(pool.nodes.values()):
            if node.leaving and not node.running:
                del pool.nodes[node.id]
                pool.touch()
                continue
            if node.state == "creating" and now >= node.ready_at:
                node.set_state("starting")
                node.ready_at = now + self.svc.node_state_delay
            elif node.state == "starting" and now >= node.ready_at:
                node.boot_time = utcnow()
                if self._pull_images(pool, node):
                    continue
                st = pool.start_task
                if st:
                    wait = st.get("waitForSuccess", True)
                    node.set_state("waitingforstarttask" if wait else "idle")
                    node.start_task_info = {"state": "running", "startTime": fmt_time(utcnow()), "retryCount": 0}
                    self._spawn(self._run_start_task, pool, node, dict(st))
                else:
                    node.set_state("idle")
            elif node.state in ("idle", "running"):
                node.set_state("running" if node.running else "idle")

    def _pull_images(self, pool: Pool, node: Node) -> bool:
        """Pull the pool's containerImageNames before the start task; True if one failed (an
        armed ``faults.fail_image_pull``): the node is ``unusable`` with a node error naming the
        image, the start task never runs and no task is scheduled there (tasks stay active).
        Sources: the container workloads article (images in containerImageNames are pre-fetched
        when the node starts); node errors as BatchNodeError (code, message, errorDetails) in the
        spec; the code ``ContainerInvalidImage`` and its ``ContainerImage`` / ``Message`` details as
        Azure/Batch#49 and microsoft/ProjectAcoustics#76 show them (the node went unusable). The
        pull's own wording in ``Message`` is chosen."""
        cc = (pool.spec.get("virtualMachineConfiguration") or {}).get("containerConfiguration") or {}
        failed = self.svc.faults.take_image_pull_failure(list(cc.get("containerImageNames") or []))
        if failed is None:
            return False
        node.errors = [{"code": "ContainerInvalidImage",
                        "message": "One or more container images specified are invalid",
                        "errorDetails": [{"name": "ContainerImage", "value": failed},
                                         {"name": "Message", "value": f"pull access denied or manifest unknown for "
                                                                      f"{failed} (injected by the test service)"}]}]
        node.set_state("unusable")
        pool.touch()
        return True

    def _reconcile(self, pool: Pool) -> None:
        """Add or remove nodes so the pool matches its targets, within the account's core quota."""
        for dedicated, target in ((True, pool.target_dedicated), (False, pool.target_low_priority)):
            current = [n for n in pool.nodes.values() if n.dedicated == dedicated and not n.leaving]
            if len(current) < target:
                room = self._quota_room(pool, dedicated)
                for _ in range(min(target - len(current), room)):
                    self._add_node(pool, dedicated)
                if room < target - len(current):
                    self._quota_reached(pool, dedicated, target)
            elif len(current) > target:
                # Prefer nodes that are not running anything, newest first.
                victims = sorted(current, key=lambda n: (bool(n.running), n.state not in ("creating", "starting")))
                for node in victims[: len(current) - target]:
                    self._remove_node(pool, node, pool.deallocation_option)
        pool.touch()

    def _quota_room(self, pool: Pool, dedicated: bool) -> int:
        """How many more nodes of this kind the account's core quota allows (every pool's
        nodes count). Source: "Batch service quotas and limits": in Batch service mode an
        account has a dedicated core quota (also per VM family, not modelled) and a separate
        low-priority/spot core quota, and a pool that does not reach its target "might have
        reached" it; new accounts may have 0 in some regions."""
        quota = self.svc.core_quota.get("dedicated" if dedicated else "lowPriority")
        if quota is None:
            return 1 << 30
        per_node = rules.vcpus(pool.spec.get("vmSize") or "")
        used = sum(rules.vcpus(p.spec.get("vmSize") or "") for p in self.svc.pools.values()
                   for n in p.nodes.values() if n.dedicated == dedicated and not n.leaving)
        return max(0, (quota - used) // per_node)

    def _quota_reached(self, pool: Pool, dedicated: bool, target: int) -> None:
        """The resize ends steady short of its target with a resize error, as Azure reports a
        quota shortfall: ``resizeErrors`` are set only once allocationState is steady (the
        Pool's ``resizeErrors`` in the REST spec), with the codes of the documented
        PoolResizeErrorCodes (AccountCoreQuotaReached, AccountLowPriorityCoreQuotaReached).
        Which of the low-priority and spot codes a Batch-service account gets now that
        low-priority VMs are retired is open; the message wording is chosen."""
        kind = "dedicated" if dedicated else "low-priority"
        code = "AccountCoreQuotaReached" if dedicated else "AccountLowPriorityCoreQuotaReached"
        pool.resize_errors.append({
            "code": code,
            "message": f"The specified account has reached its {kind} core quota: the pool could not grow to "
                       f"{target} {kind} nodes of size {pool.spec.get('vmSize')}"})

    def _add_node(self, pool: Pool, dedicated: bool) -> Node:
        idx = next(pool.node_counter)
        nid = node_id_for(pool.id, idx, dedicated)
        root = self.svc.root / pool.id / nid
        _make_node_dirs(root)
        node = Node(id=nid, pool_id=pool.id, dedicated=dedicated, root=root, ip=f"10.0.0.{4 + idx % 250}")
        node.ready_at = time.monotonic() + self.svc.node_state_delay + self.svc.faults.extra_start_delay(pool.id)
        pool.nodes[nid] = node
        return node

    def _remove_node(self, pool: Pool, node: Node, option: str) -> None:
        node.leaving = True
        node.set_state("leavingpool")
        if option in ("requeue", "terminate"):
            self._evict_node_tasks(node, "requeue" if option == "requeue" else "terminate")

    def _evict_node_tasks(self, node: Node, reason: str) -> None:
        for (job_key, task_key) in list(node.running):
            job = self.svc.jobs.get(job_key)
            task = job.tasks.get(task_key) if job else None
            if task is not None:
                self.kill_task(task, reason)

    def kill_task(self, task: Task, reason: str) -> None:
        """Ask the agent running ``task`` to stop it (lock held); the agent applies the outcome."""
        if task.state not in ("preparing", "running") or task.kill_reason is not None:
            return
        task.kill_reason = reason
        if task.proc is not None:
            self.svc.procs.kill(task.proc)

    def _advance_job(self, key: str, job: Job) -> None:
        busy = [t for t in job.tasks.values() if t.state in ("preparing", "running")]
        if job.state == "deleting":
            for t in busy:
                self.kill_task(t, "delete")
            if not busy:
                del self.svc.jobs[key]
            return
        if job.state == "terminating":
            for t in busy:
                self.kill_task(t, "terminate")
            if not busy:
                job.end_time = utcnow()
                job.set_state("completed")
            return
        if job.state == "disabling":
            if not busy:
                job.set_state("disabled")
            return
        if job.state != "active":
            return
        mwc = (job.spec.get("constraints") or {}).get("maxWallClockTime")
        if mwc and (utcnow() - job.creation_time).total_seconds() > parse_duration(mwc):
            self.terminate_job(job, "MaxWallClockTimeExpiry")
            return
        if job.spec.get("onAllTasksComplete") == "terminatejob" and \
                all(t.state == "completed" for t in job.tasks.values()):
            self.terminate_job(job, "AllTasksComplete")

    def terminate_job(self, job: Job, reason: str) -> None:
        job.terminate_reason = reason
        job.set_state("terminating")
        self._advance_job(job.id.lower(), job)

    # ---- placement ---------------------------------------------------------------------
    def _deps_satisfied(self, job: Job, task: Task) -> bool:
        deps = task.spec.get("dependsOn")
        if not deps:
            return True

        def ok(t: Task | None) -> bool:
            return t is not None and t.state == "completed" and not t.dependency_blocked

        for tid in deps.get("taskIds") or []:
            if not ok(job.tasks.get(tid.lower())):
                return False
        ranges = deps.get("taskIdRanges") or []
        if ranges:  # every id of a range must exist and complete: one never added keeps it waiting
            done = {int(t.id) for t in job.tasks.values()
                    if t.id.isdigit() and any(r["start"] <= int(t.id) <= r["end"] for r in ranges) and ok(t)}
            if any(i not in done for r in ranges for i in range(r["start"], r["end"] + 1)):
                return False
        return True

    def _schedule(self) -> None:
        jobs = sorted((j for j in self.svc.jobs.values() if j.state == "active"),
                      key=lambda j: (-int(j.spec.get("priority", 0)), j.creation_time))
        for job in jobs:
            pool = self.svc.pools.get((job.pool_id or "").lower())
            if pool is None or pool.state != "active":
                continue
            slots = pool.slots_per_node
            fill = ((pool.spec.get("taskSchedulingPolicy") or {}).get("nodeFillType") or "spread").lower()
            prep = job.spec.get("jobPreparationTask")
            nodes = [n for n in pool.nodes.values()
                     if n.state in ("idle", "running") and n.scheduling_state == "enabled" and not n.leaving
                     and not self._prep_blocks(n, job, prep)]
            if not nodes:
                continue
            max_parallel = int(job.spec.get("maxParallelTasks", -1))
            running = sum(1 for t in job.tasks.values() if t.state in ("preparing", "running")) \
                if max_parallel >= 0 else 0
            for task in sorted((t for t in job.tasks.values() if t.state == "active"), key=lambda t: t.seq):
                if max_parallel >= 0 and running >= max_parallel:
                    break
                free = [(slots - n.used_slots(), n) for n in nodes]
                if all(f <= 0 for f, _ in free):
                    break
                need = task.required_slots
                fits = [(f, n) for f, n in free if f >= need]
                if not fits or not self._deps_satisfied(job, task):
                    continue
                _, node = (max if fill == "spread" else min)(fits, key=lambda fn: fn[0])
                self._place(job, task, node, pool)
                running += 1

    @staticmethod
    def _prep_blocks(node: Node, job: Job, prep: dict | None) -> bool:
        st = node.job_prep.get(job.id)
        return bool(prep and st and st.state == "completed" and st.result == "failure"
                    and prep.get("waitForSuccess", True))

    def _place(self, job: Job, task: Task, node: Node, pool: Pool) -> None:
        node.running[(job.id.lower(), task.id.lower())] = task.required_slots
        node.set_state("running")
        task.node = node
        task.kill_reason = None
        task.set_state("preparing")
        task_dir = f"workitems/{job.id}/job-1/{task.id}"
        base = self.svc.url
        task.node_info = {"affinityId": f"TVM:{node.id}", "nodeUrl": f"{base}/pools/{pool.id}/nodes/{node.id}",
                          "poolId": pool.id, "nodeId": node.id, "taskRootDirectory": task_dir,
                          "taskRootDirectoryUrl": f"{base}/pools/{pool.id}/nodes/{node.id}/files/{task_dir}"}
        self._spawn(self._run_task, job, task, node, pool)

    # ---- node agent work (threads; take the lock only to read/write state) ----------------
    def _user_for(self, spec: dict) -> nodes.NodeUser | None:
        """Who runs a start task, job preparation task or task: None (root, the test process) for
        an admin auto-user, else the pool's one non-admin user. Sources: the spec's
        ``userIdentity`` (without one, a non-administrative user unique to the pool); the "Run
        tasks under user accounts in Batch" doc (Linux auto-users have pool scope; admin means
        root). A named user account (``username``) is not modelled: it runs as the non-admin user.
        Off (``svc.node_users = False``) or without root, everything runs as the test process."""
        auto = (spec.get("userIdentity") or {}).get("autoUser") or {}
        if str(auto.get("elevationLevel") or "").lower() == "admin":
            return None
        return nodes.node_user() if getattr(self.svc, "node_users", True) else None

    def _environment(self, pool: Pool, node: Node, task_dir: Path, job: Job | None, task_id: str | None,
                     settings: list[dict] | None, user: nodes.NodeUser | None) -> dict[str, str]:
        """The command's environment: HOME is a folder of the user's own under the node's
        ``home`` (pip and others need a writable HOME; Batch's own choice is not documented),
        and PATH leads with the node's Python (bare unless ``svc.bare_nodes`` is False)."""
        home = node.root / "home" / (user.name if user else "root")
        _own_dirs(user, home)
        os.chmod(home, 0o700)
        other = getattr(self.svc, "node_python", None)  # another interpreter's prefix: a node image of another Python
        baked = tuple(getattr(self.svc, "image_wheels", ()))  # an image with packages baked in
        python_dir = str(nodes.bare_python_bin(other, baked)) if getattr(self.svc, "bare_nodes", True) else None
        admin = user is None and getattr(self.svc, "node_users", True)
        return build_environment(self._batch_vars(pool, node, task_dir, job, task_id, admin), settings, home,
                                 python_dir)

    def _batch_vars(self, pool: Pool, node: Node, task_dir: Path, job: Job | None, task_id: str | None,
                    admin: bool = False) -> dict:
        v = {
            "AZ_BATCH_ACCOUNT_NAME": self.svc.account,
            "AZ_BATCH_ACCOUNT_URL": self.svc.url,
            "AZ_BATCH_POOL_ID": pool.id,
            "AZ_BATCH_NODE_ID": node.id,
            "AZ_BATCH_NODE_IS_DEDICATED": "true" if node.dedicated else "false",
            "AZ_BATCH_NODE_ROOT_DIR": str(node.root),
            "AZ_BATCH_NODE_SHARED_DIR": str(node.root / "shared"),
            "AZ_BATCH_NODE_STARTUP_DIR": str(node.root / "startup"),
            "AZ_BATCH_NODE_MOUNTS_DIR": str(node.root / "fsmounts"),
            "AZ_BATCH_TASK_DIR": str(task_dir),
            "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
            "AZ_BATCH_TASK_USER": "_azbatch",
            "AZ_BATCH_TASK_USER_IDENTITY": "PoolNonAdmin",
        }
        if admin:
            v["AZ_BATCH_TASK_USER"], v["AZ_BATCH_TASK_USER_IDENTITY"] = "_azbatch", "PoolAdmin"
        if job is not None:
            v["AZ_BATCH_JOB_ID"] = job.id
            if job.spec.get("jobPreparationTask"):
                prep_dir = node.root / "workitems" / job.id / "job-1" / "jobpreparation"
                v["AZ_BATCH_JOB_PREP_DIR"] = str(prep_dir)
                v["AZ_BATCH_JOB_PREP_WORKING_DIR"] = str(prep_dir / "wd")
        if task_id is not None:
            v["AZ_BATCH_TASK_ID"] = task_id
        return v

    def _fetch_resources(self, files: list[dict] | None, wd: Path, user: nodes.NodeUser | None = None) -> dict | None:
        """Download resource files into ``wd``; a failureInfo dict when one fails.

        The node agent (root here) downloads; each file then belongs to the task's user with the
        spec's ``ResourceFile.fileMode`` (default 0770 on Linux, per the spec), and folders the
        download made belong to that user too (the sources do not say who owns them: chosen so
        the task may write beside its files, as it may in its working directory)."""
        for rf in files or []:
            target = wd / (rf.get("filePath") or "")
            try:
                if rf.get("httpUrl"):
                    storage.download(rf["httpUrl"], wd / rf["filePath"])
                elif rf.get("storageContainerUrl"):
                    storage.download_container(rf["storageContainerUrl"], rf.get("blobPrefix") or "",
                                               wd / (rf.get("filePath") or ""))
                else:
                    return _failure("usererror", "AutoStorageNotConfigured",
                                    "autoStorageContainerName resource files are not supported by the emulator")
                _hand_over(wd, target, user, int(rf.get("fileMode") or "0770", 8))
            except storage.TransferError as e:
                code = {403: "BlobAccessDenied", 404: "BlobNotFound"}.get(e.status or 0, "BlobDownloadMiscError")
                return _failure("usererror", code, f"Resource file download failed: {e}",
                                {"FilePath": rf.get("filePath") or "", "Url": _strip_query(
                                    rf.get("httpUrl") or rf.get("storageContainerUrl") or "")})
        return None

    def _run_process(self, command: str, cwd: Path, env: dict, task_dir: Path, wall_clock: float | None,
                     owner: Task | None, user: nodes.NodeUser | None = None) -> tuple[int | None, str | None]:
        """Run one command (as ``user``, or as the test process); returns (exit code, stop reason)
        where reason is a kill reason, "wallclock", or "notfound" (exit code None)."""
        try:
            proc = self.svc.procs.start(command, cwd, env, task_dir / "stdout.txt", task_dir / "stderr.txt", user)
        except ProgramNotFound as e:
            with open(task_dir / "stderr.txt", "a") as f:
                f.write(f"{e}\n")
            return None, "notfound"
        if owner is not None:
            with self.svc.cond:
                owner.proc = proc
                if owner.kill_reason is not None:
                    self.svc.procs.kill(proc)
        code = self.svc.procs.wait(proc, wall_clock)
        reason = None
        if code is None:
            self.svc.procs.kill(proc)
            code = self.svc.procs.wait(proc, 10)
            reason = "wallclock"
        if owner is not None:
            with self.svc.cond:
                owner.proc = None
                if owner.kill_reason is not None:
                    reason = owner.kill_reason
        return code, reason

    def _run_start_task(self, pool: Pool, node: Node, st: dict) -> None:
        task_dir = node.root / "startup"
        wd = task_dir / "wd"
        user = self._user_for(st)
        _own_dirs(user, task_dir, wd)
        retries_allowed = int(st.get("maxTaskRetryCount", 0))
        retry = 0
        while True:
            failure = self._fetch_resources(st.get("resourceFiles"), wd, user)
            code: int | None = None
            if failure is None:
                if self.svc.faults.take_start_task_failure(pool.id):
                    (task_dir / "stderr.txt").open("a").write("start task failure injected by the emulator\n")
                    code = 1
                else:
                    env = self._environment(pool, node, task_dir, None, None, st.get("environmentSettings"), user)
                    code, reason = self._run_process(st["commandLine"], wd, env, task_dir, None, None, user)
                    if reason == "notfound":
                        failure = _failure("usererror", "CommandProgramNotFound", "The program was not found")
                if failure is None and code != 0:
                    failure = _failure("usererror", "FailureExitCode", "The task exited with a nonzero exit code",
                                       {"ExitCode": str(code)})
            with self.svc.cond:
                info = node.start_task_info or {}
                info.update({"retryCount": retry, "exitCode": code})
                if failure and (retries_allowed == -1 or retry < retries_allowed) and not self._stopping:
                    retry += 1
                    info["lastRetryTime"] = fmt_time(utcnow())
                    node.start_task_info = info
                    continue
                info.update({"state": "completed", "endTime": fmt_time(utcnow()),
                             "result": "failure" if failure else "success"})
                if failure:
                    info["failureInfo"] = failure
                node.start_task_info = {k: v for k, v in info.items() if v is not None}
                if node.state == "waitingforstarttask":
                    node.set_state("starttaskfailed" if failure else "idle")
                self.svc.cond.notify_all()
                return

    def _ensure_job_prep(self, pool: Pool, node: Node, job: Job) -> bool:
        """Run the job preparation task once per node per job; False if the node may not run the job."""
        prep = job.spec.get("jobPreparationTask")
        if not prep:
            return True
        with self.svc.cond:
            st = node.job_prep.get(job.id)
            if st is None:
                st = PrepStatus(task_root=f"workitems/{job.id}/job-1/jobpreparation")
                node.job_prep[job.id] = st
                owner = True
            else:
                owner = False
            while not owner and st.state == "running" and not self._stopping:
                self.svc.cond.wait(timeout=TICK)
            if not owner:
                return st.result == "success" or not prep.get("waitForSuccess", True)
        task_dir = node.root / st.task_root
        wd = task_dir / "wd"
        user = self._user_for(prep)
        _own_dirs(user, task_dir, wd)
        retries_allowed = int((prep.get("constraints") or {}).get("maxTaskRetryCount", 0))
        wall = (prep.get("constraints") or {}).get("maxWallClockTime")
        while True:
            failure = self._fetch_resources(prep.get("resourceFiles"), wd, user)
            code = None
            if failure is None:
                env = self._environment(pool, node, task_dir, job, prep.get("id") or "jobpreparation",
                                        (job.spec.get("commonEnvironmentSettings") or []) +
                                        (prep.get("environmentSettings") or []), user)
                code, reason = self._run_process(prep["commandLine"], wd, env, task_dir,
                                                 parse_duration(wall) if wall else None, None, user)
                if reason == "notfound":
                    failure = _failure("usererror", "CommandProgramNotFound", "The program was not found")
                elif reason == "wallclock":
                    failure = _failure("usererror", "MaxWallClockTimeExceeded", "The task exceeded its maxWallClockTime")
                elif code != 0:
                    failure = _failure("usererror", "FailureExitCode", "The task exited with a nonzero exit code",
                                       {"ExitCode": str(code)})
            with self.svc.cond:
                st.exit_code = code
                if failure and (retries_allowed == -1 or st.retry_count < retries_allowed) and not self._stopping:
                    st.retry_count += 1
                    continue
                st.state, st.end_time = "completed", utcnow()
                st.result = "failure" if failure else "success"
                st.failure_info = failure
                self.svc.cond.notify_all()
                return st.result == "success" or not prep.get("waitForSuccess", True)

    def _run_task(self, job: Job, task: Task, node: Node, pool: Pool) -> None:
        task_dir = node.root / "workitems" / job.id / "job-1" / task.id
        wd = task_dir / "wd"
        spec = task.spec
        user = self._user_for(spec)
        _own_dirs(user, task_dir, wd)
        if not self._ensure_job_prep(pool, node, job):
            with self.svc.cond:
                self._release(node, job, task)
                if task.kill_reason in (None, "requeue"):
                    task.set_state("active")   # not counted: the node cannot run this job
                task.kill_reason = None
                self.svc.cond.notify_all()
            return
        failure = self._fetch_resources(spec.get("resourceFiles"), wd, user)
        phase = "preprocessing" if failure else None
        code: int | None = None
        reason: str | None = None
        with self.svc.cond:
            if task.kill_reason is None:
                task.start_time = utcnow()
                task.end_time = task.exit_code = task.failure_info = task.result = None
                if spec.get("containerSettings"):
                    task.container_info = {"containerId": f"{job.id}_{task.id}", "state": "running"}
                if failure is None:
                    task.set_state("running")
        if failure is None and task.kill_reason is None:
            job_env = job.spec.get("commonEnvironmentSettings") or []
            env = self._environment(pool, node, task_dir, job, task.id,
                                    job_env + (spec.get("environmentSettings") or []), user)
            wall = (spec.get("constraints") or {}).get("maxWallClockTime") or \
                (job.spec.get("constraints") or {}).get("maxWallClockTime")
            code, reason = self._run_process(spec["commandLine"], wd, env, task_dir,
                                             parse_duration(wall) if wall else None, task, user)
            if reason == "notfound":
                failure = _failure("usererror", "CommandProgramNotFound",
                                   "The specified command program is not found")
                phase = "preprocessing"
            elif reason == "wallclock":
                failure = _failure("usererror", "MaxWallClockTimeExceeded",
                                   "The task exceeded its maxWallClockTime and was terminated")
        with self.svc.cond:
            reason = task.kill_reason or reason
        if reason in ("requeue", "delete"):
            with self.svc.cond:
                self._release(node, job, task)
                if reason == "requeue":
                    task.requeue_count += 1
                    task.last_requeue_time = utcnow()
                    task.start_time = None
                    task.set_state("active")
                task.kill_reason = None
                self.svc.cond.notify_all()
            return
        if reason == "terminate":
            failure = _failure("usererror", "TaskEnded", "The task was ended by a terminate request")
        elif failure is None and code != 0:
            failure = _failure("usererror", "FailureExitCode", "The task exited with a nonzero exit code",
                               {"ExitCode": str(code)})
        # Output files: uploaded by the agent after the process exits, by upload condition.
        if reason != "terminate" and phase != "preprocessing":
            upload_failure = self._upload_outputs(spec.get("outputFiles"), wd, success=failure is None)
            if upload_failure is not None:
                failure, phase = upload_failure, "upload"
        with self.svc.cond:
            self._finish(job, task, node, code, failure, phase, reason)
            self.svc.cond.notify_all()

    def _upload_outputs(self, outputs: list[dict] | None, wd: Path, success: bool) -> dict | None:
        for of in outputs or []:
            cond = of["uploadOptions"]["uploadCondition"]
            if cond == "tasksuccess" and not success or cond == "taskfailure" and success:
                continue
            dest = of["destination"]["container"]
            pattern = of["filePattern"]
            headers = {h["name"]: h.get("value", "") for h in dest.get("uploadHeaders") or []}
            for local, blob in _match_outputs(wd, pattern, dest.get("path")):
                try:
                    if self.svc.faults.take_upload_failure():
                        raise storage.TransferError("injected upload failure (emulator fault hook)", 500)
                    storage.upload(dest["containerUrl"], blob, local, headers)
                except (storage.TransferError, OSError) as e:
                    code = "FileUploadContainerAccessDenied" if getattr(e, "status", None) == 403 \
                        else "FileUploadMiscError"
                    category = "servererror" if getattr(e, "status", None) in (500, 503) else "usererror"
                    return _failure(category, code, f"Output file upload failed: {e}",
                                    {"FilePattern": pattern, "BlobName": blob})
        return None

    def _release(self, node: Node, job: Job, task: Task) -> None:
        node.running.pop((job.id.lower(), task.id.lower()), None)
        task.proc = None

    def _finish(self, job: Job, task: Task, node: Node, code: int | None, failure: dict | None,
                phase: str | None, reason: str | None) -> None:
        self._release(node, job, task)
        task.kill_reason = None
        task.exit_code = code
        spec_c = task.spec.get("constraints") or {}
        job_c = job.spec.get("constraints") or {}
        max_retry = int(spec_c.get("maxTaskRetryCount", job_c.get("maxTaskRetryCount", 0)))
        retryable = failure is not None and reason not in ("terminate", "wallclock") and phase != "upload"
        if retryable and (max_retry == -1 or task.retry_count < max_retry) and job.state == "active":
            task.retry_count += 1
            task.last_retry_time = utcnow()
            task.failure_info = failure
            task.set_state("active")
            return
        task.end_time = utcnow()
        task.failure_info = failure
        task.result = "failure" if failure else "success"
        if task.container_info:
            task.container_info = {**task.container_info, "state": "exited"}
        task.set_state("completed")
        node.total_run += 1
        if not failure:
            node.total_succeeded += 1
        node.recent = (node.recent + [{"taskUrl": f"{self.svc.url}/jobs/{job.id}/tasks/{task.id}",
                                        "jobId": job.id, "taskId": task.id, "taskState": "completed",
                                        "executionInfo": {"retryCount": task.retry_count,
                                                          "requeueCount": task.requeue_count,
                                                          "exitCode": code, "result": task.result}}])[-10:]
        options = _exit_options(task.spec.get("exitConditions") or {}, code, failure, phase)
        dep_action = options.get("dependencyAction") or ("satisfy" if not failure else "block")
        task.dependency_blocked = dep_action == "block" and failure is not None
        action = options.get("jobAction") or "none"
        if job.spec.get("onTaskFailure") == "performexitoptionsjobaction" and job.state == "active":
            if action == "terminate":
                self.terminate_job(job, "TaskFailed")
            elif action == "disable":
                job.set_state("disabling")


def _make_node_dirs(root: Path) -> None:
    """A node's folders, root-owned: 0755 (any user may pass), except ``shared`` at 0777. The
    "Files and directories in Azure Batch" doc says the shared folder is read/write to all tasks;
    0777 without the sticky bit, since nothing says a task may not remove or rename another
    user's entries there (the sources leave the mode itself open). A node id used again (a pool
    made again after a delete or a reset) is a new machine: nothing of the old one is left."""
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("shared", "startup", "workitems", "home"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(root / sub, 0o755)
    os.chmod(root, 0o755)
    os.chmod(root / "shared", 0o777)


def _own_dirs(user: nodes.NodeUser | None, *dirs: Path) -> None:
    """Create ``dirs`` (a task's directory and working directory, a job preparation folder, a
    home) owned by the user that runs there, so only that account may write them (the
    batch-user-accounts doc: every account reads the job preparation folder, only its own
    account writes it). Folders above them stay root-owned 0755."""
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        if user is not None:
            os.chown(d, user.uid, user.gid)
        os.chmod(d, 0o755)


def _hand_over(wd: Path, target: Path, user: nodes.NodeUser | None, mode: int) -> None:
    """Give downloaded resource files (one file, or a folder of them) to the task's user with
    ``mode``, and folders the download created below ``wd`` to the same user."""
    files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()] if target.is_dir() else []
    dirs = {p for f in files for p in f.parents if p != wd and wd in p.parents}
    for p in [*dirs, *files]:
        if user is not None:
            os.chown(p, user.uid, user.gid)
        os.chmod(p, mode if p in files else 0o755)


def _strip_query(url: str) -> str:
    return url.split("?", 1)[0]


def _exit_options(ec: dict, code: int | None, failure: dict | None, phase: str | None) -> dict:
    if phase == "preprocessing":
        return ec.get("preProcessingError") or {}
    if phase == "upload":
        return ec.get("fileUploadError") or {}
    if code is not None:
        for m in ec.get("exitCodes") or []:
            if m["code"] == code:
                return m["exitOptions"]
        for r in ec.get("exitCodeRanges") or []:
            if r["start"] <= code <= r["end"]:
                return r["exitOptions"]
    if failure is None:
        return {}
    return ec.get("default") or {}


def _match_outputs(wd: Path, pattern: str, dest_path: str | None) -> list[tuple[Path, str]]:
    """Files matching an output filePattern (relative to wd; ** recursive) and their blob names.

    Without wildcards, ``path`` is the blob name (default: the file name); with wildcards,
    ``path`` is a virtual directory prefixed to each match's path below the pattern's fixed part.
    """
    import glob

    norm = pattern.replace("\\", "/")
    full = norm if os.path.isabs(norm) else os.path.join(str(wd), norm)
    matches = [Path(p) for p in glob.glob(full, recursive=True) if os.path.isfile(p)]
    if not any(ch in norm for ch in "*?["):
        return [(m, dest_path or m.name) for m in matches]
    fixed = []
    for part in full.split("/"):
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    base = Path("/".join(fixed) or "/")
    out = []
    for m in sorted(matches):
        try:
            rel = m.relative_to(base).as_posix()
        except ValueError:
            rel = m.name
        out.append((m, f"{dest_path.rstrip('/')}/{rel}" if dest_path else rel))
    return out


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
