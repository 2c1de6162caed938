"""Options as users write them (issue 13, items 8 and 7): quoted values mean the same for
every option, Azure-only options run on the local pool with one line saying so, and cells
that run but cannot give what was asked get a warning before anything is submitted."""

from __future__ import annotations

import sys
from importlib import metadata

import pytest

from .helpers_corpus import restore_namespace, run_cell_job, snapshot_namespace


@pytest.fixture(autouse=True)
def clean_namespace(ip):
    before = snapshot_namespace(ip.user_ns)
    ip.user_ns.pop("r", None)
    yield
    restore_namespace(ip.user_ns, before)


def _azpar_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("azpar:")]


# ------------------------------------------------------------------------- quoting


@pytest.mark.timeout(60)
def test_quoted_lambda_combine_is_a_callable(ip, run_cell):
    """Its `for` is inside the quotes: not the loop header; its value is evaluated here."""
    run = run_cell("%%azpar -q -o r --combine 'lambda rows: [v * 10 for v in rows]' for x in range(3):\nx")
    assert run.success, run.error
    assert ip.user_ns["r"] == [0, 10, 20]


@pytest.mark.timeout(60)
def test_quoted_combine_with_numpy(ip, run_cell):
    np = pytest.importorskip("numpy")
    ip.run_cell("import numpy as np")
    run = run_cell("%%azpar -q -o r --combine \"lambda rows: np.stack(rows)\" for x in range(3):\nnp.arange(2) + x")
    assert run.success, run.error
    assert isinstance(ip.user_ns["r"], np.ndarray) and ip.user_ns["r"].tolist() == [[0, 1], [1, 2], [2, 3]]


@pytest.mark.timeout(60)
def test_every_option_accepts_a_quoted_value(ip, run_cell):
    ip.user_ns["k"] = 5
    run = run_cell("%%azpar -q -o 'r' --errors 'pass' --retries '1' --chunk-size '2' --seed '3' --timeout '60' "
                   "--gather 'y' --merge 'client' --workers '2' --combine 'list' --export 'k' for x in range(4):\n"
                   "y = x * k\ny")
    assert run.success, run.error
    assert ip.user_ns["r"] == [0, 5, 10, 15] and ip.user_ns["y"] == [0, 5, 10, 15]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("typed, seconds", [
    ("90", 90), ("90s", 90), ("10m", 600), ("1.5h", 5400), ("2D", 172800),
    # Units together and a clock's time were refused ("must be a number ... with a unit"): users write both.
    ("1h30m", 5400), ("'2m 30s'", 150), ("1d2h", 93600), ("1:30:00", 5400), ("30:00", 1800),
])
def test_timeout_takes_a_duration_with_a_unit(run_cell, typed, seconds):
    """``--timeout 10m`` was refused as not a number; a duration with a unit is what users write, and so are
    ``1h30m`` and a clock's ``1:30:00`` (Slurm's --time)."""
    run, job = run_cell_job(run_cell, f"%%azpar -q -o r --timeout {typed} for x in range(2):\nx")
    assert run.success, run.error
    assert job.options.timeout == seconds


# --------------------------------------------------- Azure-only options on the local pool


@pytest.mark.timeout(60)
def test_azure_options_run_locally_with_one_line(ip, run_cell):
    dill = metadata.version("dill")
    run = run_cell(f"%%azpar -o r --packages 'dill=={dill}' --merge cloud --keep for x in range(3):\nx * 2")
    assert run.success, run.error
    assert ip.user_ns["r"] == [0, 2, 4]
    notes = _azpar_lines(run.stderr)
    assert len(notes) == 1, run.stderr
    assert all(flag in notes[0] for flag in ("--packages", "--merge cloud", "--keep", "Azure only"))


@pytest.mark.timeout(60)
def test_packages_version_range_with_a_comma_is_one_requirement(ip, run_cell):
    """`dill>=0.1,<0.2` is one requirement (its range excludes the installed dill, so it is
    named in the warning whole); `surely-not-installed-pkg` is another, missing here."""
    have = metadata.version("dill")
    run = run_cell("%%azpar -q -o r --packages 'dill>=0.1,<0.2,surely-not-installed-pkg' for x in range(2):\nx")
    assert run.success, run.error
    assert ip.user_ns["r"] == [0, 1]
    warning = [line for line in _azpar_lines(run.stderr) if "warning" in line]
    assert len(warning) == 1, run.stderr
    assert f"dill>=0.1,<0.2 ({have} installed)" in warning[0]
    assert "surely-not-installed-pkg (not installed)" in warning[0]


@pytest.mark.timeout(60)
def test_packages_repeatable_and_satisfied_gives_no_warning(ip, run_cell):
    dill = metadata.version("dill")
    major = int(dill.split(".")[0])
    run = run_cell(f"%%azpar -q -o r --packages 'dill>={major},<{major + 1}' --packages 'ipython' "
                   "for x in range(2):\nx")
    assert run.success, run.error
    assert not [line for line in _azpar_lines(run.stderr) if "warning" in line], run.stderr
    assert len(_azpar_lines(run.stderr)) == 1  # the one "acts on Azure only" line


# ------------------------------------------------------------- cells that give nothing


@pytest.mark.timeout(60)
def test_body_of_only_comments_warns(ip, run_cell):
    run, job = run_cell_job(run_cell, "%%azpar -q -o r for x in range(3):\n# compute(x) later\n\n# TODO\n")
    assert run.success, run.error
    assert ip.user_ns["r"] == [None, None, None]
    warning = _azpar_lines(run.stderr)
    assert len(warning) == 1 and "no statement" in warning[0], run.stderr


@pytest.mark.timeout(60)
def test_gather_of_a_name_the_body_never_binds_warns(ip, run_cell):
    run = run_cell("%%azpar -q -o r --gather total,x,squared for x in range(3):\nsquare = x * x\nsquare")
    assert run.success, run.error
    warning = _azpar_lines(run.stderr)
    assert len(warning) == 1, run.stderr
    assert "--gather total, squared" in warning[0] and "never assigns" in warning[0]
    assert ip.user_ns["total"] == [None] * 3


@pytest.mark.timeout(60)
@pytest.mark.parametrize("body", [
    "total = x\nx",
    "for total in range(x):\n    pass\nx",
    "import math as total\nx",
    "def total():\n    return 1\nx",
    "try:\n    1 / 0\nexcept ZeroDivisionError as total:\n    pass\nx",
    "if (total := x):\n    pass\nx",
    "[(total := v) for v in range(3)]\nx",
    "globals()['total'] = x\nx",
], ids=["assign", "for", "import", "def", "except", "walrus", "walrus_in_comprehension", "globals"])
def test_gather_of_a_bound_name_does_not_warn(ip, run_cell, body):
    run = run_cell(f"%%azpar -q -o r --gather total for x in range(2):\n{body}")
    assert run.success, run.error
    assert not _azpar_lines(run.stderr), run.stderr


@pytest.mark.timeout(60)
def test_a_body_that_changes_notebook_variables_warns_and_the_notebook_keeps_them(ip, run_cell):
    """The loop written for one process (append to a list, add to a total): in parallel the changes
    stay on the workers, so the cell says so instead of leaving the user with Nones in silence."""
    ip.run_cell("results = []\ntotal = 0\nseen = {}")
    run = run_cell("%%azpar -q -o r for x in range(4):\nresults.append(x * x)\nseen[x] = True\ntotal += x")
    assert run.success, run.error
    assert ip.user_ns["r"] == [None] * 4
    assert (ip.user_ns["results"], ip.user_ns["total"], ip.user_ns["seen"]) == ([], 0, {})
    warning = _azpar_lines(run.stderr)
    assert len(warning) == 1, run.stderr
    assert "changes results, seen, total (notebook variables)" in warning[0]
    assert "will not change" in warning[0] and "last expression" in warning[0]


@pytest.mark.timeout(60)
def test_a_body_declaring_a_global_warns_that_the_notebooks_will_not_change(ip, run_cell):
    """`global best` in the body (or in a function it defines) says "set the notebook's best", which a loop
    run here does; each iteration set its worker's, and the cell said nothing while the notebook kept its old
    value. --gather brings the name back, so a gathered name is not warned of."""
    ip.run_cell("best = -1")
    run = run_cell("%%azpar -q -o r for x in range(3):\nglobal best\nbest = x\nx")
    assert run.success, run.error
    assert ip.user_ns["r"] == [0, 1, 2] and ip.user_ns["best"] == -1
    (warning,) = _azpar_lines(run.stderr)
    assert "declares global best: an iteration sets best on its worker" in warning, warning
    assert "--gather best binds each iteration's best as a list" in warning, warning
    inner = run_cell("%%azpar -q -o r for x in range(3):\ndef bump():\n    global calls\n    calls = x\nbump()\nx")
    assert inner.success, inner.error
    (warning,) = _azpar_lines(inner.stderr)
    assert "declares global calls" in warning, warning
    reads = run_cell("%%azpar -q -o r for x in range(3):\nglobal best\nbest + x")  # read only: nothing lost
    assert reads.success and not _azpar_lines(reads.stderr), reads.stderr
    gathered = run_cell("%%azpar -q -o r --gather best for x in range(3):\nglobal best\nbest = x * 10\nx")
    assert gathered.success and not _azpar_lines(gathered.stderr), gathered.stderr
    assert ip.user_ns["best"] == [0, 10, 20]


@pytest.mark.timeout(60)
def test_a_helper_module_edited_since_its_import_is_named_and_runs_as_it_is_now(ip, run_cell, tmp_path, monkeypatch):
    """A helper beside the notebook, edited and not reloaded: the workers ran the new file and the
    notebook the old code, so the cell's values differed from the same loop run here, in silence."""
    helper = tmp_path / "helper_edited.py"
    helper.write_text("def f(v):\n    return v + 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert ip.run_cell("import helper_edited").success
        first = run_cell("%%azpar -q -o r for x in range(3):\nhelper_edited.f(x)")
        assert first.success and not _azpar_lines(first.stderr), first.stderr
        helper.write_text("def f(v):\n    return v + 100\n")
        edited = run_cell("%%azpar -q -o r for x in range(3):\nhelper_edited.f(x)")
        assert edited.success, edited.error
        assert ip.user_ns["r"] == [100, 101, 102]  # the file as it is now
        (warning,) = _azpar_lines(edited.stderr)
        assert "helper_edited changed on disk since this kernel imported it" in warning, warning
        assert ip.run_cell("import importlib\nimportlib.reload(helper_edited)").success
        again = run_cell("%%azpar -q -o r for x in range(3):\nhelper_edited.f(x)")
        assert again.success and not _azpar_lines(again.stderr), again.stderr
    finally:
        sys.modules.pop("helper_edited", None)
        ip.user_ns.pop("helper_edited", None)


@pytest.mark.timeout(60)
def test_a_body_that_rebuilds_a_notebook_frame_from_itself_warns(ip, run_cell):
    """`df = pd.concat([df, row])`, the pandas way to grow a frame in a loop, and `best = max(best, x)`:
    in one process each iteration builds on the last; in parallel each starts from the notebook's value
    and the notebook's never changes. The cell said nothing; it now warns. The body's value is already its
    last expression, so the warning says where each iteration starts, not to make it so."""
    pandas = pytest.importorskip("pandas")
    ip.run_cell("import pandas as pd\ndf = pd.DataFrame({'x': []})\nbest = 0")
    run = run_cell("%%azpar -q -o r for x in range(3):\ndf = pd.concat([df, pd.DataFrame({'x': [x]})])\n"
                   "best = max(best, x)\nlen(df)")
    assert run.success, run.error
    assert ip.user_ns["r"] == [1, 1, 1] and len(ip.user_ns["df"]) == 0 and ip.user_ns["best"] == 0
    assert isinstance(ip.user_ns["df"], pandas.DataFrame)
    warning = _azpar_lines(run.stderr)
    assert len(warning) == 1, run.stderr
    assert "rebinds df, best (notebook variables) from its own value" in warning[0], warning
    assert "will not change" in warning[0] and "last expression" not in warning[0], warning


@pytest.mark.timeout(60)
@pytest.mark.parametrize("body", [
    "results = []\nresults.append(x)\nresults",  # its own list
    "total = 10\ntotal += x\ntotal",  # its own number
    "row = [x]\nrow.append(1)\nrow",  # a name the notebook does not have
    "import sys\nsys.path.append('.')\nx",  # configuring a module on the worker
    "def f(acc):\n    acc.append(1)\n    return acc\nf([x])",  # a nested function's own names
], ids=["own_list", "own_number", "not_in_notebook", "module", "nested"])
def test_a_body_changing_only_its_own_names_does_not_warn(ip, run_cell, body):
    ip.run_cell("results = []\ntotal = 0\nrow = None")
    run = run_cell(f"%%azpar -q -o r for x in range(2):\n{body}")
    assert run.success, run.error
    assert not _azpar_lines(run.stderr), run.stderr


@pytest.mark.timeout(60)
def test_comprehension_variable_is_not_a_body_binding(ip, run_cell):
    run = run_cell("%%azpar -q -o r --gather v for x in range(2):\n[v for v in range(x)]")
    assert run.success, run.error
    assert "--gather v" in run.stderr


# ------------------------------------------------------------------------- a line read again


def test_a_line_read_again_gives_values_the_last_run_could_not_change():
    """parse_options keeps what each line gave, for the cell run again: a run that changes its
    values (a list of --inputs, an attribute) changes its own copy, not the next run's."""
    from azpar_magic.magics.cell import azpar_cell
    from azpar_magic.magics.options import parse_options

    line = "-o r --inputs 'data/*.csv' --inputs b.txt --workers 2"
    first = parse_options(azpar_cell.parser, line)
    assert first.inputs == ["data/*.csv", "b.txt"] and first.workers == "2" and first.output == "r"
    first.inputs.append("c.txt")
    first.inputs[0] = "changed"
    first.workers = 7
    again = parse_options(azpar_cell.parser, line)
    assert again.inputs == ["data/*.csv", "b.txt"] and again.workers == "2"
    assert again.inputs is not first.inputs
