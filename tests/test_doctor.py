"""``azpar_magic.doctor`` without Azure: the check runner, the text and HTML views of one
report, the local backend's table, and the ``%azpar doctor`` / CLI argument handling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from azpar_magic import doctor
from azpar_magic.doctor import FAILED, OK, SKIPPED, WARNING, Check, DoctorReport

REPO = Path(__file__).resolve().parents[1]


def _probe(result):
    return lambda: result


def test_a_check_whose_need_failed_is_skipped_naming_it_and_is_not_run():
    ran = []

    def never():
        ran.append(1)
        return OK, "", ""

    rows = doctor.run_checks([
        ("a", "first", (), _probe((FAILED, "broken", "mend it"))),
        ("b", "second", ("a",), never),
        ("c", "third", ("b",), never),
        ("d", "fourth", (), _probe((WARNING, "meh", "look"))),
        ("e", "fifth", ("d",), _probe((OK, "fine", ""))),
    ])
    assert [(r.key, r.status) for r in rows] == [("a", FAILED), ("b", SKIPPED), ("c", SKIPPED), ("d", WARNING),
                                                 ("e", OK)]
    assert rows[1].detail == "not checked: first failed" and rows[2].detail == "not checked: second skipped"
    assert not ran  # a warning passes; a failure and a skip stop what depends on them


def test_a_probe_that_raises_is_a_failed_row_and_the_table_goes_on():
    def broken():
        raise KeyError("oops")

    rows = doctor.run_checks([("a", "first", (), broken), ("b", "second", (), _probe((OK, "fine", "")))])
    assert rows[0].status == FAILED and "KeyError" in rows[0].detail and rows[0].fix
    assert rows[1].status == OK


def _report() -> DoctorReport:
    return DoctorReport("team", "azure", [
        Check("profile", "profile", OK, "profile team is complete and valid"),
        Check("pool_write", "pool writes", WARNING, "may not write pools", "Ask for <Data Contributor> & co."),
        Check("pool", "pool", FAILED, "pool <p> does not exist", "Ask an administrator to create it."),
        Check("autoscale", "autoscale formula", SKIPPED, "not checked: pool failed"),
    ])


def test_text_view_one_line_per_check_and_the_fix_below_it():
    report = _report()
    lines = report.text().splitlines()
    assert lines[0] == "azpar doctor, profile team (azure backend): not ready: fix the failed lines " \
                       "(1 ok, 1 warning, 1 failed, 1 skipped)"
    assert lines[1].split() == ["ok", "profile", "profile", "team", "is", "complete", "and", "valid"]
    assert lines[3].strip() == "fix: Ask for <Data Contributor> & co."
    assert lines[4].startswith("  failed   pool ")
    assert repr(report) == report.text()
    assert report.failed and report.status("pool") == FAILED and report.status("nothing") is None


def test_html_view_has_the_same_rows_escaped_with_status_hooks():
    html = _report()._repr_html_()
    assert html.count('class="azpar-doctor-row"') == 4
    assert 'data-check="pool" data-status="failed"' in html
    assert "&lt;Data Contributor&gt; &amp; co." in html and "<Data Contributor>" not in html
    assert 'data-failed="true"' in html


def test_a_ready_report_says_so():
    report = DoctorReport(None, "local", [Check("workers", "workers", OK, "2 worker processes")])
    assert report.summary() == "azpar doctor (local backend): ready (1 ok)" and not report.failed


def test_without_a_profile_the_local_pool_gets_its_table(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    report = doctor.diagnose(None)
    assert report.backend == "local"
    assert [c.key for c in report.checks] == ["workers", "cpus", "memory"]
    assert "worker processes" in report.checks[0].detail and "usable by this process" in report.checks[1].detail


def test_local_run_sends_one_iteration_through_the_local_pool(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    report = doctor.diagnose(None, run=True)
    row = report.checks[-1]
    assert (row.key, row.status) == ("run", OK), report.text()


def test_an_unknown_profile_is_one_failed_line_with_its_fix(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    report = doctor.diagnose("nosuch")
    (row,) = report.checks
    assert row.status == FAILED and "no profile named 'nosuch'" in row.detail
    assert "%azpar config nosuch" in row.fix
    assert report.text().splitlines()[0].startswith("azpar doctor, profile nosuch: not ready")


@pytest.mark.parametrize("line", ["%azpar doctor a b", "%azpar doctor --bogus", "%azpar doctor -r"])
def test_magic_argument_errors_are_usage_errors(run_cell, line):
    from IPython.core.error import UsageError

    run = run_cell(line)
    assert isinstance(run.error, UsageError) and "usage: %azpar doctor [PROFILE] [--run]" in str(run.error)


def test_magic_help_names_doctor(run_cell):
    run = run_cell("%azpar help doctor")
    assert run.stdout.startswith("%azpar doctor [PROFILE] [--run]")


def test_magic_shows_the_local_table(run_cell, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    run = run_cell("%azpar doctor")
    assert run.success, run.error
    (shown,) = run.outputs
    assert 'data-check="workers" data-status="ok"' in shown.data["text/html"]
    assert shown.data["text/plain"].startswith("azpar doctor (local backend): ready")


def test_cli_exit_codes(tmp_path):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "azpar_magic", "doctor", *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})

    ok = cli()
    assert ok.returncode == 0 and ok.stdout.startswith("azpar doctor (local backend): ready"), ok.stderr
    missing = cli("nosuch")
    assert missing.returncode == 1 and "fix: " in missing.stdout
    usage = cli("--bogus")
    assert usage.returncode == 2 and "usage:" in usage.stderr


@pytest.mark.timeout(120)
def test_a_kernel_shows_the_doctor_table_as_html_with_its_text(tmp_path):
    """What a notebook gets: one display_data with text/html and the text/plain fallback."""
    from tests.test_kernel import _start, _stop

    kernel, _ = _start(tmp_path)
    try:
        reply = kernel.ok("%azpar doctor")
        (shown,) = [m["content"]["data"] for m in reply.messages if m["msg_type"] == "display_data"]
        assert 'class="azpar-doctor"' in shown["text/html"] and 'data-check="memory"' in shown["text/html"]
        assert shown["text/plain"].startswith("azpar doctor (local backend): ready")
        bad = kernel.run("%azpar doctor one two")
        assert bad.status == "error" and bad.content["ename"] == "UsageError"
    finally:
        _stop(kernel)
