"""The Azure probes of ``%azpar doctor``: what a profile's identity can do on its Batch and
Storage accounts, found with calls that change nothing (or undo what they did).

Each probe returns ``(status, detail, fix)``: status ``ok``, ``warning``, ``failed`` or
``skipped`` (not applicable here, with why); ``fix`` is one sentence when not ok.
:func:`probes` lists them in order with the names of the probes each one needs;
``azpar_magic.doctor`` runs them, skips the ones whose needs failed, and renders the table.
This module knows nothing of the table, so it stays below the session layer.

How each question is asked, and why:

- *Does the account answer?* ``GET /pools/{id}``: a read every role may do (``pools/read``),
  whose answer (the pool, or 404) the later probes need anyway.
- *May this identity submit jobs?* ``PATCH /jobs/{id}`` with an empty body on a job id that
  cannot exist (``azpar-doctor-<random>``). Submitting needs the job *write* permission,
  which a reader lacks, so a read (list jobs) cannot tell a submitter from a reader; a write
  to nothing can: the service authorizes before it looks the job up, so a role without the
  permission gets 403 ``AuthorizationFailed`` and one with it gets 404 ``JobNotFound``, and
  no job is created or changed either way. That authorization precedes the lookup is how the
  test service works (``tests/batch_emulator/service.py``: ``dispatch``) and how Azure
  RBAC data actions are described (the Batch RBAC article grants permissions per operation);
  no source shows the order on the real service, so a 404 is read as "allowed" and the
  ``--run`` probe is the proof.
- *May it write pools?* ``PATCH /pools/{id}`` with an empty body on a pool id that cannot
  exist, read the same way (403: *Azure Batch Job Submitter*; 404: a role with
  ``pools/write``). An empty PATCH of the real pool would change nothing either, but it
  would still move the pool's ETag and lastModified.
- *Image and node agent*: ``GET /supportedimages`` (the REST spec's Pools_ListSupportedImages;
  the container doc requires the ``DockerCompatible`` capability for container pools).
- *SAS round trip*: a blob written through a create+write blob SAS and read back through a
  read SAS with plain HTTP, as a task would (storage.py), then deleted with the profile's own
  credential; the read SAS must also refuse a write (the least privilege tasks rely on).
- *Autoscale*: ``POST /pools/{id}/evaluateautoscale`` (Pools_EvaluatePoolAutoScale): free, no
  nodes change; it needs an autoscale pool, and the test service counts it as a pool write
  (tests/batch_emulator/auth.py; the sources leave that open), so a role that may not write
  pools is not asked.

Throttling: the doctor's clients do not retry on their own; a 429 / 503 is asked again after
its ``Retry-After`` (at most :data:`THROTTLE_ATTEMPTS` times, waiting at most
:data:`THROTTLE_WAIT_CAP` seconds each) and the line says it was throttled.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from ...config import Profile
from ...errors import ConfigError
from . import auth, autoscale, errors, pool, storage

OK, WARNING, FAILED, SKIPPED = "ok", "warning", "failed", "skipped"
Outcome = tuple[str, str, str]  # (status, detail, fix)
Probe = tuple[str, str, tuple[str, ...], Callable[[], Outcome]]  # (key, title, needs, run)

THROTTLE_ATTEMPTS = 4
THROTTLE_WAIT_CAP = 10.0
STORAGE_SCOPE = "https://storage.azure.com/.default"
CONTAINER_CAPABILITY = "DockerCompatible"
PROBE_BLOB_PREFIX = "azpar-doctor/"
HTTP_TIMEOUT = 20.0


class Throttled(Exception):
    """Every attempt was answered 429 / 503."""


def _code(exc: BaseException) -> str | None:
    return getattr(getattr(exc, "error", None), "code", None) or getattr(exc, "error_code", None)


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


def _short(exc: BaseException) -> str:
    """One line: "403 AuthenticationFailed: message" (what the service said, first line only)."""
    status = _status(exc)
    return f"{status} {errors.describe(exc)}" if status else errors.describe(exc)


def _retry_after(exc: BaseException) -> float:
    response = getattr(exc, "response", None)
    try:
        return float(response.headers.get("Retry-After", 1)) if response is not None else 1.0
    except (TypeError, ValueError):
        return 1.0


class AzureDoctor:
    """The probes for one profile; later probes read what earlier ones found."""

    def __init__(
        self, profile: Profile, environ: Mapping[str, str] | None = None, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.profile = profile
        self.environ = environ
        self.sleep = sleep
        self.accounts = auth.accounts(profile)
        self.throttled: list[str] = []  # "429 TooManyRequests, Retry-After 1 s" per throttled answer
        self.batch_credential: Any = None
        self.storage_credential: Any = None
        self.client: Any = None
        self.pool: Any = None  # the service's pool object, None when it does not exist
        self.pool_writes: bool | None = None
        self._probe_id = f"azpar-doctor-{secrets.token_hex(6)}"

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def _call(self, action: Callable[[], Any]) -> Any:
        """Run one request; a 429 / 503 is asked again after its Retry-After (bounded)."""
        from azure.core.exceptions import HttpResponseError

        for attempt in range(THROTTLE_ATTEMPTS):
            try:
                return action()
            except HttpResponseError as exc:
                if _status(exc) not in (429, 503):
                    raise
                wait = min(_retry_after(exc), THROTTLE_WAIT_CAP)
                self.throttled.append(f"{_status(exc)} {_code(exc) or 'throttled'}, Retry-After {wait:g} s")
                if attempt == THROTTLE_ATTEMPTS - 1:
                    raise Throttled(_short(exc)) from None
                self.sleep(wait)
        raise AssertionError("unreachable")

    def _throttle_note(self, before: int) -> str:
        new = self.throttled[before:]
        return f"; throttled {len(new)}x ({new[0]}), then answered when asked again" if new else ""

    def _batch_failure(self, exc: BaseException, what: str) -> Outcome:
        """A Batch request that failed, as one line with its fix."""
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

        if isinstance(exc, Throttled):
            return (
                FAILED,
                f"{what}: the account kept answering {exc} ({THROTTLE_ATTEMPTS} attempts)",
                "The account is throttling requests: wait a minute and run the doctor again; if it persists, "
                "fewer kernels polling the same account (or a longer poll_interval) lowers the rate.",
            )
        if isinstance(exc, ServiceRequestError):
            return (
                FAILED,
                f"{what}: no answer from {self.accounts.batch_url} ({str(exc).splitlines()[0]})",
                "Check batch_account_url (the account's URL from the portal's Overview page) and that this "
                "machine can reach it (network, proxy, firewall).",
            )
        code = _code(exc)
        if (
            _status(exc) in (401, 403)
            and code in ("AuthenticationFailed", "AuthenticationRequired", None)
            or isinstance(exc, ClientAuthenticationError)
            and code != "AuthorizationFailed"
        ):
            return (FAILED, f"{what}: the account refused the credential ({_short(exc)})", self._auth_fix("Batch"))
        if code == "AuthorizationFailed":
            return (
                FAILED,
                f"{what}: this identity's role does not allow it ({_short(exc)})",
                f"Ask for the {pool.SUBMIT_ONLY_ROLE} role (or {pool.POOL_WRITE_ROLE}) on the Batch account.",
            )
        return (
            FAILED,
            f"{what}: {_short(exc)}",
            "Read the service's message on this line; fix the profile field it names.",
        )

    def _auth_fix(self, service: str) -> str:
        if self.profile["auth"] == "shared-key":
            field = "batch_key_env" if service == "Batch" else "storage_key_env"
            return (
                f"The environment variable {self.profile[field]} does not hold this {service} account's key: "
                f"copy key1 or key2 from the portal ({service} account > Keys) into it."
            )
        return (
            f"The token was refused: check that the {service} account accepts Microsoft Entra ID sign-in and "
            "that you signed in to its tenant (az login --tenant ...)."
        )

    # ------------------------------------------------------------------ 2. credential

    def credential(self) -> Outcome:
        """The profile's secrets are present (shared-key), or a token is obtainable (identities).
        No request reaches Batch or Storage yet."""
        mode = self.profile["auth"]
        try:
            self.batch_credential = auth.batch_credential(self.profile, self.environ)
            self.storage_credential = auth.storage_credential(self.profile, self.environ)
        except ConfigError as exc:
            return FAILED, str(exc), self._missing_secret_fix()
        if mode == "shared-key":
            import base64
            import binascii

            for cred, field in ((self.batch_credential, "batch_key_env"), (self.storage_credential, "storage_key_env")):
                try:
                    base64.b64decode(cred.named_key.key, validate=True)
                except (binascii.Error, ValueError):
                    return (
                        FAILED,
                        f"the value of {self.profile[field]} is not a base64 account key",
                        f"Put the account's key (key1 or key2 from the portal, ending in '==') into "
                        f"{self.profile[field]}.",
                    )
            return (
                OK,
                (
                    f"shared keys found in {self.profile['batch_key_env']} and {self.profile['storage_key_env']} "
                    "(they give full access to both accounts)"
                ),
                "",
            )
        from azure.core.exceptions import ClientAuthenticationError

        try:
            self.batch_credential.get_token(auth.BATCH_SCOPE)
            self.storage_credential.get_token(STORAGE_SCOPE)
        except ClientAuthenticationError as exc:
            return FAILED, f"auth = {mode}: no token ({str(exc).strip().splitlines()[0]})", self._token_fix(mode)
        return OK, f"auth = {mode}: tokens obtained for Batch and Storage", ""

    def _missing_secret_fix(self) -> str:
        if self.profile["auth"] == "shared-key":
            return (
                f"Set {self.profile['batch_key_env']} and {self.profile['storage_key_env']} to the accounts' keys "
                "in the environment the kernel starts from (or use an identity: auth = cli)."
            )
        return "Set the missing environment variables named above before starting the kernel."

    @staticmethod
    def _token_fix(mode: str) -> str:
        return {
            "cli": "Run `az login` in the environment the kernel runs in.",
            "managed-identity": "Run where a managed identity is assigned (an Azure VM or JupyterHub pod with one), "
            "or set managed_identity_client_id to the identity's client id.",
            "service-principal": "Check AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET.",
        }.get(
            mode,
            "Sign in with `az login`, or set AZURE_TENANT_ID / AZURE_CLIENT_ID / AZURE_CLIENT_SECRET, or run "
            "where a managed identity is assigned.",
        )

    # ------------------------------------------------------------------ 3. the Batch account

    def batch_account(self) -> Outcome:
        from azure.batch import BatchClient
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        self.client = BatchClient(
            self.accounts.batch_url, self.batch_credential, retry_total=0, connection_timeout=10, read_timeout=30
        )
        before = len(self.throttled)
        try:
            self.pool = self._call(lambda: self.client.get_pool(self.profile["pool_id"]))
        except ResourceNotFoundError:
            self.pool = None
        except (AzureError, Throttled) as exc:
            return self._batch_failure(exc, f"GET pool {self.profile['pool_id']}")
        status = WARNING if len(self.throttled) > before else OK
        fix = (
            "The account throttles requests now; runs still work (they retry), but slower." if status == WARNING else ""
        )
        return status, f"{self.accounts.batch_url} answered{self._throttle_note(before)}", fix

    # ------------------------------------------------------------------ 4. role

    def _write_probe(self, action: Callable[[], Any], missing: str) -> bool | Outcome:
        """True: the role allows the write (the service said ``missing``: 404); False: 403
        AuthorizationFailed; an Outcome for any other answer."""
        from azure.core.exceptions import AzureError

        try:
            self._call(action)
        except (AzureError, Throttled) as exc:
            if _code(exc) == missing:
                return True
            if _code(exc) == "AuthorizationFailed":
                return False
            return self._batch_failure(exc, "probe")
        return True  # the id existed (it is random: practically never) and an empty PATCH changed nothing

    def job_submission(self) -> Outcome:
        from azure.batch import models

        found = self._write_probe(
            lambda: self.client.update_job(self._probe_id, models.BatchJobUpdateOptions()), "JobNotFound"
        )
        if isinstance(found, tuple):
            return found
        if found:
            how = "the shared key gives full access" if self.profile["auth"] == "shared-key" else "the role allows it"
            return OK, f"may submit jobs ({how}; probe: PATCH of a job that does not exist answered 404)", ""
        return (
            FAILED,
            "may not submit jobs: a job write was refused (403 AuthorizationFailed)",
            f"Ask for the {pool.SUBMIT_ONLY_ROLE} role on the Batch account (or {pool.POOL_WRITE_ROLE}, which "
            "also lets azpar create and resize the pool).",
        )

    def pool_writes_probe(self) -> Outcome:
        from azure.batch import models

        found = self._write_probe(
            lambda: self.client.update_pool(self._probe_id, models.BatchPoolUpdateOptions()), "PoolNotFound"
        )
        if isinstance(found, tuple):
            return found
        self.pool_writes = found
        if found:
            return OK, "may write pools (create, resize, autoscale)", ""
        return (
            WARNING,
            f"may not write pools (403 AuthorizationFailed: {pool.SUBMIT_ONLY_ROLE} reads pools and "
            "submits jobs only): runs use the pool as it is and never resize it",
            f"Fine for a pool the administrator sizes; to let azpar create or resize it, ask for the "
            f"{pool.POOL_WRITE_ROLE} role.",
        )

    # ------------------------------------------------------------------ 5. the pool

    def pool_state(self) -> Outcome:
        p, pid = self.pool, self.profile["pool_id"]
        if p is None:
            if not self.profile["create_pool"]:
                return (
                    FAILED,
                    f"pool {pid} does not exist and the profile says create_pool = false",
                    "Ask the administrator to create it, or set create_pool = true with a role that may write pools.",
                )
            if self.pool_writes is False:
                return (
                    FAILED,
                    f"pool {pid} does not exist and this identity may not create it",
                    f"Ask an administrator to create it (%azpar pool create with the {pool.POOL_WRITE_ROLE} "
                    "role) or to grant you that role.",
                )
            return (
                OK,
                (
                    f"pool {pid} does not exist yet: the first run (or %azpar pool create) creates it from the "
                    f"profile ({self.profile['vm_size']})"
                ),
                "",
            )
        found = pool.status_of(p)
        detail = found.describe()
        if found.state != "active":
            return (
                FAILED,
                detail,
                f"The pool is {found.state}: wait until it is gone, then let the next run create "
                "it again (or use another pool_id).",
            )
        if found.quota_errors():
            stuck = found.dedicated + found.spot == 0
            return (
                FAILED if stuck else WARNING,
                detail + ("; no task can run" if stuck else ""),
                "The Batch account's core quota is too small for this pool: request an increase on the Batch "
                "account's Quotas page in the portal, or choose a smaller vm_size or the other kind of node.",
            )
        if found.resize_errors:
            return (WARNING, detail, "Fix what the resize error names, then resize the pool again.")
        if (p.vm_size or "").lower() != self.profile["vm_size"].lower():
            return (
                WARNING,
                f"{detail}; its VM size differs from the profile's {self.profile['vm_size']}",
                "The existing pool is used as it is; delete it (%azpar pool delete) to recreate it from the "
                "profile, or set vm_size to match.",
            )
        broken = self._broken_nodes(pid)
        if broken:
            return broken[0], f"{detail}; {broken[1]}", broken[2]
        empty = found.dedicated + found.spot + found.target_dedicated + found.target_spot == 0
        if empty and not found.autoscale and self.pool_writes is False:
            return (
                WARNING,
                f"{detail}; no nodes, and this identity may not resize it",
                "Tasks wait until an administrator resizes the pool.",
            )
        return OK, detail, ""

    def _broken_nodes(self, pool_id: str) -> Outcome | None:
        """Nodes that will never run a task: ``unusable`` (e.g. a container image that could not
        be pulled: node error ContainerInvalidImage) or ``starttaskfailed``, with the first
        node's error. None when every node is fine (or the list cannot be read: the pool line
        already says the pool answered)."""
        from azure.core.exceptions import AzureError

        try:
            nodes = self._call(
                lambda: list(self.client.list_nodes(pool_id, select=["id", "state", "errors", "startTaskInfo"]))
            )
        except (AzureError, Throttled):
            return None
        bad = [n for n in nodes if pool.state_name(n.state) in ("unusable", "starttaskfailed")]
        if not bad:
            return None
        first = bad[0]
        state = pool.state_name(first.state)
        errors = list(getattr(first, "errors", None) or [])
        if errors:
            details = {d.name: d.value for d in (errors[0].error_details or []) if d.name}
            why = f"{errors[0].code}: {details.get('Message') or errors[0].message}"
        else:
            info = getattr(first, "start_task_info", None)
            failure = getattr(info, "failure_info", None)
            code = getattr(info, "exit_code", None)
            why = (
                f"{failure.code}: {failure.message}"
                if failure is not None
                else f"the start task exited with code {code}"
            )
        said = f"{len(bad)} of {len(nodes)} nodes {state} (node {first.id}: {why})"
        if errors and errors[0].code == "ContainerInvalidImage":
            fix = (
                f"The node could not pull the container image: check container_image "
                f"({self.profile['container_image']}) exists and, for a private registry, registry_server and its "
                "credentials; then delete the pool (%azpar pool delete) so it is created again."
            )
        elif state == "starttaskfailed":
            fix = (
                "The pool's start task failed (package install or start_commands): read its stderr on the node "
                "(Batch Explorer or the portal), fix packages / start_commands, then recreate the pool."
            )
        else:
            fix = "Read the node error above; remove the node or recreate the pool once its cause is fixed."
        return FAILED, said, fix

    # ------------------------------------------------------------------ 6. image

    def _image_pair(self) -> tuple[str, str, str, str, str]:
        """(publisher, offer, sku, node agent, whose): the existing pool's, else the profile's."""
        vm = getattr(self.pool, "virtual_machine_configuration", None) if self.pool is not None else None
        if vm is not None and vm.image_reference is not None:
            ref = vm.image_reference
            return (
                ref.publisher or "",
                ref.offer or "",
                ref.sku or "",
                vm.node_agent_sku_id or "",
                f"pool {self.profile['pool_id']}",
            )
        publisher, offer, sku, *_ = self.profile["image"].split(":")
        return publisher, offer, sku, self.profile["node_agent_sku"], "the profile"

    def image(self) -> Outcome:
        from azure.core.exceptions import AzureError

        publisher, offer, sku, agent, whose = self._image_pair()
        name = f"{publisher}:{offer}:{sku}"
        try:
            images = self._call(lambda: list(self.client.list_supported_images()))
        except (AzureError, Throttled) as exc:
            return self._batch_failure(exc, "list supported images")

        def same_image(entry: Any) -> bool:
            ref = entry.image_reference
            return ((ref.publisher or "").lower(), (ref.offer or "").lower(), (ref.sku or "").lower()) == (
                publisher.lower(),
                offer.lower(),
                sku.lower(),
            )

        containers = [e for e in images if CONTAINER_CAPABILITY in (e.capabilities or [])]
        example = (
            (
                f"{containers[0].image_reference.publisher}:{containers[0].image_reference.offer}:"
                f"{containers[0].image_reference.sku} with {containers[0].node_agent_sku_id}"
            )
            if containers
            else "one the list marks DockerCompatible"
        )
        matches = [e for e in images if same_image(e)]
        if not matches:
            return (
                FAILED,
                f"image {name} ({whose}) is not among the account's supported images",
                f"Set image and node_agent_sku to a supported container pair, e.g. {example}.",
            )
        entry = next((e for e in matches if (e.node_agent_sku_id or "").lower() == agent.lower()), None)
        if entry is None:
            agents = ", ".join(sorted({e.node_agent_sku_id for e in matches}))
            return (
                FAILED,
                f"image {name} ({whose}) goes with node agent {agents}, not {agent!r}",
                f'Set node_agent_sku = "{matches[0].node_agent_sku_id}".',
            )
        if CONTAINER_CAPABILITY not in (entry.capabilities or []):
            return (
                FAILED,
                f"image {name} with {agent} ({whose}) is supported but cannot run containers (no "
                f"{CONTAINER_CAPABILITY} capability)",
                f"Use a container image pair, e.g. {example}.",
            )
        end = getattr(entry, "batch_support_end_of_life", None)
        if end is not None:
            when = end.date().isoformat() if isinstance(end, dt.datetime) else str(end)
            past = isinstance(end, dt.datetime) and end < dt.datetime.now(dt.timezone.utc)
            return (
                WARNING,
                f"image {name} with {agent} ({whose}) supports containers; Batch support "
                f"{'ended' if past else 'ends'} on {when}",
                f"Move to a supported pair before then, e.g. {example}.",
            )
        return OK, f"image {name} with {agent} ({whose}) is a supported container pair", ""

    # ------------------------------------------------------------------ 7. storage

    def storage_reachable(self) -> Outcome:
        from azure.core.exceptions import AzureError, ResourceNotFoundError, ServiceRequestError
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient(
            self.accounts.storage_url,
            credential=self.storage_credential,
            retry_total=0,
            connection_timeout=10,
            read_timeout=30,
        )
        container = storage.CACHE_CONTAINER
        try:
            service.get_container_client(container).get_container_properties()
            there = f"container {container} exists"
        except ResourceNotFoundError:
            there = f"container {container} is created by the first run"
        except ServiceRequestError as exc:
            return (
                FAILED,
                f"no answer from {self.accounts.storage_url} ({str(exc).splitlines()[0]})",
                "Check storage_account_url (https://ACCOUNT.blob.core.windows.net) and that this machine can "
                "reach it (network, proxy, the account's firewall).",
            )
        except AzureError as exc:
            if _status(exc) in (401, 403):
                fix = (
                    self._auth_fix("Storage")
                    if self.profile["auth"] == "shared-key"
                    else ("Ask for the Storage Blob Data Contributor role on the storage account.")
                )
                return FAILED, f"the storage account refused the credential ({_short(exc)})", fix
            return (
                FAILED,
                f"storage: {_short(exc)}",
                "Read the service's message on this line; fix the profile field it names.",
            )
        finally:
            service.close()
        return OK, f"{self.accounts.storage_url} answered; {there}", ""

    def sas_round_trip(self) -> Outcome:
        """Write, read and delete a small blob the way tasks do (plain HTTP with SAS URLs)."""
        from azure.core.exceptions import AzureError

        staging = storage.Staging(self.accounts.storage_url, self.accounts.storage_name, self.storage_credential)
        container, name = storage.CACHE_CONTAINER, f"{PROBE_BLOB_PREFIX}{secrets.token_hex(8)}"
        data = b"azpar doctor " + secrets.token_hex(8).encode()
        kind = "a user delegation key" if staging.delegation else "the account key"
        try:
            try:
                staging.ensure_container(container)
                expiry = storage.Staging.expiry_for(600)
                write_url = staging.blob_sas_url(container, name, "cw", expiry)
                read_url = staging.blob_sas_url(container, name, "r", expiry)
            except AzureError as exc:
                return (FAILED, f"no SAS could be made ({_short(exc)})", self._sas_fix(staging))
            step = "write through the create+write SAS"
            status = _http("PUT", write_url, data)
            if status in range(200, 300):
                step = "read through the read SAS"
                status, body = _http_get(read_url)
                if status in range(200, 300) and body != data:
                    return (
                        FAILED,
                        "the blob read back through the read SAS is not what was written",
                        "Something between this machine and the account rewrites blobs (a proxy?): check it.",
                    )
            if status not in range(200, 300):
                where = f"HTTP {status}" if status else "no answer"
                return (FAILED, f"SAS signed with {kind}: the {step} failed ({where})", self._sas_fix(staging))
            leak = _http("PUT", read_url, b"x")
            if leak in range(200, 300):
                return (
                    WARNING,
                    "the read SAS also allowed a write (the account ignores SAS permissions)",
                    "Tasks could overwrite their inputs: use a real storage account, not an emulator in loose mode.",
                )
            return OK, f"a blob written through a create+write SAS, read through a read SAS and deleted ({kind})", ""
        finally:
            try:
                staging.service.get_blob_client(container, name).delete_blob()
            except AzureError:
                pass
            staging.close()

    def _sas_fix(self, staging: storage.Staging) -> str:
        if staging.delegation:
            return (
                "SAS tokens are signed with a user delegation key: ask for the Storage Blob Data Contributor role "
                "on the storage account (it includes generating delegation keys)."
            )
        return (
            f"SAS tokens are signed with the key in {self.profile['storage_key_env']}: check it is the account's "
            "current key (keys rotated since?) and that the account allows shared-key access."
        )

    # ------------------------------------------------------------------ 8. autoscale

    def autoscale_formula(self) -> Outcome:
        from azure.batch import models
        from azure.core.exceptions import AzureError

        name = self.profile["autoscale"]
        if not name:
            return SKIPPED, "the profile sizes the pool with fixed node counts (no autoscale formula)", ""
        if self.pool is None:
            return SKIPPED, "the pool does not exist yet: its formula is evaluated once it does", ""
        if self.pool_writes is False:
            return (
                SKIPPED,
                "this role may not evaluate formulas (evaluate autoscale is a POST on the pool, a pool "
                "write on the test service)",
                "",
            )
        if not self.pool.enable_auto_scale:
            return (
                SKIPPED,
                f"pool {self.profile['pool_id']} has a fixed size (autoscale off): the service "
                "evaluates formulas only on autoscale pools",
                "",
            )
        text = autoscale.formula(
            name,
            min_nodes=self.profile["min_nodes"],
            max_nodes=self.profile["max_nodes"],
            slots_per_node=self.profile["task_slots_per_node"],
            # the formula the pool runs: the idle rule (idle_timeout) only on a pool azpar created
            idle_minutes=self.profile["idle_timeout"] if pool.status_of(self.pool).created_by_azpar else 0,
        )
        try:
            run = self._call(
                lambda: self.client.evaluate_pool_auto_scale(
                    self.profile["pool_id"], models.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula=text)
                )
            )
        except (AzureError, Throttled) as exc:
            if _code(exc) == "AuthorizationFailed":
                return SKIPPED, "this role may not evaluate formulas (403 AuthorizationFailed)", ""
            return (
                FAILED,
                f"formula {name.upper()} was refused ({_short(exc)})",
                "Choose another formula (autoscale = QUEUE, ...) and report the message: the formula is azpar's.",
            )
        if run.error is not None:
            return (
                FAILED,
                f"formula {name.upper()} did not evaluate ({run.error.code}: {run.error.message})",
                "Choose another formula (autoscale = QUEUE, ...) and report the message: the formula is azpar's.",
            )
        targets = [
            part.strip()
            for part in (run.results or "").split(";")
            if part.strip().startswith(("$TargetDedicatedNodes", "$TargetLowPriorityNodes"))
        ]
        return OK, f"formula {name.upper()} evaluates ({'; '.join(targets) or 'no targets'}); no node changed", ""


def _http(method: str, url: str, data: bytes | None = None) -> int:
    """The HTTP status of one plain request (0: no answer), as a task holding the URL gets it."""
    request = urllib.request.Request(url, data=data, method=method)
    if method == "PUT":
        request.add_header("x-ms-blob-type", "BlockBlob")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def _http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url), timeout=HTTP_TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, OSError):
        return 0, b""


def probes(doctor: AzureDoctor) -> list[Probe]:
    """The Azure checks in order: (key, title, keys it needs, probe). ``profile`` is the
    configuration check run before these (azpar_magic.doctor)."""
    return [
        ("credential", "credential", ("profile",), doctor.credential),
        ("batch", "Batch account", ("credential",), doctor.batch_account),
        ("submit", "job submission", ("batch",), doctor.job_submission),
        ("pool_write", "pool writes", ("batch",), doctor.pool_writes_probe),
        ("pool", "pool", ("batch", "pool_write"), doctor.pool_state),
        ("image", "image and node agent", ("batch",), doctor.image),
        ("storage", "storage account", ("credential",), doctor.storage_reachable),
        ("sas", "SAS round trip", ("storage",), doctor.sas_round_trip),
        # Not "pool": a pool whose nodes are broken can still evaluate its formula.
        ("autoscale", "autoscale formula", ("batch", "pool_write"), doctor.autoscale_formula),
    ]
