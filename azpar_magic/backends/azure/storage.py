"""Blob staging for Azure jobs: containers, content-addressed uploads, least-privilege SAS.

Layout, per job ``J`` (DESIGN section 5):

- ``J-in``: what tasks read: the envelope, task inputs too large to inline. Tasks get a
  read-only SAS on it, so a task can never overwrite its own inputs.
- ``J-out``: what tasks write: results and stdout/stderr, the merged blob. Each task gets a
  create+write SAS on exactly its own blobs (its result, its stdout and stderr; the merge
  task its merged blob), never on the container: a task, or anyone who reads the task
  definitions, cannot replace another task's result, which the kernel unpickles. The client
  reads with its own credential.
- ``J-files``: the ``--outputs`` files (only when a job has some and no ``az://``
  destination). Their names are known only once a task has run, so tasks get a create+write
  SAS on this container; the kernel copies these files into ``azpar_outputs/`` and never
  loads them as Python objects.
- ``azpar-cache``: content-addressed blobs shared by jobs (worker script, namespaces).
  A job's preparation task gets a read SAS on exactly the blobs it needs, never on the
  container, so one job's tokens cannot read another job's data. Under JupyterHub each hub
  user has their own, ``azpar-SLUG-cache``.

Under JupyterHub job ids, hence container names, start with ``azpar-SLUG-`` (``identity``),
and every container carries the user in its metadata (``azpar_user``): an administrator can
give each user's identity access to their own containers only (docs/jupyterhub.md).

Every SAS expires with the job (its timeout plus a margin for uploads and clock skew), and
is signed with the account key only in shared-key mode, otherwise with a user delegation
key. A user delegation key, and so every SAS it signs, lasts at most 7 days ("Create a user
delegation SAS", Azure Storage docs): those tokens are capped at 7 days from signing, and a
run whose job_timeout is longer is told so in the cell (``delegation_note``). No key ever
leaves this module.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)

from ... import identity
from . import retry
from .threads import ThreadPool, refused_by_the_exit

logger = logging.getLogger(__name__)


def cache_container_name() -> str:
    """``azpar-cache``, or ``azpar-SLUG-cache`` for a JupyterHub user (so that every container
    a hub user's jobs touch starts with that user's prefix)."""
    hub = identity.hub_user()
    return f"azpar-{identity.slug(hub)}-cache" if hub else "azpar-cache"


CACHE_CONTAINER = cache_container_name()  # a kernel's hub user is fixed for its lifetime
SAS_MARGIN = dt.timedelta(minutes=30)  # uploads after the last task, and clock skew between machines
SAS_START_SKEW = dt.timedelta(minutes=5)
DELEGATION_MAX = dt.timedelta(days=7)  # the service's limit on a user delegation key's (and its SAS's) life
DELEGATION_SAFETY = dt.timedelta(minutes=1)  # clock skew between this machine and Storage
# Bytes per block sent and per range read. A blob larger than this goes up as blocks and comes
# down as ranges, a few in flight (the SDK's max_concurrency), so a transfer holds a few blocks
# of memory, not the file (the SDK's defaults would put up to 64 MB and read 32 MB in one piece).
BLOCK_SIZE = 4 << 20


def signed_expiry(expiry: dt.datetime, *, delegation: bool, now: dt.datetime | None = None) -> dt.datetime:
    """The expiry a SAS can actually carry: ``expiry`` with the account key; with a user
    delegation key at most 7 days (less a minute of clock skew) from ``now``."""
    if not delegation:
        return expiry
    now = now or dt.datetime.now(dt.timezone.utc)
    return min(expiry, now + DELEGATION_MAX - DELEGATION_SAFETY)


def delegation_note(staging: Staging, lifetime: float) -> str:
    """One line for the cell when this run's tokens end before its job_timeout ("" otherwise)."""
    if not staging.delegation or dt.timedelta(seconds=lifetime) + SAS_MARGIN <= DELEGATION_MAX - DELEGATION_SAFETY:
        return ""
    return (
        f"job_timeout is {lifetime / 86400:.1f} days, but SAS tokens signed with a user delegation key last "
        "at most 7 days: tasks that start after that cannot read their inputs or save their results (use "
        "auth = shared-key, or keep runs under 7 days)."
    )


@dataclass
class TransferStats:
    """What the staging did, for benchmarks and tests (calls by kind, bytes sent)."""

    calls: dict[str, int] = field(default_factory=dict)
    bytes_uploaded: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, nbytes: int = 0) -> None:
        with self.lock:
            self.calls[kind] = self.calls.get(kind, 0) + 1
            self.bytes_uploaded += nbytes


def input_container(job_id: str) -> str:
    return f"{job_id.lower()}-in"


def output_container(job_id: str) -> str:
    return f"{job_id.lower()}-out"


def files_container(job_id: str) -> str:
    return f"{job_id.lower()}-files"


class Staging:
    """One storage account as the backend uses it."""

    def __init__(
        self,
        account_url: str,
        account_name: str,
        credential: Any,
        *,
        connection_verify: Any = True,
        max_concurrency: int = 8,
    ):
        self.account_url = account_url.rstrip("/")
        self.account_name = account_name
        self._key = credential.named_key.key if isinstance(credential, AzureNamedKeyCredential) else None
        kwargs: dict[str, Any] = {
            **retry.storage_client_options(),  # the only retry layer for Blob requests (retry.py)
            "max_single_put_size": BLOCK_SIZE,
            "max_block_size": BLOCK_SIZE,
            "max_single_get_size": BLOCK_SIZE,
            "max_chunk_get_size": BLOCK_SIZE,
        }
        if connection_verify is not True:
            kwargs["connection_verify"] = connection_verify
        self.service = BlobServiceClient(self.account_url, credential=credential, **kwargs)
        self.stats = TransferStats()
        self.known: set[tuple[str, str]] = set()  # blobs known to exist (content-addressed)
        self._containers: set[str] = set()
        self.created_here: set[str] = set()  # containers this object made (not found): a failed staging removes these
        self._delegation: tuple[dt.datetime, Any] | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPool(max_concurrency, thread_name_prefix="azpar-blob")

    # ------------------------------------------------------------------ containers

    def ensure_container(self, name: str) -> None:
        if name in self._containers:
            return
        try:
            self.service.create_container(name, metadata={"azpar_user": identity.slug()})
            self.stats.add("create_container")
            self.created_here.add(name)
            logger.debug("created the container %s in %s", name, self.account_url)
        except ResourceExistsError:
            self.stats.add("create_container")
        self._containers.add(name)

    def delete_container(self, name: str) -> None:
        try:
            self.service.delete_container(name)
            self.stats.add("delete_container")
            logger.debug("deleted the container %s in %s", name, self.account_url)
        except ResourceNotFoundError:
            pass
        self._containers.discard(name)

    def container_exists(self, name: str) -> bool:
        try:
            self.service.get_container_client(name).get_container_properties()
            return True
        except ResourceNotFoundError:
            return False

    # ------------------------------------------------------------------ blobs

    def upload(self, container: str, name: str, data: bytes, *, overwrite: bool = True) -> None:
        blob = self.service.get_blob_client(container, name)
        try:
            blob.upload_blob(data, overwrite=overwrite, max_concurrency=4)
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) != "ContainerNotFound":
                raise
            # A container this kernel created is gone (deleted, or a storage emulator restarted):
            # forget what it held and create it again, instead of failing every later cell.
            self.forget(container)
            self.ensure_container(container)
            blob.upload_blob(data, overwrite=overwrite, max_concurrency=4)
        self.stats.add("put_blob", len(data))

    def upload_once(self, container: str, name: str, data: bytes, *, verify: bool = False) -> bool:
        """Upload a content-addressed blob unless it is already there; True if uploaded.
        ``verify``: a blob this kernel uploaded earlier is checked to still exist (one HEAD)
        and uploaded again when it was removed since (``%azpar storage rm``, a lifecycle rule,
        an emulator restart): a job must not start with a resource file that is gone."""
        if (container, name) in self.known:
            if not verify or self.exists(container, name):
                return False
            self.known.discard((container, name))
        try:
            self.upload(container, name, data, overwrite=False)
            uploaded = True
        except ResourceExistsError:  # same name means same bytes
            self.stats.add("put_blob_exists")
            uploaded = False
        self.known.add((container, name))
        return uploaded

    def upload_once_many(self, container: str, blobs: Iterable[tuple[str, bytes]], *, verify: bool = False) -> None:
        """upload_once for several blobs at once (their checks overlap: one round trip)."""
        futures = [self._pool.submit(self.upload_once, container, name, data, verify=verify) for name, data in blobs]
        for f in futures:
            f.result()

    def exists(self, container: str, name: str) -> bool:
        self.stats.add("head_blob")
        return self.service.get_blob_client(container, name).exists()

    def forget(self, container: str | None = None) -> None:
        """Drop what this kernel believes exists (in ``container``, or everywhere): the next
        upload_once checks or uploads again. Called when storage shows a blob it uploaded is gone."""
        with self._lock:
            self.known = {k for k in self.known if container is not None and k[0] != container}
            if container is None:
                self._containers.clear()
            else:
                self._containers.discard(container)

    def upload_many(self, container: str, blobs: Iterable[tuple[str, bytes]]) -> None:
        futures = [self._pool.submit(self.upload, container, name, data) for name, data in blobs]
        for f in futures:
            f.result()

    def download(self, container: str, name: str) -> bytes | None:
        """The blob's bytes, or None when it does not exist."""
        client = self.service.get_blob_client(container, name)
        try:
            try:
                data = client.download_blob(max_concurrency=4).readall()
            except RuntimeError as exc:  # the SDK's pool for a large blob, stopped by Python's exit (threads.py)
                if not refused_by_the_exit(exc):
                    raise
                data = client.download_blob().readall()  # one range at a time, in this thread
        except ResourceNotFoundError:
            self.stats.add("get_blob_missing")
            return None
        self.stats.add("get_blob")
        return data

    # ------------------------------------------------------------------ SAS

    @property
    def delegation(self) -> bool:
        """SAS tokens are signed with a user delegation key (identity modes), not the account key."""
        return self._key is None

    def _signing(self, expiry: dt.datetime) -> dict[str, Any]:
        if self._key is not None:
            return {"account_key": self._key}
        with self._lock:
            if self._delegation is None or self._delegation[0] < expiry:
                start = dt.datetime.now(dt.timezone.utc) - SAS_START_SKEW
                key = self.service.get_user_delegation_key(start, expiry)
                self._delegation = (expiry, key)
            return {"user_delegation_key": self._delegation[1]}

    @staticmethod
    def expiry_for(lifetime: float) -> dt.datetime:
        """When a token used by a job of this lifetime (seconds) must stop working."""
        return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=lifetime) + SAS_MARGIN

    def container_url(self, container: str) -> str:
        return f"{self.account_url}/{container}"

    def container_sas_url(self, container: str, permission: str, expiry: dt.datetime) -> str:
        expiry = signed_expiry(expiry, delegation=self.delegation)
        token = generate_container_sas(
            self.account_name,
            container,
            permission=ContainerSasPermissions.from_string(permission),
            expiry=expiry,
            start=dt.datetime.now(dt.timezone.utc) - SAS_START_SKEW,
            **self._signing(expiry),
        )
        return f"{self.container_url(container)}?{token}"

    def blob_sas_url(self, container: str, name: str, permission: str, expiry: dt.datetime) -> str:
        expiry = signed_expiry(expiry, delegation=self.delegation)
        return f"{self.container_url(container)}/{name}?{self._blob_sas(container, name, permission, expiry)}"

    def _blob_sas(self, container: str, name: str, permission: str, expiry: dt.datetime, **extra: Any) -> str:
        """The SDK's token for one blob (``expiry`` already through :func:`signed_expiry`)."""
        return generate_blob_sas(
            self.account_name,
            container,
            name,
            permission=BlobSasPermissions.from_string(permission),
            expiry=expiry,
            start=dt.datetime.now(dt.timezone.utc) - SAS_START_SKEW,
            **self._signing(expiry),
            **extra,
        )

    def blob_sas_signer(self, container: str, permission: str, expiry: dt.datetime) -> Callable[[str], str]:
        """``blob_sas_url`` for many blobs of one container, permission and expiry, for a fraction of its
        cost (the SDK's token building was most of the time spent defining 10,000 tasks): the SDK signs one
        blob and shows its string to sign (``sts_hook``); another blob's token is that one with the blob's
        own canonical resource signed instead (same fields, one HMAC-SHA256)."""
        probe = "azpar-sas-probe"
        told: list[str] = []
        expiry = signed_expiry(expiry, delegation=self.delegation)
        signing = self._signing(expiry)
        token = self._blob_sas(container, probe, permission, expiry, sts_hook=told.append)
        resource = f"\n/blob/{self.account_name}/{container}/{probe}\n"
        before, sig, after = token.partition("sig=")
        if len(told) != 1 or told[0].count(resource) != 1 or not sig:  # not the layout this knows: sign each
            return lambda name: self.blob_sas_url(container, name, permission, expiry)
        head, _, tail = told[0].partition(resource)
        rest = after.partition("&")[1:]
        secret = signing["account_key"] if "account_key" in signing else signing["user_delegation_key"].value
        key = base64.b64decode(secret)
        base = self.container_url(container)

        def url(name: str) -> str:
            text = f"{head}\n/blob/{self.account_name}/{container}/{name}\n{tail}".encode()
            signature = base64.b64encode(hmac.new(key, text, hashlib.sha256).digest()).decode()
            return f"{base}/{name}?{before}sig={signature.replace('+', '%2B').replace('=', '%3D')}{''.join(rest)}"

        return url

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.service.close()
