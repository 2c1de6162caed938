"""Spot first, dedicated when spot fails: the fallback a profile's ``dedicated_fallback`` asks for.

Spot nodes cost a fraction of dedicated ones but Azure may take them back at any time
(preemption) or not grant them at all when it lacks spare capacity; a preempted node's task is
requeued, not failed (REST spec: ``requeueCount``; the autoscale article: ``$PreemptedNodeCount``).
A job whose spot nodes are missing can therefore wait indefinitely. With ``dedicated_fallback``
N > 0, :class:`SpotFallback` watches the pool while the job has queued tasks: once the pool has
had fewer spot nodes than its spot target for ``spot_wait`` minutes, it adds up to N dedicated
nodes (one per missing spot node) for the rest of the job, and says so in the job's views. A
spot node is missing when it is preempted or was never granted (absent from the pool: Azure
had no capacity); one still booting is granted, since nodes take minutes to start on any pool.
A resize that ended on the account's spot core quota (a ``...LowPriorityCoreQuotaReached``
resize error, "Batch service quotas and limits") will not pass by waiting: it falls back at once.
When the job ends the pool goes back to its size: its formula is turned on again (autoscale
pools: an explicit resize needs autoscale off, the autoscale article) or its former targets are
set again (fixed pools).

Only a pool azpar created (pool.CREATED_BY) is changed, and only when the profile lets azpar write
pools (``create_pool``). Writing a pool needs *Azure Batch Data Contributor*; a *Job Submitter*
identity gets 403 AuthorizationFailed (the RBAC article, notes finding 27), which is said once in
the views instead of failing the job. Another kernel's job on the same pool is not coordinated
with: each job restores what it changed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from azure.core.exceptions import AzureError

from ...config import Profile
from ...errors import AzureServiceError
from . import pool

LOST = ("preempted", "leavingpool")  # spot nodes present but no use to the job
CHECK_SECONDS = 15.0  # at most one pool read (get + node list) this often


class SpotFallback:
    """Watches one job's pool for missing spot nodes; see the module docstring."""

    def __init__(
        self,
        client: Callable[[], Any],
        profile: Profile,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client  # called when first needed: the context builds clients lazily
        self.profile = profile
        self.clock = clock
        self.enabled = profile["dedicated_fallback"] > 0 and bool(profile["create_pool"])
        self.wait = float(profile["spot_wait"]) * 60.0
        self.every = min(CHECK_SECONDS, max(self.wait / 4, float(profile["poll_interval"])))
        self._lock = threading.Lock()
        self._next = 0.0
        self._short_since: float | None = None
        self._reason = ""
        self._note = ""
        self._undo: Callable[[], None] | None = None
        self.added = 0  # dedicated nodes this watch added

    def note(self) -> str:
        """The sentence the job's views show (""): what was added, or why nothing could be."""
        with self._lock:
            return self._note

    def poll(self, queued: int) -> None:
        """Called on each progress poll with the job's queued (active) task count; reads the pool
        at most every ``every`` seconds and acts once the shortfall has lasted ``spot_wait``."""
        if not self.enabled:
            return
        now = self.clock()
        if now < self._next:
            return
        self._next = now + self.every
        if queued <= 0:
            self._short_since = None  # nothing waits: missing spot nodes cost the job nothing
            return
        try:
            found, missing, preempted = self._shortfall()
        except AzureError:
            return  # the follower says when the service does not answer
        if found is None or missing == 0:
            self._short_since = None
            return
        if self._short_since is None:
            self._short_since = now
        self._reason = "preempted" if preempted else "not granted"
        quota = found.allocation_state == "steady" and any("LowPriority" in e for e in found.quota_errors())
        if quota or now - self._short_since >= self.wait:
            self._fall_back(found, missing, quota)

    def rescue(self) -> bool:
        """The follower is about to give up on a pool that has no node (its resize stopped at a
        quota): look now, whatever the rate, and say whether dedicated nodes were added (now or
        before), so the job waits for them instead of failing."""
        if self.enabled:
            self._next = 0.0
            self.poll(queued=1)
        return self.added > 0

    def _shortfall(self) -> tuple[pool.PoolStatus | None, int, int]:
        """(pool status, spot nodes missing from its target, spot nodes preempted); the status is
        None for a pool this watch may not change (it then stops watching)."""
        client = self._client()
        found = pool.status(client, self.profile["pool_id"], idle=False)
        if found is None or not found.created_by_azpar:
            self.enabled = False
            return None, 0, 0
        if found.target_spot == 0:
            return found, 0, 0
        nodes = list(client.list_nodes(self.profile["pool_id"], select=["id", "state", "isDedicated"]))
        spot = [pool.state_name(n.state) for n in nodes if not n.is_dedicated]
        granted = sum(1 for state in spot if state not in LOST)
        return found, max(0, found.target_spot - granted), spot.count("preempted")

    def _fall_back(self, found: pool.PoolStatus, missing: int, quota: bool = False) -> None:
        self.enabled = False  # once per job
        added = min(self.profile["dedicated_fallback"], missing)
        when = "at the account's spot core quota" if quota else f"after {self.wait / 60:g} min"
        client = self._client()
        try:
            pool.resize(client, found.pool_id, found.target_dedicated + added, found.target_spot)
        except AzureError as exc:
            if pool.write_refused(exc):
                why = (
                    f"this identity may not add dedicated nodes (403 AuthorizationFailed: {pool.SUBMIT_ONLY_ROLE} "
                    f"cannot write pools; {pool.POOL_WRITE_ROLE} can)"
                )
            else:
                why = f"adding {added} dedicated node{'s' if added != 1 else ''} failed ({type(exc).__name__})"
            self._say(f"spot nodes {self._reason} {when}: {why}")
            return
        self.added = added
        if found.autoscale:
            self._undo = lambda: self._restore(lambda c: pool.restore_autoscale(c, self.profile))
        else:
            dedicated, spot = found.target_dedicated, found.target_spot
            self._undo = lambda: self._restore(lambda c: pool.resize(c, found.pool_id, dedicated, spot))
        self._say(f"spot nodes {self._reason} {when}: {added} dedicated node{'s' if added != 1 else ''} added")

    def _say(self, text: str) -> None:
        with self._lock:
            self._note = text

    def _restore(self, call: Callable[[Any], object]) -> None:
        try:
            call(self._client())
        except (AzureError, AzureServiceError, ValueError):
            pass  # the pool is gone (nothing to give back) or the client was closed meanwhile (ValueError)

    def close(self) -> None:
        """The job has ended: give the pool back its size (once)."""
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()
