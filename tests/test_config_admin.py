"""The administrator's layer: the system file's [admin] table locks fields of its profiles
(or lists the only ones users may change), may forbid users' own profiles, and every view
of a profile says which layer each value comes from."""

from __future__ import annotations

import os

import pytest

from azpar_magic import config
from azpar_magic.ui import profile as prof

ADMIN = """
profile = "shared"

[admin]
locked = ["batch_account_url", "storage_account_url", "auth", "pool_id"]

[profiles.shared]
batch_account_url = "https://hubbatch.westeurope.batch.azure.com"
storage_account_url = "https://hubstore.blob.core.windows.net"
auth = "managed-identity"
pool_id = "hub-pool"
vm_size = "Standard_D4s_v3"
"""


@pytest.fixture(autouse=True)
def layers(tmp_path, monkeypatch):
    system = tmp_path / "prefix" / "etc" / "azpar" / "config.toml"
    system.parent.mkdir(parents=True)
    system.write_text(ADMIN)
    monkeypatch.setattr(config, "system_config_path", lambda: system)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home-config"))
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("AZPAR_"):
            monkeypatch.delenv(key)
    return system


def test_users_may_change_what_is_not_locked_and_each_value_names_its_layer(layers):
    config.save_profile("shared", {"vm_size": "Standard_D16s_v3", "spot_nodes": 8})
    profile = config.load_profile("shared")
    assert profile["pool_id"] == "hub-pool" and profile["vm_size"] == "Standard_D16s_v3"
    assert profile.sources["pool_id"] == str(layers) and profile.sources["vm_size"] == str(config.user_config_path())
    text = prof.profile_text("shared", profile.values, profile.sources, {})
    lines = {line.split()[0]: line for line in text.splitlines()[1:] if line.strip() and not line.strip().startswith("!")}
    assert lines["pool_id"].endswith(f"(system: {layers}, locked by the administrator)")
    assert lines["vm_size"].endswith(f"(user: {config.user_config_path()})")
    assert lines["spot_nodes"].endswith(f"(user: {config.user_config_path()})")
    assert lines["task_slots_per_node"].endswith("(defaults)")
    assert text.splitlines()[0] == f"profile shared (the default profile, set in system: {layers})"
    assert config.load_settings()["profile"] == "shared"


@pytest.mark.parametrize("how", ["user file", "project file", "environment", "magic options"])
def test_a_lower_layer_setting_a_locked_field_is_refused_naming_both(layers, monkeypatch, tmp_path, how):
    overrides = None
    if how == "user file":
        config.save_profile("shared", {"pool_id": "my-own-pool"})
        culprit = str(config.user_config_path())
    elif how == "project file":
        config.save_profile("shared", {"pool_id": "my-own-pool"}, tmp_path / "azpar.toml")
        culprit = "azpar.toml"
    elif how == "environment":
        monkeypatch.setenv("AZPAR_POOL_ID", "my-own-pool")
        culprit = "unset AZPAR_POOL_ID"
    else:
        overrides = {"pool_id": "my-own-pool"}
        culprit = "magic options"
    with pytest.raises(config.ConfigError) as caught:
        config.load_profile("shared", overrides=overrides)
    message = str(caught.value)
    assert "pool_id of profile 'shared'" in message and "locked" in message, message
    assert str(layers) in message and culprit in message and "'hub-pool'" in message, message


def test_user_overridable_locks_everything_else_and_top_level_settings(layers, monkeypatch):
    layers.write_text(ADMIN.replace('locked = ["batch_account_url", "storage_account_url", "auth", "pool_id"]',
                                    'user_overridable = ["spot_nodes", "dedicated_nodes", "packages"]'))
    config.save_profile("shared", {"spot_nodes": 3, "packages": ["scipy==1.13.1"]})
    assert config.load_profile("shared")["spot_nodes"] == 3
    config.save_profile("shared", {"spot_nodes": 3, "vm_size": "Standard_D8s_v3"})
    with pytest.raises(config.ConfigError, match="vm_size of profile 'shared'"):
        config.load_profile("shared")
    # A top-level setting the administrator set (the default profile) is locked as well.
    monkeypatch.setenv("AZPAR_PROFILE", "other")
    with pytest.raises(config.ConfigError, match="the setting profile.*unset AZPAR_PROFILE"):
        config.load_settings()


def test_users_own_profiles_are_free_unless_the_administrator_forbids_them(layers):
    config.save_profile("mine", {"batch_account_url": "https://mine.westeurope.batch.azure.com", "pool_id": "p"})
    assert config.load_profile("mine")["pool_id"] == "p"  # locks apply to the administrator's profiles
    layers.write_text(ADMIN.replace("[admin]\n", "[admin]\nallow_user_profiles = false\n"))
    with pytest.raises(config.ConfigError, match="allows only the profiles of .*shared.*not 'mine'"):
        config.load_profile("mine")


@pytest.mark.parametrize("table, complaint", [
    ('locked = ["pool_idd"]', "unknown fields pool_idd"),
    ('locked = ["pool_id"]\nuser_overridable = ["vm_size"]', "not both"),
    ("lock = []", "unknown keys lock"),
    ('allow_user_profiles = "no"', "true or false"),
])
def test_a_malformed_admin_table_is_an_error_naming_the_system_file(layers, table, complaint):
    layers.write_text(ADMIN.replace('locked = ["batch_account_url", "storage_account_url", "auth", "pool_id"]', table))
    with pytest.raises(config.ConfigError, match=complaint) as caught:
        config.load_profile("shared")
    assert str(layers) in str(caught.value)


def test_the_form_shows_locked_fields_disabled_with_their_layer(layers):
    pytest.importorskip("ipywidgets")
    from azpar_magic.ui.form import ConfigForm

    form = ConfigForm("shared", threaded=False)
    assert form.inputs["pool_id"].disabled and form.inputs["pool_id"].value == "hub-pool"
    assert f"system: {layers}, locked by the administrator" in form.inputs["pool_id"].tooltip
    assert not form.inputs["vm_size"].disabled and f"system: {layers}" in form.inputs["vm_size"].tooltip
    form.inputs["vm_size"].value = "Standard_D8s_v3"
    path = form.save()
    assert path == config.user_config_path()
    assert config.load_profile("shared")["vm_size"] == "Standard_D8s_v3"  # saving wrote no locked field


def test_the_magic_refuses_to_save_a_locked_field(layers, run_cell):
    result = run_cell("%azpar config shared pool_id=mine")
    assert not result.success and "locked by the administrator" in str(result.error), result
    assert not config.user_config_path().exists()
    result = run_cell("%azpar config shared")
    assert result.success, result.error
    assert f"(system: {layers}, locked by the administrator)" in result.stdout
