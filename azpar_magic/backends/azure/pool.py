"""The Batch pool a profile describes: its definition, and create / attach / resize / delete.

A pool is long-lived and shared by many cells, so it is created once from the profile (or
attached to when it exists, whoever created it) and only resized explicitly: an interactive
run that finds no nodes asks for them at once instead of waiting 5+ minutes for autoscale.

Writing a pool (create, resize, autoscale, delete) needs a role with ``pools/write``: *Azure
Batch Data Contributor* or *Account Contributor*. *Azure Batch Job Submitter* may read pools
and submit jobs only (the Batch RBAC article); the service answers its pool writes with 403
``AuthorizationFailed``, which :func:`write_refused` recognises.

Pools azpar created carry the metadata item CREATED_BY; only those are ever changed without the
user asking (the idle rule of a profile's ``idle_timeout``, the spot fallback of spot.py). A
fixed-size pool with ``idle_timeout`` runs with autoscale on and autoscale.fixed_formula, which
asks for the fixed sizes while there is work and 0 once idle, because Batch changes a pool's
size by itself only through a formula.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import dill
from azure.batch import models
from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

from ...config import Profile
from ...errors import AzureServiceError
from . import autoscale, commands, errors

logger = logging.getLogger(__name__)
CONTAINER_TYPE = "dockerCompatible"
RESIZE_TIMEOUT = "PT15M"
POOL_WRITE_ROLE = "Azure Batch Data Contributor"
SUBMIT_ONLY_ROLE = "Azure Batch Job Submitter"
CREATED_BY = ("created-by", "azpar_magic")  # metadata item of every pool azpar creates


def write_refused(exc: BaseException) -> bool:
    """The service refused a request for the caller's role (403 AuthorizationFailed), as it
    does for every pool write of an *Azure Batch Job Submitter*."""
    code = getattr(getattr(exc, "error", None), "code", None)
    return isinstance(exc, HttpResponseError) and exc.status_code == 403 and code == "AuthorizationFailed"


def container_settings(profile: Profile) -> models.BatchTaskContainerSettings:
    """Task-level container settings: the image only. The registry and its credentials are
    the pool's (``pool_definition``); the REST spec says the task-level registry "can be
    omitted if was already provided at Pool creation", and a reference without its password
    (the only kind a task definition could carry, keeping the secret out of it) has no source
    showing that it works."""
    return models.BatchTaskContainerSettings(image_name=profile["container_image"])


def environment_settings(command: commands.NodeCommand) -> list[models.EnvironmentSetting] | None:
    """The environment settings a start task or job preparation command line needs (its script,
    commands.py), or None when it needs none."""
    return [models.EnvironmentSetting(name=n, value=v) for n, v in command.environment] or None


def _pool_registry(profile: Profile, password: str | None) -> list[models.ContainerRegistryReference] | None:
    if not profile["registry_server"]:
        return None
    return [
        models.ContainerRegistryReference(
            registry_server=profile["registry_server"], username=profile["registry_username"], password=password
        )
    ]


EVALUATION_INTERVAL = f"PT{autoscale.EVALUATION_INTERVAL_MINUTES}M"


def autoscale_formula(profile: Profile, *, own: bool = True) -> str | None:
    """The formula a pool azpar creates from ``profile`` runs: the named one (with the idle rule
    when ``idle_timeout`` is set), the fixed sizes with the idle rule, or None (fixed, no
    formula). ``own=False``: for a pool azpar did not create, which never gets the idle rule."""
    idle = profile["idle_timeout"] if own else 0
    if profile["autoscale"]:
        return autoscale.formula(
            profile["autoscale"],
            min_nodes=profile["min_nodes"],
            max_nodes=profile["max_nodes"],
            slots_per_node=profile["task_slots_per_node"],
            idle_minutes=idle,
        )
    if idle:
        return autoscale.fixed_formula(
            dedicated=profile["dedicated_nodes"], spot=profile["spot_nodes"], idle_minutes=idle
        )
    return None


def pool_definition(profile: Profile, registry_password: str | None = None) -> models.BatchPoolCreateOptions:
    """The pool a profile asks for: container-capable image with the task image pre-pulled,
    a start task installing dill and the profile's packages, fixed sizes or a named formula."""
    publisher, offer, sku, *version = profile["image"].split(":")
    vm = models.VirtualMachineConfiguration(
        image_reference=models.BatchVmImageReference(
            publisher=publisher, offer=offer, sku=sku, version=version[0] if version else "latest"
        ),
        node_agent_sku_id=profile["node_agent_sku"],
        container_configuration=models.BatchContainerConfiguration(
            type=CONTAINER_TYPE,
            container_image_names=[profile["container_image"]],
            container_registries=_pool_registry(profile, registry_password),
        ),
    )
    command = commands.start_task_command(
        dill.__version__, profile["packages"], profile["pip_options"], profile["start_commands"]
    )
    start = models.BatchStartTask(
        command_line=command.command_line,
        environment_settings=environment_settings(command),
        container_settings=container_settings(profile),
        user_identity=models.UserIdentity(
            auto_user=models.AutoUserSpecification(scope="pool", elevation_level="admin")
        ),
        max_task_retry_count=2,
        wait_for_success=True,
    )
    options: dict[str, Any] = {}
    formula = autoscale_formula(profile)
    if formula is not None:
        options.update(
            enable_auto_scale=True,
            auto_scale_formula=formula,
            auto_scale_evaluation_interval=EVALUATION_INTERVAL,
        )
    else:
        options.update(
            target_dedicated_nodes=profile["dedicated_nodes"],
            target_low_priority_nodes=profile["spot_nodes"],
            resize_timeout=RESIZE_TIMEOUT,
        )
    network = models.NetworkConfiguration(subnet_id=profile["subnet_id"]) if profile["subnet_id"] else None
    return models.BatchPoolCreateOptions(
        id=profile["pool_id"],
        vm_size=profile["vm_size"],
        virtual_machine_configuration=vm,
        task_slots_per_node=profile["task_slots_per_node"],
        task_scheduling_policy=models.BatchTaskSchedulingPolicy(node_fill_type="spread"),
        start_task=start,
        network_configuration=network,
        metadata=[models.BatchMetadataItem(name=CREATED_BY[0], value=CREATED_BY[1])],
        **options,
    )


@dataclass(frozen=True)
class PoolStatus:
    """What ``%azpar pool status`` and the panel show about a pool."""

    pool_id: str
    state: str
    allocation_state: str
    vm_size: str
    dedicated: int
    spot: int
    target_dedicated: int
    target_spot: int
    autoscale: bool
    slots_per_node: int
    #: "code: message" of each error of the last resize (Batch sets them once the pool is
    #: steady short of its target, e.g. AccountCoreQuotaReached).
    resize_errors: tuple[str, ...] = ()
    #: The pool carries azpar's CREATED_BY metadata: azpar may change it without being asked.
    created_by_azpar: bool = False
    #: Its autoscale formula ("" when autoscale is off) and the idle timeout that formula holds.
    formula: str = ""
    idle_minutes: int = 0
    #: Every node idle since then (None: some node works or boots, or no node); when the idle
    #: rule will take the pool to 0 (the first autoscale evaluation after idle_minutes).
    idle_since: dt.datetime | None = None
    shrink_at: dt.datetime | None = None

    def describe(self) -> str:
        mode = "autoscale" if self.autoscale else "fixed size"
        text = (
            f"pool {self.pool_id} ({self.vm_size}, {self.state}, {self.allocation_state}, {mode}): {self.dedicated} "
            f"dedicated + {self.spot} spot nodes (target {self.target_dedicated} + {self.target_spot}), "
            f"{self.slots_per_node} task slots per node"
        )
        return text + "".join(f"; last resize: {e}" for e in self.resize_errors) + self.idle_note()

    def idle_note(self) -> str:
        """What the idle rule will do, in local time: "" for a pool without it."""
        if not (self.autoscale and self.idle_minutes):
            return ""
        if self.idle_since is not None and self.shrink_at is not None:
            return (
                f"; idle since {_clock(self.idle_since)}, shrinks to 0 at about {_clock(self.shrink_at)} "
                f"(the first autoscale evaluation after {self.idle_minutes} idle minutes)"
            )
        if self.dedicated + self.spot + self.target_dedicated + self.target_spot == 0:
            return f"; at 0 nodes after {self.idle_minutes} idle minutes (the next cell grows it)"
        return (
            f"; shrinks to 0 after {self.idle_minutes} minutes without tasks "
            f"(Batch evaluates this every {autoscale.EVALUATION_INTERVAL_MINUTES} minutes or more)"
        )

    def quota_errors(self) -> tuple[str, ...]:
        """The resize errors that only a change of quota or profile can clear."""
        return tuple(e for e in self.resize_errors if e.split(":", 1)[0].endswith("QuotaReached"))


def state_name(value: Any) -> str:
    """The service's word for a state ("idle"), from the SDK's enum or a plain string
    (``str()`` of the enum gives "BatchNodeState.IDLE")."""
    return str(getattr(value, "value", value) or "")


def _clock(when: dt.datetime) -> str:
    return when.astimezone().strftime("%H:%M")


def _seconds(interval: Any) -> float:
    """An evaluation interval as the SDK gives it (timedelta) or as sent (ISO 8601 "PT5M")."""
    if isinstance(interval, dt.timedelta):
        return interval.total_seconds()
    if isinstance(interval, str) and interval.startswith("PT") and interval.endswith("M"):
        try:
            return float(interval[2:-1]) * 60
        except ValueError:
            pass
    return autoscale.EVALUATION_INTERVAL_MINUTES * 60.0


def shrink_time(
    idle_since: dt.datetime, idle_minutes: int, last_run: dt.datetime | None, interval_seconds: float
) -> dt.datetime:
    """When the idle rule takes a pool idle since ``idle_since`` to 0: the first evaluation at or
    after ``idle_since + idle_minutes``. Batch evaluates at the last run's time plus whole
    intervals (the autoscale article: a new schedule starts when autoscale is enabled)."""
    due = idle_since + dt.timedelta(minutes=idle_minutes)
    if last_run is None:
        return due
    steps = max(1, -(-(due - last_run).total_seconds() // interval_seconds))
    return last_run + dt.timedelta(seconds=steps * interval_seconds)


def _idle_since(client: Any, pool_id: str) -> dt.datetime | None:
    """When the last of the pool's nodes became idle, if all are idle (else None)."""
    try:
        nodes = list(client.list_nodes(pool_id, select=["id", "state", "stateTransitionTime"]))
    except AzureError:
        return None
    if not nodes or any(state_name(n.state) != "idle" or n.state_transition_time is None for n in nodes):
        return None
    return max(n.state_transition_time for n in nodes)


def status(client: Any, pool_id: str, *, idle: bool = True) -> PoolStatus | None:
    """The pool's status, or None when it does not exist. For a pool running azpar's idle rule
    with nodes, one more call (the node list) says since when it is idle (``idle=False``: not)."""
    try:
        pool = client.get_pool(pool_id)
    except ResourceNotFoundError:
        return None
    found = status_of(pool)
    if idle and found.idle_minutes and found.autoscale and found.dedicated + found.spot:
        since = _idle_since(client, pool_id)
        if since is not None:
            run = getattr(pool, "auto_scale_run", None)
            last = getattr(run, "timestamp", None)
            at = shrink_time(since, found.idle_minutes, last, _seconds(pool.auto_scale_evaluation_interval))
            found = dataclasses.replace(found, idle_since=since, shrink_at=at)
    return found


def status_of(pool: Any) -> PoolStatus:
    """The status of a pool the SDK returned."""
    formula = (pool.auto_scale_formula or "") if pool.enable_auto_scale else ""
    return PoolStatus(
        pool.id,
        state_name(pool.state),
        state_name(pool.allocation_state),
        pool.vm_size or "",
        pool.current_dedicated_nodes or 0,
        pool.current_low_priority_nodes or 0,
        pool.target_dedicated_nodes or 0,
        pool.target_low_priority_nodes or 0,
        bool(pool.enable_auto_scale),
        pool.task_slots_per_node or 1,
        tuple(f"{e.code}: {e.message}" for e in pool.resize_errors or []),
        created_by_azpar=any((m.name, m.value) == CREATED_BY for m in pool.metadata or []),
        formula=formula,
        idle_minutes=autoscale.idle_minutes(formula),
    )


def ensure(client: Any, profile: Profile, registry_password: str | None = None) -> tuple[PoolStatus, bool]:
    """Attach to the profile's pool, creating it when missing (and allowed); (status, created)."""
    found = status(client, profile["pool_id"])
    if found is not None:
        return _follow_idle_timeout(client, profile, found), False
    if not profile["create_pool"]:
        raise AzureServiceError(
            f"the pool {profile['pool_id']!r} does not exist in {profile['batch_account_url']} and the profile says "
            "create_pool = false: ask the administrator to create it (or set create_pool = true with an identity "
            f"holding the {POOL_WRITE_ROLE} role)"
        )
    try:
        logger.info("creating pool %s (%s)", profile["pool_id"], profile["vm_size"])
        client.create_pool(pool_definition(profile, registry_password))
    except HttpResponseError as exc:
        if write_refused(exc):
            raise errors.translate(
                exc,
                message=(
                    f"the pool {profile['pool_id']!r} does not exist in {profile['batch_account_url']} and this "
                    "identity may not create it (403 AuthorizationFailed): creating a pool needs the "
                    f"{POOL_WRITE_ROLE} role (or Azure Batch Account Contributor) on the Batch account; "
                    f"{SUBMIT_ONLY_ROLE} can only use an existing pool. Ask an administrator to create the pool "
                    "(`%azpar pool create` with that role) or to grant the role"
                ),
            ) from None
        raise
    _last_enable.pop(profile["pool_id"].lower(), None)  # a new pool: no enable window (a deleted one's is gone)
    created = status(client, profile["pool_id"])
    assert created is not None
    return created, True


def _follow_idle_timeout(client: Any, profile: Profile, found: PoolStatus) -> PoolStatus:
    """A pool azpar created whose formula holds another idle timeout than the profile's now
    gets the profile's formula (the profile's idle_timeout changed since the pool was made).
    Only then, only for azpar's own pools with autoscale on, and only when the profile may
    write pools; a refusal or a busy pool leaves it as it is (it is tried again next kernel)."""
    if not (found.created_by_azpar and found.autoscale and profile["create_pool"]):
        return found
    if found.idle_minutes == profile["idle_timeout"] or found.allocation_state != "steady":
        return found
    wanted = autoscale_formula(profile)
    if wanted is None:
        return found
    try:
        _enable(client, profile["pool_id"], wanted)
    except AzureError:
        return found
    return status(client, profile["pool_id"]) or found


#: Batch takes EnablePoolAutoScale at most once every 30 s per pool (REST spec, Pools_EnablePoolAutoScale);
#: a call within the window is refused with TOO_MANY_ENABLES (the code the Batch SDKs name,
#: BatchErrorCodeStrings.AutoScaleTooManyRequestsToEnable).
ENABLE_WINDOW = 30.0
TOO_MANY_ENABLES = "TooManyEnableAutoScaleRequests"
_last_enable: dict[str, float] = {}  # pool id (lower case) -> time.monotonic() of this process's last enable
_restore_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_resizes: dict[str, int] = {}  # pool id (lower case) -> resizes this process made: a later run's own


def _enable(client: Any, pool_id: str, formula: str) -> None:
    options = models.BatchPoolEnableAutoScaleOptions(  # type: ignore[call-overload]  # ISO 8601 text, as sent
        auto_scale_formula=formula, auto_scale_evaluation_interval=EVALUATION_INTERVAL
    )
    client.enable_pool_auto_scale(pool_id, options)
    _last_enable[pool_id.lower()] = time.monotonic()


def _too_many_enables(exc: BaseException) -> bool:
    code = getattr(getattr(exc, "error", None), "code", None)
    return isinstance(exc, HttpResponseError) and code == TOO_MANY_ENABLES


def _wait_window(pool_id: str) -> bool:
    """Sleep out the rest of the enable window since this process's last enable on the pool;
    True when it slept."""
    last = _last_enable.get(pool_id.lower())
    left = 0.0 if last is None else last + ENABLE_WINDOW - time.monotonic()
    if left <= 0:
        return False
    logger.info(
        "autoscale was enabled on pool %s %.0f s ago: enabling again in %.0f s", pool_id, ENABLE_WINDOW - left, left
    )
    time.sleep(left)
    return True


def _restore_lock(pool_id: str) -> threading.Lock:
    with _locks_guard:
        return _restore_locks.setdefault(pool_id.lower(), threading.Lock())


def restore_autoscale(client: Any, profile: Profile) -> bool:
    """Turn the profile's formula back on after a resize for a run turned autoscale off (an
    explicit resize needs it off: the autoscale article). The named formula on any pool, as
    before, with the idle rule only on a pool azpar created; a fixed-size formula (which exists
    for the idle rule) only on a pool azpar created. True when it was turned on; service errors
    are left to the caller.

    Batch refuses a second enable on a pool within 30 s (ENABLE_WINDOW): two quick cells on an
    empty pool, or a run's finish and its spot fallback's close, would otherwise leave the pool
    with fixed targets and no formula, so no idle rule, billing until someone acts. So restores
    of one pool take turns; one that finds the formula on already does nothing (the other path
    restored it); otherwise it waits out the rest of the window since this process's last enable,
    and a refusal (an enable this process did not make) waits one more window and tries again.
    Its callers run it in a background thread, so the wait holds up no cell."""
    if autoscale_formula(profile) is None:
        return False
    pool_id = profile["pool_id"]
    resizes = _resizes.get(pool_id.lower(), 0)
    with _restore_lock(pool_id):
        found, formula = _restore_target(client, profile)
        if found is not None and formula is not None and _wait_window(pool_id):
            if _resizes.get(pool_id.lower(), 0) != resizes:
                # A later run resized the pool while this restore waited: the pool is that run's now
                # (stopping its resize would starve it), and its own end restores the formula.
                return False
            found, formula = _restore_target(client, profile)  # read again after the wait
        if found is None or formula is None:
            return False
        if found.allocation_state != "steady" and not found.autoscale:
            # The service refuses to enable autoscale during a resize (REST spec, EnablePoolAutoScale);
            # the run that asked for it has ended, so stop it rather than leave the pool without its
            # formula (and its idle rule) for good.
            client.begin_stop_pool_resize(pool_id, polling_interval=0.2).result()
            _wait_steady(client, pool_id)
        try:
            _enable(client, pool_id, formula)
        except HttpResponseError as exc:
            if not _too_many_enables(exc):
                raise
            _last_enable[pool_id.lower()] = time.monotonic()
            _wait_window(pool_id)
            _enable(client, pool_id, formula)
        return True


def wait_restores(pool_id: str, timeout: float | None = None) -> None:
    """Wait for a formula restore of the pool under way in another thread (it may be waiting out
    the enable window), so that closing the backend does not cut it off and leave the pool
    without its formula."""
    lock = _restore_lock(pool_id)
    if lock.acquire(timeout=2 * ENABLE_WINDOW + 15 if timeout is None else timeout):
        lock.release()


def _restore_target(client: Any, profile: Profile) -> tuple[PoolStatus | None, str | None]:
    """The pool and the formula to turn on, (None, None) when there is nothing to do: no pool, no
    formula for it, or that formula on already."""
    found = status(client, profile["pool_id"], idle=False)
    formula = autoscale_formula(profile, own=found is not None and found.created_by_azpar)
    if found is None or formula is None or (found.autoscale and found.formula == formula):
        return None, None
    return found, formula


def resize(client: Any, pool_id: str, dedicated: int, spot: int) -> None:
    """Set fixed targets (turning autoscale off first, as the service requires)."""
    current = status(client, pool_id)
    if current is None:
        raise AzureServiceError(f"the pool {pool_id!r} does not exist")
    _resizes[pool_id.lower()] = _resizes.get(pool_id.lower(), 0) + 1
    if current.autoscale:
        client.disable_pool_auto_scale(pool_id)
    if current.allocation_state == "resizing":
        client.begin_stop_pool_resize(pool_id, polling_interval=0.2).result()
        _wait_steady(client, pool_id)
    options = models.BatchPoolResizeOptions(  # type: ignore[call-overload]  # resize_timeout: ISO 8601 text, as sent
        target_dedicated_nodes=dedicated,
        target_low_priority_nodes=spot,
        resize_timeout=RESIZE_TIMEOUT,
        node_deallocation_option="taskcompletion",
    )
    client.begin_resize_pool(pool_id, options, polling_interval=1)


def _wait_steady(client: Any, pool_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state_name(client.get_pool(pool_id).allocation_state) == "steady":
            return
        time.sleep(0.2)


def nodes_needed(profile: Profile, n_tasks: int) -> tuple[int, int]:
    """(dedicated, spot) an interactive run of ``n_tasks`` asks for when the pool is empty:
    the profile's fixed sizes, or, under autoscale, enough slots for the tasks within
    [min_nodes, max_nodes], spot first as the formulas do."""
    if not profile["autoscale"]:
        return profile["dedicated_nodes"], profile["spot_nodes"]
    slots = profile["task_slots_per_node"]
    want = max(profile["min_nodes"], min(profile["max_nodes"], -(-n_tasks // slots)))
    dedicated = min(profile["min_nodes"], want)
    return dedicated, want - dedicated


def delete(client: Any, pool_id: str) -> None:
    try:
        client.begin_delete_pool(pool_id, polling_interval=1)
    except ResourceNotFoundError:
        pass


def image_packages(client: Any, pool_id: str) -> tuple[dict[str, str] | None, str]:
    """(canonical name -> version of what the image's Python has, the node that said so), or
    (None, why not). The start task writes ``pip list --format=json`` into the node's shared
    folder (commands.IMAGE_PACKAGES); this reads it from one idle or running node through the
    node file API (REST spec: Get Node File, a path relative to the node's root)."""
    import json

    from packaging.utils import canonicalize_name

    try:
        nodes = [
            n for n in client.list_nodes(pool_id, select=["id", "state"]) if state_name(n.state) in ("idle", "running")
        ]
    except AzureError as exc:
        return None, f"the pool {pool_id} could not be read ({type(exc).__name__})"
    if not nodes:
        return None, f"the pool {pool_id} has no idle or running node to ask"
    for node in nodes[:3]:
        try:
            data = b"".join(client.download_node_file(pool_id, node.id, f"shared/{commands.IMAGE_PACKAGES}"))
            return {canonicalize_name(d["name"]): str(d["version"]) for d in json.loads(data)}, node.id
        except (AzureError, ValueError, KeyError, TypeError):
            continue
    return None, (
        f"no node of the pool {pool_id} has reported its image's packages (a pool made by an earlier version of "
        "azpar_magic does not; %azpar pool delete and a new cell make it again)"
    )
