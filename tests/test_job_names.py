"""Named jobs (issue 20): ``--name`` on the cell, kept in the manifest; ``%azpar jobs``
and ``azpar_magic.jobs()`` filtered by state, name glob and date; every command that takes
a job takes its name (the newest job of that name); a bad name refused before submitting."""

from __future__ import annotations

import json
import time

import pytest
from IPython.core.error import UsageError

import azpar_magic
from azpar_magic import jobstore as store, session


@pytest.fixture
def job_store(tmp_path, monkeypatch):
    root = tmp_path / "store"
    monkeypatch.setenv(store.STORE_ENV, str(root))
    monkeypatch.setattr(session, "_jobs", {})  # only this test's jobs
    return root


def _run(ip, run_cell, cell: str) -> str:
    before = {j.id for j in azpar_magic.jobs()}
    run_cell(cell)
    (job,) = [j for j in azpar_magic.jobs() if j.id not in before]
    job.wait(30)
    return job.id


def test_name_is_stored_and_listed(ip, run_cell, job_store):
    job_id = _run(ip, run_cell, "%%azpar -q --name sweep-1.a -o r for x in range(3):\nx")
    store.flush()
    manifest = json.loads((job_store / job_id / store.MANIFEST).read_text())
    assert manifest["name"] == "sweep-1.a" and manifest["options"]["name"] == "sweep-1.a"
    lines = run_cell("%azpar jobs").stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "name", "when"], lines
    assert lines[1].split()[:2] == [job_id, "sweep-1.a"], lines
    session.forget(job_id)  # read back from the store alone: the name is there too
    assert [r.name for r in azpar_magic.jobs(stored=True)] == ["sweep-1.a"]
    assert azpar_magic.attach("sweep-1.a").options.name == "sweep-1.a"


def test_filters_by_state_name_and_date(ip, run_cell, job_store):
    a = _run(ip, run_cell, "%%azpar -q --name sweep-a -o r for x in range(2):\nx")
    b = _run(ip, run_cell, "%%azpar -q --name sweep-b --errors remove -o r for x in range(2):\n1 / x")
    c = _run(ip, run_cell, "%%azpar -q --name other -o r for x in range(2):\nx")
    d = _run(ip, run_cell, "%%azpar -q -o r for x in range(2):\nx")  # no name

    def ids(**filters):
        return [r.id for r in azpar_magic.jobs(stored=True, **filters)]

    assert ids(name="sweep-*") == [a, b]
    assert ids(name="*") == [a, b, c]  # a job without a name never matches a pattern
    assert ids(state="done") == [b]
    assert ids(state="succeeded,done", name="sweep-?") == [a, b]
    assert ids(since="today") == [a, b, c, d]
    assert ids(since="1d") == [a, b, c, d]
    assert ids(since="1h") == ids(since="90m") == [a, b, c, d]  # hours and minutes too (1h was refused)
    assert ids(since="0m") == []
    assert ids(since=time.strftime("%Y-%m-%d", time.localtime(time.time() + 2 * 86400))) == []
    # Move job a two days back: yesterday and 1d leave it out, 3d keeps it.
    folder = job_store / a
    manifest = json.loads((folder / store.MANIFEST).read_text())
    manifest["created"] -= 2 * 86400
    store.write_manifest(folder, manifest)
    session.forget(a)
    assert ids(since="yesterday") == [b, c, d]
    assert ids(since="1d") == [b, c, d]
    assert a in ids(since="3d")
    assert a not in ids(since="47h") and a in ids(since="49h")
    # Process jobs (handles) take the same filters.
    assert [j.id for j in azpar_magic.jobs(name="sweep-*")] == [b]
    out = run_cell("%azpar jobs --name 'sweep-*' --state done").stdout.splitlines()
    assert len(out) == 2 and out[1].startswith(b), out
    assert "no jobs match --name nothing*" in run_cell("%azpar jobs --name 'nothing*'").stdout


@pytest.mark.parametrize("line, fragment", [
    ("jobs --state finished", "--state takes pending, running, succeeded"),
    ("jobs --state runing", "not runing (did you mean running?)"),
    ("jobs --since last-week", "--since takes a date (2026-12-01)"),
    ("jobs --since", "usage: %azpar jobs"),
    ("jobs --color red", "usage: %azpar jobs"),
])
def test_bad_filters_are_usage_errors(ip, job_store, line, fragment):
    with pytest.raises(UsageError) as caught:
        ip.run_line_magic("azpar", line)
    assert fragment in str(caught.value), str(caught.value)


def test_commands_take_the_newest_job_of_a_name(ip, run_cell, job_store):
    head = "%%azpar -q --name fit --errors pass -o r for x in range(3):\n"
    old = _run(ip, run_cell, head + "print('old', x)\n1 / (x - 1)")
    new = _run(ip, run_cell, head + "print('new', x)\n1 / (x - 2)")
    assert azpar_magic.attach("fit").id == new
    assert "new 1" in run_cell("%azpar logs fit 1").stdout
    run_cell("%azpar attach fit -o attached")
    assert ip.user_ns["attached"][:2] == [-0.5, -1.0]
    assert run_cell("%azpar collect fit -o collected").success
    assert isinstance(ip.user_ns["collected"][2], ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):  # debug: the newest job's iteration 2 fails
        ip.run_line_magic("azpar", "debug fit 2 --no-pdb")
    session.forget(new)
    session.forget(old)  # from the store alone, too
    assert azpar_magic.attach("fit").id == new
    rerun = run_cell("%azpar rerun fit -o again -q")
    assert rerun.success, rerun.error
    assert azpar_magic.jobs()[-1].rerun_of == new and azpar_magic.jobs()[-1].options.name == "fit"
    assert run_cell("%azpar delete fit").success  # the rerun: now the newest "fit"
    assert azpar_magic.attach("fit").id == new


@pytest.mark.parametrize("name, fragment", [
    ("has space", "usage"),  # two words: the parser refuses the second
    ("'a/b'", "it has '/'"),
    ("x" * 65, "it is 65 characters long"),
    ("azpar-root-20261202-000000-0123456789ab", "it looks like a job id"),
])
def test_a_bad_name_is_refused_before_submitting(ip, run_cell, job_store, name, fragment):
    run = run_cell(f"%%azpar -q --name {name} -o r for x in range(2):\nx")
    assert isinstance(run.error, UsageError), run.error
    assert fragment in str(run.error) or (fragment == "usage" and "unrecognized" in str(run.error)), str(run.error)
    assert fragment == "usage" or str(run.error).count("Nothing was submitted.") == 1, str(run.error)  # said once
    assert azpar_magic.jobs() == [] and not (job_store.exists() and list(job_store.iterdir()))


def test_python_api_refuses_a_bad_name(ip, job_store):
    from azpar_magic.errors import SubmitError
    from azpar_magic.jobs.job import JobOptions
    from azpar_magic.run.engine import validate_options

    with pytest.raises(SubmitError, match="'a b' cannot name a job: it has ' '"):
        validate_options(JobOptions(name="a b"))


def test_the_panel_title_shows_the_name(ip, run_cell, job_store):
    from azpar_magic.ui.html import header_html
    from azpar_magic.ui.state import job_view
    from azpar_magic.ui.text import format_snapshot, format_text

    job = azpar_magic.attach(_run(ip, run_cell, "%%azpar -q --name fit.v2 -o r for x in range(2):\nx"))
    snapshot = job.snapshot()
    assert '<span class="azpar-name" style="font-weight:600">fit.v2</span>' in header_html(job_view(snapshot))
    assert f" {job.id} (fit.v2) succeeded" in format_snapshot(snapshot)
    assert format_text(snapshot).startswith(f"azpar job {job.id} (fit.v2): ")
    unnamed = azpar_magic.attach(_run(ip, run_cell, "%%azpar -q -o r for x in range(2):\nx")).snapshot()
    assert "azpar-name" not in header_html(job_view(unnamed))
    assert format_text(unnamed).startswith(f"azpar job {unnamed.job_id}: ")
