"""Helpers for tests of the Azure backend against the test Batch service and Azurite: a
profile pointing at both, written where the configuration layer reads it, and the secrets
in the environment as a user would provide them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from azpar_magic import config


def write_profile(folder: Path, batch: Any, azurite: Any, name: str = "test", **fields: Any) -> dict[str, str]:
    """Write ``[profiles.NAME]`` into ``folder/azpar.toml`` and return the environment
    variables holding the keys (to be set by the caller)."""
    values = {
        "backend": "azure",
        "batch_account_url": batch.url,
        "batch_account_name": batch.account,
        "storage_account_url": azurite.blob_endpoint,
        "auth": "shared-key",
        "pool_id": "azpar-test",
        "dedicated_nodes": 2,
        "spot_nodes": 0,
        "task_slots_per_node": 2,
        "poll_interval": 0.1,
        **fields,
    }
    config.save_profile(name, values, folder / "azpar.toml")
    return {"AZPAR_BATCH_KEY": batch.key, "AZPAR_STORAGE_KEY": azurite.account_key}
