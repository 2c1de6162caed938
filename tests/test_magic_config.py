"""Issue 18: the top-level settings are traits of ``AzparMagics``, so IPython configures azpar as it configures
every extension: ``%config AzparMagics`` lists them, ``%config AzparMagics.workers = 4`` sets one in a session and
``c.AzparMagics.workers = 4`` in ipython_config.py sets it for every kernel. They are one layer of azpar's settings:
above the ``AZPAR_*`` variables and the TOML files, below a cell's own options; the administrator's locks win."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from azpar_magic import config, session
from azpar_magic.magics.display import display_mode

from .test_kernel import _start, _stop

ADMIN_LOCKS_WORKERS = """
workers = 2

[admin]
locked = ["workers"]
"""


@pytest.fixture
def layers(tmp_path, monkeypatch, ip):
    """Config files of this test only (a system file that holds nothing yet), no AZPAR_* variables, and the traits
    back at their defaults afterwards."""
    system = tmp_path / "prefix" / "etc" / "azpar" / "config.toml"
    system.parent.mkdir(parents=True)
    system.write_text("")
    monkeypatch.setattr(config, "system_config_path", lambda: system)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home-config"))
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("AZPAR_") and key != "AZPAR_JOB_STORE":
            monkeypatch.delenv(key)
    yield system
    magics = ip.magics_manager.registry["AzparMagics"]
    magics.workers = magics.profile = magics.display = None
    magics.quiet = False
    session.use(None)


def _config(run_cell, line: str):
    return run_cell(f"%config {line}")


def test_config_lists_the_traits_with_their_help(layers, run_cell):
    shown = _config(run_cell, "AzparMagics")
    assert shown.success, shown.error
    for trait in ("workers", "profile", "display", "quiet"):
        assert f"AzparMagics.{trait}=" in shown.stdout
    assert "Size of the local pool" in shown.stdout and "Current: None" in shown.stdout
    assert "AzparMagics" in _config(run_cell, "").stdout  # %config alone names it among the configurables


def test_a_value_set_in_the_session_beats_the_files_and_the_environment_but_not_the_cell(layers, run_cell, monkeypatch):
    config.user_config_path().parent.mkdir(parents=True)
    config.user_config_path().write_text("workers = 2\n")
    monkeypatch.setenv("AZPAR_WORKERS", "3")
    assert session.settings()["workers"] == 3
    assert _config(run_cell, "AzparMagics.workers = 5").success
    chosen = session.settings()
    assert chosen["workers"] == 5 and chosen.sources["workers"] == config.IPYTHON_LAYER
    assert session.settings({"workers": 1})["workers"] == 1  # a cell's --workers
    assert config.load_settings()["workers"] == 5  # every reader of the settings sees it (doctor, engine)
    _config(run_cell, "AzparMagics.workers = None")
    assert session.settings()["workers"] == 3


@pytest.mark.parametrize(
    ("line", "refusal"),
    [
        ("AzparMagics.workers = 0", "workers must be at least 1, got 0"),
        ("AzparMagics.workers = 10**6", "AzparMagics.workers must be at most"),
        ("AzparMagics.workers = 'four'", "expected an int"),
        ("AzparMagics.display = 'fancy'", "any of ['auto', 'widget', 'text']"),
        ("AzparMagics.profile = 'nowhere'", "no profile named 'nowhere'"),
    ],
)
def test_invalid_values_are_refused_and_the_setting_stays(layers, run_cell, ip, caplog, line, refusal):
    _config(run_cell, "AzparMagics.workers = 4")
    with caplog.at_level("ERROR"):
        _config(run_cell, line)  # %config reports a refused value through logging.error
    assert refusal in caplog.text
    magics = ip.magics_manager.registry["AzparMagics"]
    assert magics.workers == 4 and magics.display is None and magics.profile is None
    assert session.settings()["workers"] == 4


def test_a_trait_the_administrator_locked_is_refused_with_its_fix(layers, run_cell, caplog):
    layers.write_text(ADMIN_LOCKS_WORKERS)
    with caplog.at_level("ERROR"):
        _config(run_cell, "AzparMagics.workers = 6")
    assert "IPython configuration sets the setting workers, which the administrator has locked" in caplog.text
    assert "%config AzparMagics.workers = None" in caplog.text and "administrator's value: 2" in caplog.text
    assert session.settings()["workers"] == 2


def test_a_locked_value_from_ipython_config_is_refused_when_a_cell_reads_it(layers):
    """ipython_config.py is read while the extension loads: its locked value does not stop the load, but every
    cell that needs the setting says why it cannot run (config's rule for every layer)."""
    layers.write_text(ADMIN_LOCKS_WORKERS)
    config.set_ipython_settings({"workers": 6})
    try:
        with pytest.raises(config.ConfigError, match="IPython configuration sets the setting workers"):
            session.settings()
    finally:
        config.set_ipython_settings({})


def test_the_profile_trait_chooses_the_profile_and_ends_an_earlier_use(layers, run_cell):
    config.save_profile("small", {"backend": "local"})
    config.save_profile("big", {"backend": "local"})
    run_cell("%azpar use big")
    assert session.active_profile() == "big"
    assert _config(run_cell, "AzparMagics.profile = 'small'").success
    assert session.active_profile() == "small"
    assert session.active_profile("big") == "big"  # a cell's --profile still wins
    _config(run_cell, "AzparMagics.profile = 'local'")
    assert session.active_profile() == session.LOCAL
    _config(run_cell, "AzparMagics.profile = None")
    assert session.active_profile() is None


def test_the_display_trait_beats_azpar_display(layers, run_cell, monkeypatch):
    """A kernel whose frontend draws widgets (it sends the cell id): AZPAR_DISPLAY=widget, then the trait says text."""
    pytest.importorskip("ipywidgets")
    shell = SimpleNamespace(
        kernel=SimpleNamespace(comm_manager=object()),
        displayhook=SimpleNamespace(exec_result=SimpleNamespace(info=SimpleNamespace(cell_id="c1"))),
    )
    monkeypatch.setenv("AZPAR_DISPLAY", "widget")
    assert display_mode(shell) == "widget"
    _config(run_cell, "AzparMagics.display = 'text'")
    assert display_mode(shell) == "text"
    _config(run_cell, "AzparMagics.display = None")
    assert display_mode(shell) == "widget"


def test_quiet_makes_every_cell_quiet(layers, run_cell, ip):
    _config(run_cell, "AzparMagics.quiet = True")
    assert ip.magics_manager.registry["AzparMagics"].context.quiet is True
    ran = run_cell("%%azpar -o r for i in range(3):\ni * 2")
    assert ran.success, ran.error
    assert ip.user_ns["r"] == [0, 2, 4]
    assert "azpar" not in ran.stdout + ran.stderr  # no progress line, no summary


# ---------------------------------------------------------------------------------------------- in a real kernel

IPYTHON_CONFIG = """
c = get_config()  # noqa: F821
c.AzparMagics.workers = 3
c.AzparMagics.quiet = True
"""


@pytest.fixture(scope="module")
def configured_kernel(tmp_path_factory):
    """A kernel whose IPython profile (profile_default/ipython_config.py) configures azpar, as a user's would."""
    base = tmp_path_factory.mktemp("kernel-config")
    profile = base / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_config.py").write_text(IPYTHON_CONFIG)
    kernel, loaded = _start(base)
    yield kernel, loaded
    _stop(kernel)


@pytest.mark.timeout(180)
def test_ipython_config_configures_a_fresh_kernel_and_config_changes_the_next_cell(configured_kernel):
    kernel, loaded = configured_kernel
    assert "local pool of 3 worker processes" in loaded.stdout, loaded.describe()
    listed = kernel.ok("%config AzparMagics").stdout
    assert "AzparMagics.workers=<Int>" in listed and "Current: 3" in listed, listed
    slow = "%%azpar -o r for i in range(4):\nimport time\ntime.sleep(1.5)\ni + 1"  # past the progress line's delay
    ran = kernel.ok(slow, timeout=120)
    assert kernel.value("r") == "[1, 2, 3, 4]"
    assert ran.transcript() == [], ran.describe()  # quiet from ipython_config.py: no progress line
    kernel.ok("%config AzparMagics.workers = 2")
    kernel.ok("%config AzparMagics.quiet = False")
    assert "local pool of 2 worker processes" in kernel.ok("%azpar backend").stdout
    shown = kernel.ok(slow.replace("i + 1", "i * 10"), timeout=120)
    assert any(line.startswith("<display>") for line in shown.transcript()), shown.transcript()  # the line is back
    assert kernel.value("r") == "[0, 10, 20, 30]"
    assert kernel.value("len(__import__('azpar_magic').session.engines()[-1].backend.nodes())") == "2"
    refused = kernel.run("%config AzparMagics.workers = -1")
    assert "workers must be at least 1, got -1" in refused.stderr + refused.stdout, refused.describe()
    assert kernel.value("__import__('azpar_magic').session.settings()['workers']") == "2"
