"""A secret typed or saved where a profile expects the NAME of an environment variable is
refused, and no message, listing or form ever shows it (an error lands in the saved
notebook). Run through the real IPython shell, as a user types it."""

from __future__ import annotations

import os

import pytest

from azpar_magic import config

STORAGE_KEY = "q8Zt3kP0vX2mB7nR4sL9yW1cF6hJ5dG0aE3uI8oK2pQ7rT4wY9zX1cV6bN0mM3lK5jH8gF2dS4aQ7wE1rT6yU9iO0p+Q=="
REGISTRY_PASSWORD = "Xy9kQ2pLm4Nv8Rt6Wz1Ab3CdEf5Gh7Jk"  # letters and digits only: a valid identifier
SAS = "sv=2024-05-04&ss=b&srt=co&sp=rwl&se=2026-01-01&sig=abcdEFGH%2B1234567890xyz"


def pieces(secret: str, size: int = 8) -> list[str]:
    """Every run of ``size`` characters of the secret: none may appear anywhere."""
    return [secret[i:i + size] for i in range(0, len(secret) - size + 1)]


def leaked(secret: str, *texts: str) -> list[str]:
    return [p for p in pieces(secret) for t in texts if p in t]


def everything(result) -> str:
    return "\n".join([str(result.error or ""), result.stdout, result.stderr, *(repr(o.data) for o in result.outputs)])


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(config, "system_config_path", lambda: tmp_path / "system" / "config.toml")
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("AZPAR_") and key != "AZPAR_JOB_STORE":
            monkeypatch.delenv(key)
    return tmp_path


@pytest.mark.parametrize("field, secret", [
    ("storage_key_env", STORAGE_KEY), ("registry_password_env", REGISTRY_PASSWORD), ("batch_key_env", SAS),
])
def test_a_secret_set_with_the_magic_is_refused_without_echoing_it(run_cell, field, secret):
    result = run_cell(f"%azpar config team {field}='{secret}'")
    assert not result.success
    text = everything(result)
    assert f"{field} must be the name of an environment variable" in text, text
    assert "not shown" in text
    assert not leaked(secret, text), text
    assert not config.user_config_path().exists()  # nothing saved


def test_a_key_typed_without_a_field_name_is_not_echoed(run_cell):
    result = run_cell(f"%azpar config team {STORAGE_KEY}")
    text = everything(result)
    assert not result.success and "unknown profile field" in text, text
    assert not leaked(STORAGE_KEY, text), text
    unpadded = STORAGE_KEY.rstrip("=")  # no '=': taken as the profile's name
    result = run_cell(f"%azpar config {unpadded}")
    text = everything(result)
    assert not result.success and "a profile name is" in text, text
    assert not leaked(unpadded, text), text


def test_a_key_saved_in_a_file_is_never_shown(run_cell, monkeypatch):
    """Someone edited the file by hand (or an older version saved it): listing the profile,
    loading it for a run and the form all keep it out of sight."""
    path = config.user_config_path()
    path.parent.mkdir(parents=True)
    path.write_text(f'[profiles.team]\nbatch_account_url = "https://b.westeurope.batch.azure.com"\n'
                    f'storage_account_url = "https://s.blob.core.windows.net"\nstorage_key_env = "{STORAGE_KEY}"\n')
    listing = run_cell("%azpar config team")
    assert listing.success, listing.error
    assert "storage_key_env" in listing.stdout and "not shown" in listing.stdout, listing.stdout
    assert not leaked(STORAGE_KEY, everything(listing)), listing.stdout
    with pytest.raises(config.ConfigError) as refused:
        config.check_profile(config.load_profile("team"))
    assert "storage_key_env must be the name" in str(refused.value)
    assert not leaked(STORAGE_KEY, str(refused.value)), refused.value
    run = run_cell("%%azpar --profile team -q for i in range(2):\npass")
    assert not run.success and "storage_key_env" in everything(run)
    assert not leaked(STORAGE_KEY, everything(run)), everything(run)


def test_a_key_in_the_environment_is_not_echoed():
    monkey_env = {"AZPAR_REGISTRY_PASSWORD_ENV": REGISTRY_PASSWORD}
    path = config.user_config_path()
    path.parent.mkdir(parents=True)
    path.write_text('[profiles.team]\nbatch_account_url = "https://b.westeurope.batch.azure.com"\n'
                    'storage_account_url = "https://s.blob.core.windows.net"\n')
    with pytest.raises(config.ConfigError) as refused:
        config.check_profile(config.load_profile("team", environ=monkey_env))
    assert "registry_password_env" in str(refused.value)
    assert not leaked(REGISTRY_PASSWORD, str(refused.value)), refused.value


def test_the_form_does_not_load_a_saved_key_into_widget_state():
    pytest.importorskip("ipywidgets")
    from azpar_magic.ui.form import ConfigForm

    config.save_profile("team", {"storage_account_url": "https://s.blob.core.windows.net"})
    path = config.user_config_path()
    path.write_text(path.read_text() + f'storage_key_env = "{STORAGE_KEY}"\n')
    form = ConfigForm("team", path=path, threaded=False)
    states = [repr(w.get_state()) for w in form.descendants()]
    assert not leaked(STORAGE_KEY, *states)
    assert form.inputs["storage_key_env"].value == ""
    assert "not shown" in form.messages["storage_key_env"].value


def test_plain_names_are_still_quoted():
    """The redaction is for values that may be secrets: a wrong plain value is still named."""
    problems = config.validate_profile({"batch_account_url": "https://b.westeurope.batch.azure.com",
                                        "storage_account_url": "https://s.blob.core.windows.net",
                                        "storage_key_env": "MY-KEY", "vm_size": "huge"})
    assert "'huge'" in problems["vm_size"]
    assert "MY-KEY" not in problems["storage_key_env"]  # not a valid name: it may be a secret


def test_a_misspelt_field_is_answered_with_the_field_meant_and_a_secret_with_none(run_cell):
    """The list of every field is long; the usual cause is a typo, so the closest field is named.
    A word that looks like a secret gets no guess (a guess would say what it resembles)."""
    result = run_cell("%azpar config team batch_url=https://x.westeurope.batch.azure.com")
    text = everything(result)
    assert not result.success and "unknown profile field 'batch_url' (did you mean 'batch_account_url'?)" in text, text
    assert not config.user_config_path().exists()
    text = everything(run_cell(f"%azpar config team {STORAGE_KEY}"))
    assert "did you mean" not in text and not leaked(STORAGE_KEY, text), text
