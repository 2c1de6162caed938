"""What the parts of one Azure backend share: the profile, its accounts, the Batch and Storage
clients, the worker script's bytes and the poll interval.

A run (run.py), its inputs and outputs (files.py) and the pool commands receive this object,
never the backend itself, so they depend on what they use and not on the class that drives
them (the backend imports them; none of them imports the backend). Clients are built on first
use, not at ``%load_ext``, so a notebook that never runs an Azure cell never connects.
"""

from __future__ import annotations

import threading
from typing import Any

from ... import worker as wire
from ...config import Profile
from . import auth, retry, storage


class AzureContext:
    """One profile's accounts and clients, shared by the backend and every run it starts."""

    def __init__(self, profile: Profile, environ: dict[str, str] | None = None):
        self.profile = profile
        self.accounts = auth.accounts(profile)
        self.poll_interval = float(profile["poll_interval"])
        self._environ = environ
        self._lock = threading.RLock()
        self._client: Any = None
        self._staging: storage.Staging | None = None
        with open(wire.__file__, "rb") as fh:
            self.worker_bytes = fh.read()  # what every job's nodes run (content-addressed in the cache)

    @property
    def client(self) -> Any:
        """The Batch client, built on first use."""
        with self._lock:
            if self._client is None:
                from azure.batch import BatchClient

                self._client = BatchClient(
                    self.accounts.batch_url,
                    auth.batch_credential(self.profile, self._environ),
                    **retry.batch_client_options(),  # the one retry layer (retry.py)
                )
            return self._client

    @property
    def connected(self) -> bool:
        """The Batch client exists (something asked Batch already): polling it costs no login."""
        return self._client is not None

    @property
    def staging(self) -> storage.Staging:
        """The Storage account, built on first use."""
        with self._lock:
            if self._staging is None:
                self._staging = storage.Staging(
                    self.accounts.storage_url,
                    self.accounts.storage_name,
                    auth.storage_credential(self.profile, self._environ),
                )
            return self._staging

    def registry_password(self) -> str | None:
        """The container registry's password for pool definitions (None: no registry, or no password)."""
        return auth.registry_password(self.profile, self._environ)

    def close(self) -> None:
        """Close the clients that were built; the context is not used afterwards."""
        if self._staging is not None:
            self._staging.close()
        if self._client is not None:
            self._client.close()
