"""What a warm cell pays for on the local pool (issue 16, target c): its settings are chosen once and
no config file is read again while none changed."""

from __future__ import annotations

import pytest

from azpar_magic import config, session


@pytest.fixture
def settings_reads(monkeypatch):
    reads = []
    original = config.load_settings

    def counting(*args, **kwargs):
        reads.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(config, "load_settings", counting)
    return reads


def test_choosing_the_engine_reads_the_settings_once(settings_reads):
    session.engine()
    assert len(settings_reads) == 1


def test_a_cell_reads_its_settings_once_also_its_bound_on_the_items(
    run_cell, ip, settings_reads, monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)
    cell = "%%azpar -q -o r for x in range(3):\nx * 2"
    assert run_cell(cell).success
    settings_reads.clear()
    assert run_cell(cell).success and ip.user_ns["r"] == [0, 2, 4]
    assert len(settings_reads) == 1  # the engine's choice and the run's max_items: one read
    (tmp_path / "azpar.toml").write_text("max_items = 2\n")  # the one read still sees an edit
    result = run_cell(cell)
    assert not result.success and "max_items" in str(result.error) and len(settings_reads) == 2


def test_a_warm_cell_reads_no_config_file_until_one_changes(run_cell, ip, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    reads = []
    original = config._read_toml
    monkeypatch.setattr(config, "_read_toml", lambda path: reads.append(str(path)) or original(path))
    cell = "%%azpar -q -o r for x in range(2):\nx + 1"
    assert run_cell(cell).success  # warm: the pool is started, the config files are parsed
    reads.clear()
    result = run_cell(cell)
    assert result.success and ip.user_ns["r"] == [1, 2]
    assert reads == []
    (tmp_path / "azpar.toml").write_text("max_items = 1\n")  # an edit takes effect at the next cell
    result = run_cell(cell)
    assert "azpar.toml" in reads and not result.success and "max_items" in str(result.error)


def test_a_cell_run_again_does_not_compile_its_iterable_again(monkeypatch):
    from azpar_magic.run import engine
    from azpar_magic.run.parsing import parse_cell

    compiled = []

    def counting(source, *args, **kwargs):
        compiled.append(source)
        return compile(source, *args, **kwargs)

    monkeypatch.setattr(engine, "compile", counting, raising=False)  # shadows the builtin in the module
    cell = parse_cell("for x in range(3) if True else ()", "x")
    assert engine.materialize(cell, {}) == [0, 1, 2]
    assert engine.materialize(cell, {}) == [0, 1, 2]
    assert compiled.count("range(3) if True else ()") <= 1


def test_a_cell_over_plain_data_never_builds_the_module_table(monkeypatch):
    """The module -> distribution table reads every installed distribution's file list (a third
    of a second on a kernel's first cell): only a cell using a module outside the standard
    library needs it (issue 16, g)."""
    from azpar_magic.run import capture
    from azpar_magic.run.parsing import parse_cell

    built = []
    monkeypatch.setattr(capture, "_module_to_distributions", lambda: built.append(1) or {"numpy": ["numpy"]})
    plain = capture.capture(
        parse_cell("for x in xs", "import math, os.path\nmath.sqrt(x) + len(table)"), {"xs": [1.0], "table": [1, 2, 3]}
    )
    assert plain.packages == {} and built == []
    import numpy

    with_numpy = capture.capture(parse_cell("for x in xs", "np.sqrt(x)"), {"xs": [1.0], "np": numpy})
    assert with_numpy.packages == {"numpy": numpy.__version__} and built == [1]


class _Walked(dict):
    """The engine's jobs, counting every walk over them all."""

    walks = 0

    def __iter__(self):
        type(self).walks += 1
        return super().__iter__()

    def keys(self):
        type(self).walks += 1
        return super().keys()

    def values(self):
        type(self).walks += 1
        return super().values()

    def items(self):
        type(self).walks += 1
        return super().items()


def test_a_warm_cell_never_walks_the_sessions_jobs(run_cell, ip, monkeypatch):
    # The engine keeps every job of the session: a cell that copied their ids (it did, to tell
    # which job a Ctrl-C interrupted) cost more with every cell run before it (issue 16, c).
    assert run_cell("%%azpar -q -o r for x in range(2)\nx + 1").success
    engine = session.engine()
    monkeypatch.setattr(engine, "jobs", _Walked(engine.jobs))
    _Walked.walks = 0
    for _ in range(3):
        assert run_cell("%%azpar -q -o r for x in range(2)\nx + 1").success
        assert ip.user_ns["r"] == [1, 2]
    assert _Walked.walks == 0


class _Job:
    def __init__(self, job_id: str):
        self.id, self.cancelled = job_id, False

    def cancel(self):
        self.cancelled = True


class _Engine:
    def __init__(self, *ids: str):
        self.jobs = {job_id: _Job(job_id) for job_id in ids}


@pytest.mark.parametrize(
    ("before", "ids", "cancelled"),
    [
        (None, ["new"], ["new"]),  # the session's first job
        ("old-2", ["old-1", "old-2", "new"], ["new"]),
        ("old-2", ["old-1", "old-2"], []),  # interrupted before the job was made
        (None, [], []),
    ],
)
def test_ctrl_c_cancels_only_the_job_the_cell_made(before, ids, cancelled):
    from IPython.core.error import UsageError

    from azpar_magic.magics.cell import _interrupted

    engine = _Engine(*ids)
    with pytest.raises(UsageError) as raised:
        _interrupted(engine, before)
    assert [job_id for job_id, job in engine.jobs.items() if job.cancelled] == cancelled
    if cancelled:
        assert f"while submitting job {cancelled[0]}: it was cancelled" in str(raised.value)
    else:
        assert "nothing was submitted" in str(raised.value)
