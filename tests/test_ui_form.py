"""The config form: per-field validation, saving the file config.py reads, the actions
(with plain fake callables), and that no secret ever reaches widget state."""

from __future__ import annotations

import html
import os
import re
import stat
import sys

import pytest

pytest.importorskip("ipywidgets")

from azpar_magic import config  # noqa: E402
from azpar_magic.ui import profile as prof  # noqa: E402
from azpar_magic.ui.form import ConfigForm  # noqa: E402

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SECRET = "Zm9vYmFyYmF6cXV4c2VjcmV0a2V5MTIzNDU2Nzg5MA=="


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A fresh user config folder, no system file, the test's own working folder, and a
    secret in the environment under the name the profile points to."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(config, "system_config_path", lambda: tmp_path / "system" / "config.toml")
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("AZPAR_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AZPAR_BATCH_KEY", SECRET)
    return tmp_path


def text(widget) -> str:
    """What an HTML widget shows, as plain text."""
    return html.unescape(re.sub(r"<[^>]+>", "", widget.value))


def fill(form: ConfigForm, **values) -> None:
    for key, value in values.items():
        form.inputs[key].value = value


AZURE = {"batch_account_url": "https://acct.westeurope.batch.azure.com",
         "storage_account_url": "https://acct.blob.core.windows.net"}


def test_a_new_profile_starts_from_the_defaults_with_messages_next_to_fields():
    form = ConfigForm("team", threaded=False)
    assert form.values() == prof.default_values()
    assert "new profile 'team'" in text(form.status)
    assert "is missing" in text(form.messages["batch_account_url"])
    assert "is missing" in text(form.messages["storage_account_url"])
    assert form.messages["vm_size"].value == ""
    form.inputs["vm_size"].value = "huge"
    assert "not an Azure VM size" in text(form.messages["vm_size"])
    form.inputs["vm_size"].value = "Standard_D4s_v3"
    assert form.messages["vm_size"].value == ""
    form.name.value = "bad name!"
    assert "letters, digits" in text(form.name_message)


def test_every_profile_field_has_a_control_of_its_kind():
    form = ConfigForm("x", threaded=False)
    assert set(form.inputs) == set(config.PROFILE_FIELDS)
    classes = {c for w in form.descendants() for c in getattr(w, "_dom_classes", ())}
    for name, spec in config.PROFILE_FIELDS.items():
        control = form.inputs[name]
        assert control.description == name
        assert type(form.values()[name]) is (spec.kind if spec.kind is not float else float), name
        assert f"azpar-field-{name}" in classes, name


def test_save_refuses_an_invalid_profile_and_writes_nothing(isolated):
    form = ConfigForm("team", threaded=False)
    assert form.save() is None
    assert "not saved" in text(form.status) and "batch_account_url" in text(form.status)
    assert not config.user_config_path().exists()


def test_save_writes_the_file_the_configuration_layer_reads():
    form = ConfigForm("team", threaded=False)
    fill(form, **AZURE, spot_nodes=4, packages="numpy==2.1.0\nscipy", auth="cli")
    path = form.save()
    assert path == config.user_config_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "saved profile 'team'" in text(form.status)
    data = tomllib.loads(path.read_text())
    assert data == {"profiles": {"team": {**AZURE, "spot_nodes": 4, "packages": ["numpy==2.1.0", "scipy"],
                                          "auth": "cli"}}}
    profile = config.load_profile("team")
    assert profile["spot_nodes"] == 4 and profile.sources["spot_nodes"] == str(path)
    assert form.name.options == ("team",)
    assert not form.dirty


def test_saving_keeps_other_profiles_and_fields_from_other_layers(isolated):
    config.save_profile("other", {"backend": "local"})
    system = isolated / "system" / "config.toml"
    system.parent.mkdir()
    system.write_text('[profiles.team]\nbatch_account_url = "https://admin.westeurope.batch.azure.com"\n')
    form = ConfigForm("team", threaded=False)
    assert form.inputs["batch_account_url"].value == "https://admin.westeurope.batch.azure.com"
    fill(form, storage_account_url=AZURE["storage_account_url"])
    form.save()
    data = tomllib.loads(config.user_config_path().read_text())
    # The administrator's field stays in the administrator's file.
    assert data["profiles"] == {"other": {"backend": "local"},
                                "team": {"storage_account_url": AZURE["storage_account_url"]}}
    assert config.load_profile("team")["batch_account_url"] == "https://admin.westeurope.batch.azure.com"


def test_loading_an_existing_profile_by_name():
    config.save_profile("gpu", {**AZURE, "vm_size": "Standard_NC6s_v3", "dedicated_nodes": 2})
    form = ConfigForm("default", threaded=False)
    form.name.value = "gpu"
    assert form.inputs["vm_size"].value == "Standard_NC6s_v3"
    assert form.inputs["dedicated_nodes"].value == 2 and form.dedicated.value == 2
    assert "loaded" in text(form.status)


def test_secret_fields_show_only_whether_the_variable_is_set():
    form = ConfigForm("team", threaded=False)
    assert form.inputs["batch_key_env"].value == "AZPAR_BATCH_KEY"
    assert "AZPAR_BATCH_KEY is set" in text(form.notes["batch_key_env"])
    assert "AZPAR_STORAGE_KEY is not set" in text(form.notes["storage_key_env"])
    for widget in form.descendants():
        assert SECRET not in repr(widget.get_state())


def test_a_pasted_secret_is_dropped_from_widget_state():
    form = ConfigForm("team", threaded=False)
    form.inputs["storage_key_env"].value = SECRET
    assert form.inputs["storage_key_env"].value == "AZPAR_STORAGE_KEY"
    assert "looked like a secret and was dropped" in text(form.messages["storage_key_env"])
    for widget in form.descendants():
        assert SECRET not in repr(widget.get_state())
    # A short invalid name is kept and flagged, not dropped.
    form.inputs["storage_key_env"].value = "MY-KEY"
    assert form.inputs["storage_key_env"].value == "MY-KEY"
    assert "name of an environment variable" in text(form.messages["storage_key_env"])


def test_actions_are_not_available_without_callables():
    form = ConfigForm("team", threaded=False)
    form.test()
    assert "not available" in text(form.status)
    form.pool("create")
    assert "not available" in text(form.status)


def test_test_connection_calls_with_the_saved_profile_name():
    calls = []

    def test_connection(name):
        calls.append(name)
        return "Batch account acct reached; storage reached"

    form = ConfigForm("team", test_connection=test_connection, threaded=False)
    form.test()
    assert calls == [] and "save profile 'team' first" in text(form.status)
    fill(form, **AZURE)
    form.save()
    form.test()
    assert calls == ["team"]
    assert "Batch account acct reached" in text(form.status) and 'data-style="success"' in form.status.value
    form.inputs["spot_nodes"].value = 9
    form.test()
    assert "unsaved changes" in text(form.status)


def test_a_failing_test_shows_its_message_as_danger():
    def test_connection(name):
        raise PermissionError("AuthorizationFailure: the identity has no role on acct")

    form = ConfigForm("team", test_connection=test_connection, threaded=False)
    fill(form, **AZURE)
    form.save()
    form.test()
    assert 'data-style="danger"' in form.status.value
    assert "AuthorizationFailure: the identity has no role on acct" in text(form.status)


def test_pool_actions_pass_counts_and_delete_asks_twice():
    calls = []

    def pool_action(name, action, dedicated=None, spot=None):
        calls.append((name, action, dedicated, spot))
        return f"pool {action} done"

    form = ConfigForm("team", pool_action=pool_action, threaded=False)
    fill(form, **AZURE)
    form.save()
    form.pool("create")
    form.dedicated.value, form.spot.value = 1, 5
    form.pool("resize")
    form.pool("status")
    assert calls == [("team", "create", None, None), ("team", "resize", 1, 5), ("team", "status", None, None)]
    form.pool("delete")
    assert len(calls) == 3 and form.pool_buttons["delete"].description == "Confirm delete"
    form.pool("delete")
    assert calls[-1] == ("team", "delete", None, None)
    assert form.pool_buttons["delete"].description == "Delete pool"
    assert "pool delete: pool delete done" in text(form.status)


def test_buttons_click_through_to_the_actions():
    calls = []
    form = ConfigForm("team", test_connection=lambda n: calls.append(n) or "ok", threaded=True)
    fill(form, **AZURE)
    form.save_button.click()
    assert config.user_config_path().exists()
    form.test_button.click()
    form.join(5)
    assert calls == ["team"] and "ok" in text(form.status)
    assert not form.test_button.disabled  # re-enabled after the action


@pytest.mark.parametrize("typed, secret", [
    ("AZPAR_BATCH_KEY", False), ("MY_STORAGE_KEY_2", False), ("batch_key", False), ("MY-KEY", False),
    (SECRET, True),  # base64 with padding
    ("c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1uZXZlci1zaG93", True),  # base64 of letters and digits only
    ("sv=2024-05-04&ss=b&srt=co&sp=rl&se=2026-01-01&sig=abcdEFGH%2B1234", True),  # a SAS token
    ("Xy9kQ2pLm4Nv8Rt6Wz1Ab3Cd", True),
])
def test_what_counts_as_a_secret_typed_into_a_name_field(typed, secret):
    assert prof.looks_like_secret(typed) is secret


def test_profile_text_and_parse_value():
    assert prof.parse_value("spot_nodes", " 3 ") == 3
    assert prof.parse_value("create_pool", "no") is False
    assert prof.parse_value("packages", "numpy, scipy") == ["numpy", "scipy"]
    with pytest.raises(ValueError, match="whole number"):
        prof.parse_value("spot_nodes", "many")
    with pytest.raises(ValueError, match="unknown profile field"):
        prof.parse_value("colour", "red")
    values = {**prof.default_values(), **AZURE}
    text = prof.profile_text("team", values, {"vm_size": "defaults"}, {"vm_size": "is odd"})
    assert "batch_account_url" in text and "AZPAR_BATCH_KEY is set in the kernel's environment" in text
    assert "! vm_size is odd" in text and SECRET not in text
