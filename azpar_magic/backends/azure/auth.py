"""Credentials for the Batch and Storage clients, chosen by the profile's ``auth`` field.

Secrets are read from the environment at the moment a client is built and handed straight
to the SDK: they are never stored on the backend object, written to a file, put into a task
definition or shown in a view. Identity-based modes (``default``, ``cli``,
``managed-identity``, ``service-principal``) never see a secret at all; Storage SAS tokens
are then signed with a user delegation key instead of the account key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ...config import Profile
from ...errors import ConfigError

BATCH_SCOPE = "https://batch.core.windows.net//.default"  # the double slash is what AAD expects


@dataclass(frozen=True)
class Accounts:
    """Names derived from the profile's URLs (needed for SharedKey signing and SAS)."""

    batch_url: str
    batch_name: str
    storage_url: str
    storage_name: str


def accounts(profile: Profile) -> Accounts:
    batch_url = profile["batch_account_url"].rstrip("/")
    storage_url = profile["storage_account_url"].rstrip("/")
    batch_name = profile["batch_account_name"] or (urlsplit(batch_url).hostname or "").split(".")[0]
    parts = urlsplit(storage_url)
    host = parts.hostname or ""
    if parts.path.strip("/"):  # emulator style: http://127.0.0.1:10000/devstoreaccount1
        storage_name = parts.path.strip("/").split("/")[0]
    else:
        storage_name = host.split(".")[0]
    return Accounts(batch_url, batch_name, storage_url, storage_name)


def _secret(profile: Profile, field: str, environ: Mapping[str, str], what: str) -> str:
    name = profile[field]
    value = environ.get(name, "")
    if not value:
        raise ConfigError(
            f"auth = shared-key needs the {what} key in the environment variable {name} "
            f"(profile field {field}); it is not set"
        )
    return value


def _identity_credential(profile: Profile, environ: Mapping[str, str]) -> Any:
    """An azure-identity TokenCredential for the identity-based modes."""
    mode = profile["auth"]
    import azure.identity as identity

    if mode == "cli":
        return identity.AzureCliCredential()
    if mode == "managed-identity":
        client_id = profile["managed_identity_client_id"] or None
        return (
            identity.ManagedIdentityCredential(client_id=client_id)
            if client_id
            else identity.ManagedIdentityCredential()
        )
    if mode == "service-principal":
        missing = [n for n in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET") if not environ.get(n)]
        if missing:
            raise ConfigError(f"auth = service-principal needs {', '.join(missing)} in the environment")
        return identity.ClientSecretCredential(
            environ["AZURE_TENANT_ID"], environ["AZURE_CLIENT_ID"], environ["AZURE_CLIENT_SECRET"]
        )
    if mode == "default":
        return identity.DefaultAzureCredential()
    raise ConfigError(f"unknown auth mode {mode!r}")


def batch_credential(profile: Profile, environ: Mapping[str, str] | None = None) -> Any:
    environ = os.environ if environ is None else environ
    if profile["auth"] == "shared-key":
        from azure.core.credentials import AzureNamedKeyCredential

        return AzureNamedKeyCredential(
            accounts(profile).batch_name, _secret(profile, "batch_key_env", environ, "Batch")
        )
    return _identity_credential(profile, environ)


def storage_credential(profile: Profile, environ: Mapping[str, str] | None = None) -> Any:
    """What BlobServiceClient takes: a key credential (shared-key) or a token credential."""
    environ = os.environ if environ is None else environ
    if profile["auth"] == "shared-key":
        from azure.core.credentials import AzureNamedKeyCredential

        return AzureNamedKeyCredential(
            accounts(profile).storage_name, _secret(profile, "storage_key_env", environ, "Storage")
        )
    return _identity_credential(profile, environ)


def registry_password(profile: Profile, environ: Mapping[str, str] | None = None) -> str | None:
    """The container registry password, read from its environment variable when a registry
    is configured (the pool definition needs it; nothing else does)."""
    environ = os.environ if environ is None else environ
    if not profile["registry_server"]:
        return None
    value = environ.get(profile["registry_password_env"], "")
    if not value:
        raise ConfigError(
            f"registry_server is set but the environment variable {profile['registry_password_env']} "
            "holding its password is not"
        )
    return value
