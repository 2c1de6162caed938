"""The session (azpar_magic/session.py) on its own: one engine per backend configuration per
process, the active profile and what beats what, the jobs this process remembers and how a
command finds one (by id, a start or end of it, a --name, the store), the engine a stored job
is followed with, and what closing the session stops.

The profiles live in a configuration folder of the test's own. The Azure profile points at a
loopback port nothing listens on: an engine is created without contacting its service (its
clients are built on first use), and no test here uses one.
"""

from __future__ import annotations

import gc
import time
import weakref

import pytest

import azpar_magic
from azpar_magic import config, jobstore, session, worker as wire
from azpar_magic.errors import ConfigError, IterationError
from azpar_magic.jobs import Failure, Job
from azpar_magic.jobs.job import JobOptions
from azpar_magic.run.parsing import parse_cell
from azpar_magic.run.request import RunRequest

from .azure_support import close_azure_engines
from .helpers_corpus import wait_for

_CONFIG = """\
profile = "home"

[profiles.home]
backend = "local"

[profiles.cloud]
backend = "azure"
batch_account_url = "http://127.0.0.1:9"
batch_account_name = "acct"
storage_account_url = "http://127.0.0.1:9/acct"
auth = "shared-key"
pool_id = "azpar-session-test"
"""


@pytest.fixture
def profiles(tmp_path, monkeypatch):
    """A config folder with a local profile (the configured default) and an Azure one; the
    session's active profile and its Azure engines are put back afterwards."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("AZPAR_BATCH_KEY", "a2V5")
    monkeypatch.setenv("AZPAR_STORAGE_KEY", "a2V5")
    monkeypatch.delenv("AZPAR_PROFILE", raising=False)
    path = config.user_config_path()
    path.parent.mkdir(parents=True)
    path.write_text(_CONFIG)
    session.use(None)
    yield path
    session.use(None)
    close_azure_engines()


@pytest.fixture
def local_sizes():
    """Local engines of other sizes are made here: the default pool is asked for again after
    the test, which closes them (idle), as the next cell of a notebook would."""
    yield
    session.engine("local")


def _submit(loop: str, body: str, **options):
    job = session.engine("local").submit(RunRequest(parse_cell(loop, body), {}, JobOptions(**options)))
    session.remember(job)
    return job


# ------------------------------------------------------------------ engines per backend configuration


def test_one_engine_per_local_pool_size(local_sizes):
    two = session.engine("local", 2)
    assert session.engine("local", 2) is two
    assert session.engine("local", session.default_workers()) is session.engine("local"), \
        "the default size and the same size given explicitly are one pool"
    three = session.engine("local", 3)
    assert three is not two and three.backend.name == "local"
    assert two not in session.engines(), "an idle pool of another size is closed, not kept"


def test_a_workers_setting_past_the_bound_is_refused_naming_where_it_was_set(tmp_path, monkeypatch):
    """--workers, run(workers=) and %config AzparMagics.workers are bounded by workers_limit; the config
    files' and AZPAR_WORKERS's workers were not: with AZPAR_WORKERS=100, 100 one-iteration tasks started 100
    processes (the pool starts a worker per queued task up to its size)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("AZPAR_PROFILE", raising=False)
    path = config.user_config_path()
    path.parent.mkdir(parents=True)
    limit = session.workers_limit()
    path.write_text(f"workers = {limit + 1}\n")
    with pytest.raises(ValueError) as info:
        azpar_magic.map(abs, [-1], chunk_size=1)
    assert str(info.value) == (
        f"{path}: workers must be at most {limit} ({session.WORKERS_PER_CPU} per CPU this process may use, at "
        f"least {session.WORKERS_FLOOR}), got {limit + 1}. Nothing was submitted."
    ), str(info.value)
    monkeypatch.setenv("AZPAR_WORKERS", "100000")
    with pytest.raises(ValueError, match="^environment variable AZPAR_WORKERS: workers must be at most"):
        azpar_magic.run("for x in range(2)", "x", {})
    monkeypatch.setenv("AZPAR_WORKERS", "abc")  # named by its variable ("environment: ..." named none)
    with pytest.raises(ValueError, match="^environment variable AZPAR_WORKERS: workers must be a whole number"):
        azpar_magic.run("for x in range(2)", "x", {})
    monkeypatch.setenv("AZPAR_WORKERS", "2")  # within the bound: taken, as before
    assert azpar_magic.run("for x in range(2)", "x", {}).result() == [0, 1]


def test_a_misspelt_backend_is_named_as_unknown_not_as_needing_a_profile(monkeypatch):
    """AZPAR_BACKEND=azur (or backend="azur") said "the azur backend needs a profile"."""
    monkeypatch.setenv("AZPAR_BACKEND", "azur")
    with pytest.raises(ValueError, match="^environment variable AZPAR_BACKEND: unknown backend 'azur'; available: azure"):
        azpar_magic.run("for x in range(2)", "x", {})
    monkeypatch.delenv("AZPAR_BACKEND")
    with pytest.raises(ValueError, match="^unknown backend 'azur'; available: azure, local"):
        azpar_magic.map(abs, [1], backend="azur")


def test_an_azure_engine_is_keyed_by_the_profiles_content(profiles):
    cloud = session.engine(profile="cloud")
    assert cloud.backend.name == "azure"
    assert session.engine(profile="cloud") is cloud, "an unchanged profile reuses its engine"
    assert session.engine(profile="home") is session.engine("local")
    profiles.write_text(_CONFIG.replace('pool_id = "azpar-session-test"', 'pool_id = "azpar-session-test-2"'))
    edited = session.engine(profile="cloud")
    assert edited is not cloud and edited.backend.profile["pool_id"] == "azpar-session-test-2"
    assert cloud in session.engines(), "an Azure engine is not closed for another one (its jobs run on)"


def test_a_backend_that_needs_a_profile_says_how_to_give_one(profiles):
    profiles.write_text(_CONFIG.replace('profile = "home"\n', ""))
    with pytest.raises(ConfigError, match=r"the azure backend needs a profile: pass --profile NAME, run %azpar use"):
        session.engine(backend="azure")


def test_pool_commands_refuse_a_profile_that_is_not_azure(profiles):
    with pytest.raises(ConfigError, match="profile 'home' is not an Azure profile"):
        session.pool_action("home", "status")


def test_pool_commands_without_a_profile_say_how_to_choose_one(profiles):
    """It said "profile None is not an Azure profile"."""
    profiles.write_text(_CONFIG.replace('profile = "home"\n', ""))
    with pytest.raises(ConfigError, match=r"none is chosen: pass --profile NAME .* or run %azpar use NAME"):
        session.pool_action(None, "resize", 1, 1)


# ------------------------------------------------------------------ the active profile


def test_the_active_profile_explicit_then_use_then_the_config_files(profiles):
    assert session.active_profile() == "home"  # the config files' profile
    assert session.use("cloud")["backend"] == "azure"
    assert session.active_profile() == "cloud"
    assert session.active_profile("home") == "home", "an explicit profile beats use"
    assert session.engine().backend.name == "azure"
    assert session.use(session.LOCAL) is None
    assert session.active_profile() == session.LOCAL
    assert session.engine() is session.engine("local"), "use(LOCAL) is the local pool whatever the files say"
    session.use(None)
    assert session.active_profile() == "home"


def test_use_checks_the_profile_at_once(profiles):
    with pytest.raises(ConfigError):
        session.use("nowhere")
    assert session.active_profile() == "home", "a failed use leaves the active profile alone"
    profiles.write_text(_CONFIG.replace('auth = "shared-key"', 'auth = "sometimes"'))
    with pytest.raises(ConfigError, match="Profile 'cloud' cannot be used: auth"):
        session.use("cloud")
    assert session.active_profile() == "home"


# ------------------------------------------------------------------ the jobs of this process


@pytest.mark.timeout(120)
def test_remember_find_and_forget_a_job():
    first = _submit("for x in range(3)", "x + 1")
    second = _submit("for x in range(2)", "x * 2")
    assert first.result(timeout=60) == [1, 2, 3] and second.result(timeout=60) == [0, 2]
    assert session.find_job(first.id) is first
    assert session.find_job(first.id[-8:]) is first, "the end of an id names the job"
    assert session.find_job(None) is second, "no id: the latest job"
    assert first in session.jobs() and second in session.jobs()
    with pytest.raises(KeyError, match=r"matches \d+ jobs of this session .*give more of the id"):
        session.find_job("azpar-")
    session.forget(first.id)
    assert first not in session.jobs()
    with pytest.raises(KeyError, match=f"no job '{first.id}' in this session"):
        session.find_job(first.id, stored=False)
    # From the job store: another handle on the same job, remembered now that it is loaded.
    assert wait_for(lambda: _stored(first.id), 20), "the job never reached the job store"
    loaded = session.find_job(first.id)
    assert loaded is not first and loaded.id == first.id and loaded.result(timeout=10) == [1, 2, 3]
    assert session.find_job(first.id) is loaded


def _stored(job_id: str) -> bool:
    try:
        job = session.find_job(job_id)
    except KeyError:
        return False
    session.forget(job_id)
    return job.done


@pytest.mark.timeout(120)
def test_old_ended_jobs_are_let_go_and_come_back_from_the_store(monkeypatch):
    """A kernel keeps the newest KEPT_JOBS ended jobs; an older one leaves memory (nothing else
    holds it) and the store gives it back, values and all."""
    monkeypatch.setattr(session, "KEPT_JOBS", 3)
    monkeypatch.setattr(session, "LET_GO_BATCH", 1)  # a look at each job over the bound
    monkeypatch.setattr(session, "_next_look", 0)  # as an earlier test's look may have left it
    jobs = [_submit("for x in range(3)", f"x + {k}") for k in range(5)]
    assert [job.result(timeout=60) for job in jobs] == [[k, k + 1, k + 2] for k in range(5)]
    assert jobstore.flush(), "the job store did not write the jobs"
    ids, first = [job.id for job in jobs], weakref.ref(jobs[0])
    del jobs
    newest = _submit("for x in range(1)", "x")  # remembering it lets go of the oldest
    held = [job.id for job in session.jobs()]
    assert newest.id in held and [i for i in ids if i in held] == ids[-2:], held
    gc.collect()
    assert first() is None, "the session let go of the job, but something still holds it"
    back = session.find_job(ids[0])
    assert back.result(timeout=10) == [0, 1, 2] and back.done
    assert back.stored == str(jobstore.store_root()), "read whole from the store: it may be let go of again"
    assert session.find_job(ids[0]) is back, "read back, it is held again"


@pytest.mark.timeout(60)
def test_a_job_let_go_of_leaves_memory_though_the_store_wrote_it_last():
    """The store's writer thread keeps no job while it sleeps until its next work: the last job it
    wrote, values and all, outlived the session's let-go of it for as long as the writer slept."""
    job = _submit("for x in range(3)", "x * 2")
    assert job.result(timeout=60) == [0, 2, 4]
    assert jobstore.flush(), "the job store did not write the job"
    ref, job_id = weakref.ref(job), job.id
    del job
    session.forget(job_id)  # what the let-go does (session._let_go_of_stored_jobs)
    for engine in session.engines():
        engine.jobs.pop(job_id, None)
    gc.collect()
    assert ref() is None, "the session let go of the job, but something still holds it"


@pytest.mark.timeout(120)
def test_older_jobs_with_large_values_are_let_go_past_the_bytes_bound(monkeypatch):
    """The jobs held must also keep their values under KEPT_VALUE_BYTES (as the values travelled): a cell
    returning 20 arrays of 10 MB, run again and again with its result dropped each time, grew the kernel
    by 200 MB a run (to 10 GB by the 50th job, issue 16). The newest job stays, however big, and a job
    let go comes back from the store, values and all."""
    np = pytest.importorskip("numpy")
    monkeypatch.setattr(session, "KEPT_VALUE_BYTES", 5_000_000, raising=False)
    monkeypatch.setattr(session, "_next_look", 0)
    body = "import numpy as np\nnp.full(200_000, float(i + K))"  # 1.6 MB a value, 3.2 MB a job
    ids = []
    for k in range(4):
        job = _submit("for i in range(2)", body.replace("K", str(k)))
        assert [float(v[0]) for v in job.result(timeout=60)] == [k, k + 1.0] and jobstore.flush(30)
        ids.append(job.id)
        del job
    held = [job.id for job in session.jobs()]
    assert ids[-1] in held and ids[0] not in held and ids[1] not in held, (ids, held)
    back = session.find_job(ids[0])
    assert np.array_equal(back.result(timeout=10)[1], np.full(200_000, 1.0))


@pytest.mark.timeout(120)
def test_older_jobs_whose_values_made_many_objects_are_let_go_past_the_objects_bound(monkeypatch):
    """A cell returning 10,000 small Series made ~210,000 objects a run as they were loaded, and the
    session kept 50 such jobs: every full collection of the kernel's heap walked them all (seconds, in
    whatever cell set it off). Kept jobs now hold at most KEPT_VALUE_OBJECTS objects; the newest stays,
    and one let go comes back from the store, values and all."""
    monkeypatch.setattr(session, "KEPT_VALUE_OBJECTS", 5_000, raising=False)
    monkeypatch.setattr(session, "_next_look", 0)
    ids = []
    for k in range(4):
        job = _submit("for i in range(2_000)", f"{{'i': i, 'k': [{k}]}}")  # 2 objects a value
        assert job.result(timeout=60)[-1] == {"i": 1_999, "k": [k]} and jobstore.flush(30)
        assert 3_000 <= job.value_objects < 8_000, job.value_objects
        ids.append(job.id)
        del job
    held = [job.id for job in session.jobs()]
    assert ids[-1] in held and ids[0] not in held and ids[1] not in held, (ids, held)
    assert session.find_job(ids[0]).result(timeout=10)[5] == {"i": 5, "k": [0]}


def test_values_are_loaded_with_the_collector_paused_and_the_objects_they_made_counted(monkeypatch):
    """Loading a task's values makes no garbage to collect, but set off collections of the whole heap on
    the way (6 full ones in a cell of 10,000 Series, issue 16): the collector is paused while they load,
    and left as the notebook had it."""
    from azpar_magic.run import engine as engine_mod

    values = [{"n": i, "row": [i, i + 1]} for i in range(3_000)]
    encoded = ["all", "pickle", wire.plain_pickle(values)]
    passes, seen, thresholds = [], [], gc.get_threshold()
    real = engine_mod.decode_each

    def watched(*args):
        seen.append(gc.isenabled())
        before = len(passes)
        out = real(*args)
        seen.append(len(passes) - before)  # passes while the values loaded
        return out

    monkeypatch.setattr(engine_mod, "decode_each", watched)
    gc.callbacks.append(record := lambda phase, info: passes.append(phase))
    try:
        gc.set_threshold(10)  # a pass every 10 new objects, were the collector on
        loaded, unloadable, made = engine_mod.decode_counted(encoded, len(values))
    finally:
        gc.callbacks.remove(record)
        gc.set_threshold(*thresholds)
    assert loaded == values and unloadable == {} and seen == [False, 0] and gc.isenabled()
    assert 5_000 <= made < 7_000, made  # a dict and a list a value
    gc.disable()
    try:
        assert engine_mod.decode_counted(encoded, len(values))[0] == values and not gc.isenabled()
    finally:
        gc.enable()


def _tracked_sequences_of(length: int) -> list:
    """The lists and tuples of ``length`` entries the garbage collector walks at each of its passes."""
    gc.collect()
    return [o for o in gc.get_objects() if type(o) in (list, tuple) and len(o) == length]


@pytest.mark.timeout(120)
def test_a_kept_job_leaves_the_garbage_collectors_watch_once_the_store_holds_it():
    """The session keeps the last KEPT_JOBS jobs, values and items. Kept as lists, each was walked entry by
    entry at every pass of the collector: a kernel that had run cells of 10,000 values spent ~16 ms in each
    full collection, ~13 in those jobs (issue 16). Once the store holds a job, its values and items are
    tuples of numbers, which the collector stops walking; what the user reads from the job is the same."""
    n = 2_347  # a length nothing else in the test process has
    job = _submit(f"for x in range({n})", "x * 3", chunk_size=500)
    out = job.result(timeout=60)
    assert out == [3 * x for x in range(n)] and type(out) is list
    assert jobstore.flush(), "the job store did not write the job"
    del out  # the user let go of the result; the session keeps the job
    assert _tracked_sequences_of(n) == [], "a kept job's values or items are still walked by the collector"
    again = job.result()
    assert again == [3 * x for x in range(n)] and type(again) is list and again is not job.result()
    assert job.partial_results()[n - 1] == 3 * (n - 1)
    assert sorted(job.as_completed(timeout=10))[:2] == [(0, 0), (1, 3)]
    rerun = azpar_magic.rerun(job.id, failed=False, namespace={})
    assert rerun.result(timeout=60) == [3 * x for x in range(n)]


def test_a_settled_job_written_to_again_takes_the_values_and_a_callable_combine_runs_once():
    """A result delivered after the store wrote the job (a late duplicate) is taken as before; a
    callable --combine is called once however often the result is read, and an error is the same
    object each time."""
    calls = []
    job = Job("azpar-settle", [0, 1, 2, 3], JobOptions(combine=lambda values: calls.append(1) or sum(values)),
              backend_name="test")
    job.add_tasks([("1", range(0, 2)), ("2", range(2, 4))])
    job.record_values("1", range(0, 2), [10, 11], {}, {}, None)
    job.settle()  # still running: nothing to settle
    assert type(job._values) is list
    job.finish(job.final_state())  # (task 2 never answered: its iterations stay pending)
    job.settle()
    assert type(job._values) is tuple and type(job.items) is tuple
    job.record_values("2", range(2, 4), [12, 13], {}, {}, None)  # late
    assert job.partial_results() == {0: 10, 1: 11, 2: 12, 3: 13}
    assert job.result() == 46 and job.result() == 46 and calls == [1]
    failing = Job("azpar-settle-2", [0], JobOptions(), backend_name="test")
    failing.add_tasks([("1", [0])])
    failing.record_task_failed("1", lambda i: Failure(i, "ValueError", "boom"))
    failing.finish(failing.final_state())
    failing.settle()
    with pytest.raises(IterationError) as first:
        failing.result()
    with pytest.raises(IterationError) as second:
        failing.result()
    assert first.value is second.value


@pytest.mark.timeout(120)
def test_a_jobs_items_are_a_tuple_from_submission_to_after_the_store_settled_it():
    """``job.items`` was a list while the job ran and became a tuple when the store's writer settled
    it, on that thread, after ``result()`` had returned: ``job.items == [...]`` was true or false by
    a race (a CI run failed on it). It is one tuple throughout now, whatever the iterable was."""
    running = _submit("for x in [3, 1, 2]", "import time\ntime.sleep(0.3)\nx")
    assert running.items == (3, 1, 2) and not running.snapshot().final
    first = running.items
    assert running.result(timeout=60) == [3, 1, 2] and jobstore.flush()
    assert running.items is first and running._values.__class__ is tuple  # settled, items untouched
    made = _submit("for x in (y * 2 for y in range(3))", "x")
    assert made.items == (0, 2, 4) and made.result(timeout=60) == [0, 2, 4]
    assert Job("azpar-items", [1, 2], JobOptions(), backend_name="test").items == (1, 2)


@pytest.mark.timeout(120)
def test_the_iterations_bound_keeps_the_newest_job_however_big(monkeypatch):
    monkeypatch.setattr(session, "KEPT_ITERATIONS", 5)
    older = _submit("for x in range(4)", "x")
    assert older.result(timeout=60) == [0, 1, 2, 3] and jobstore.flush()
    big = _submit("for x in range(8)", "x")  # alone over the bound: kept, the older one let go
    assert big.result(timeout=60) == list(range(8))
    held = [job.id for job in session.jobs()]
    assert big.id in held and older.id not in held


@pytest.mark.timeout(120)
def test_new_jobs_let_go_of_the_oldest_a_few_at_a_time_once_the_store_holds_them(monkeypatch):
    """Cells run back to back: every LET_GO_BATCH new jobs let go of the oldest beyond the bound, not a
    few hundred at once later (a 14-36 ms pause of one cell, with the collector walking their values
    meanwhile)."""
    monkeypatch.setattr(session, "KEPT_JOBS", 3)
    monkeypatch.setattr(session, "LET_GO_BATCH", 4)
    monkeypatch.setattr(session, "_next_look", 0)  # as an earlier test's look may have left it
    monkeypatch.setattr(session, "_jobs", {})  # only this test's jobs: the sizes below count them all
    monkeypatch.setattr(session, "_kept_iterations", 0)
    ids, sizes = [], []
    for k in range(12):
        job = _submit("for x in range(2)", f"x + {k}")
        assert job.result(timeout=60) == [k, k + 1] and jobstore.flush()
        ids.append(job.id)
        held = [i for i in ids if i in {j.id for j in session.jobs()}]
        assert held == ids[-len(held) :], "an older job stayed while a newer one went"
        sizes.append(len(held))
    assert sizes == [1, 2, 3, 4, 5, 6, 3, 4, 5, 6, 3, 4], sizes  # a look at the 7th and the 11th


class _Held:
    """What a look reads of a job (a unit test of the look alone)."""

    def __init__(self, job_id: str, *, done=True, stored=None, store_error=None, ended_ago=0.0):
        self.id, self.done, self.stored, self.store_error = job_id, done, stored, store_error
        self.owner, self.items, self.value_bytes, self.value_objects = "", [0], 0, 0
        self.created = time.time() - ended_ago - 1.0

    def elapsed(self) -> float:
        return 1.0


def test_a_look_gives_up_after_a_few_jobs_not_yet_written_but_passes_over_running_stale_and_kept_ones(monkeypatch):
    here = str(jobstore.store_root())
    jobs = {}
    for n in range(20):  # the store could not keep these: they stay, and cost the look no patience
        jobs[f"failed-{n}"] = _Held(f"failed-{n}", store_error="disk full")
    for n in range(20):  # long jobs still running: they must not stop the let-go of the short ones after them
        jobs[f"running-{n}"] = _Held(f"running-{n}", done=False)
    for n in range(20):  # ended long ago and never written: something else keeps them, at no cost either
        jobs[f"stale-{n}"] = _Held(f"stale-{n}", ended_ago=session.UNWRITTEN_FOR + 5)
    for n in range(session.LOOK_PATIENCE):  # ended, not written yet: each may go at a later look
        jobs[f"waiting-{n}"] = _Held(f"waiting-{n}")
    for n in range(3):
        jobs[f"written-{n}"] = _Held(f"written-{n}", stored=here)
    jobs["newest"] = _Held("newest", done=False)
    monkeypatch.setattr(session, "_jobs", jobs)
    monkeypatch.setattr(session, "_kept_iterations", len(jobs))
    monkeypatch.setattr(session, "KEPT_JOBS", 1)
    before = list(jobs)
    session._let_go_of_stored_jobs()
    assert list(jobs) == before, "the look gave up at the jobs not yet written, before the written ones"
    jobs["waiting-0"].stored = here  # written since: it goes, and the look reaches the written jobs
    session._let_go_of_stored_jobs()
    gone = {"waiting-0", "written-0", "written-1", "written-2"}
    assert list(jobs) == [i for i in before if i not in gone]
    assert session._kept_iterations == len(jobs)


@pytest.mark.timeout(120)
def test_a_job_the_store_could_not_keep_stays_in_memory(monkeypatch, tmp_path, capsys):
    """Its values exist nowhere else: however old, the session keeps it."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(jobstore.STORE_ENV, str(blocker / "jobs"))
    monkeypatch.setattr(session, "KEPT_JOBS", 1)
    jobs = [_submit("for x in range(2)", f"x * {k}") for k in range(3)]
    assert [job.result(timeout=60) for job in jobs] == [[0, k] for k in range(3)]
    jobstore.flush()
    assert all(job.store_error for job in jobs), [job.store_error for job in jobs]
    _submit("for x in range(1)", "x").result(timeout=60)
    held = {job.id for job in session.jobs()}
    assert all(job.id in held for job in jobs)
    assert "could not keep job" in capsys.readouterr().err
    for job in jobs:
        session.forget(job.id)


@pytest.mark.timeout(120)
def test_a_name_finds_the_newest_job_called_so():
    older = _submit("for x in range(1)", "x", name="session-named")
    newer = _submit("for x in range(1)", "x + 1", name="session-named")
    assert older.result(timeout=60) == [0] and newer.result(timeout=60) == [1]
    assert session.find_job("session-named") is newer


def test_an_unknown_id_lists_the_known_ones():
    with pytest.raises(KeyError, match=r"no job 'zz-not-a-job' in this session or in the job store .*\(known: "):
        session.find_job("zz-not-a-job")


# ------------------------------------------------------------------ a stored job's engine


def test_engine_for_stored_follows_the_manifests_backend_and_profile(profiles):
    assert session.engine_for_stored({"backend": "local"}) is session.engine("local")
    assert session.engine_for_stored({}) is session.engine("local"), "a manifest without a backend is local"
    cloud = session.engine(profile="cloud")
    assert session.engine_for_stored({"backend": "azure", "profile": "cloud"}) is cloud
    assert session.engine_for_stored({"backend": "azure", "backend_info": {"profile": "cloud"}}) is cloud
    session.use("cloud")
    assert session.engine_for_stored({"backend": "azure"}) is cloud, "no profile named: the active one"


# ------------------------------------------------------------------ closing


@pytest.mark.timeout(120)
def test_close_forgets_every_engine_and_the_next_request_makes_a_new_pool():
    before = session.engine("local")
    session.close()
    assert session.engines() == []
    after = session.engine("local")
    assert after is not before and after.backend.name == "local"


@pytest.mark.timeout(120)
def test_close_ends_a_running_local_job_as_cancelled():
    job = azpar_magic.run("for x in range(2)", "import time\ntime.sleep(30)\nx", {}, backend="local", chunk_size=1)
    assert wait_for(lambda: job.snapshot().tasks_running > 0, 30), "the job never started"
    session.close()
    assert job.wait(10) and job.state == "cancelled"


def test_workers_limit_is_per_usable_cpu_with_a_floor():
    assert session.workers_limit() == max(session.WORKERS_FLOOR, session.WORKERS_PER_CPU * session.default_workers())
