"""The magic line reaches azpar as typed: IPython's ``{name}``/``$name`` expansion from the
notebook namespace must not rewrite it (issue 13, item 2).

Each test first defines the placeholder names in the namespace, as a user who ran the
sequential loop before has them, and goes through ``ip.run_cell`` (where IPython expands
magic lines), so the expansion would happen if the magic allowed it.
"""

from __future__ import annotations

import os

import pytest
from IPython.core.error import UsageError

import azpar_magic

from .helpers_corpus import run_cell_job


@pytest.fixture
def parts(tmp_path, monkeypatch):
    """part-0.csv .. part-2.csv with different contents, in the notebook's folder."""
    monkeypatch.chdir(tmp_path)
    for i in range(3):
        (tmp_path / f"part-{i}.csv").write_text(f"content of part {i}\n")
    return tmp_path


@pytest.mark.timeout(120)
def test_per_iteration_inputs_placeholder_is_not_expanded(ip, run_cell, parts):
    """`i` exists (a sequential loop ran first): each iteration still gets its own file."""
    ip.user_ns["i"] = 2
    run = run_cell("%%azpar -q -o r --inputs 'part-{i}.csv' for i in range(3):\n"
                   "import os\n"
                   "names = sorted(os.listdir('inputs'))\n"
                   "(names, open(os.path.join('inputs', names[0])).read())")
    assert run.success, run.error
    assert ip.user_ns["r"] == [([f"part-{i}.csv"], f"content of part {i}\n") for i in range(3)]


@pytest.mark.timeout(120)
def test_dollar_placeholder_in_outputs_to_is_not_expanded(ip, run_cell, parts):
    """`$dest` stays the folder name typed, whatever `dest` holds in the namespace."""
    ip.user_ns["dest"] = "elsewhere"
    run, job = run_cell_job(run_cell, "%%azpar -q -o r --outputs '*.txt' --outputs-to \"out$dest\" "
                                      "for k in range(2):\nopen('k.txt', 'w').write(str(k))\nk")
    assert run.success, run.error
    assert (parts / "out$dest").is_dir() and not (parts / "outelsewhere").exists()
    files = [path for i in range(2) for path in job.files.files(i)]
    assert all(os.path.commonpath([path, str(parts / "out$dest")]) == str(parts / "out$dest") for path in files)
    assert sorted(open(path).read() for path in files) == ["0", "1"]


def test_combine_expression_is_not_expanded(ip, run_cell):
    """`{min(rows), max(rows)}` is a set display in the lambda, not a placeholder."""
    ip.user_ns["rows"] = [1, 100]
    run = run_cell("%%azpar -q -o r --combine 'lambda rows: {min(rows), max(rows)}' for x in range(5):\nx")
    assert run.success, run.error
    assert ip.user_ns["r"] == {0, 4}


def test_loop_header_strings_are_not_expanded(ip, run_cell):
    ip.user_ns["n"] = 7
    run = run_cell("%%azpar -q -o r for s in ['$n', '{n}']:\ns")
    assert run.success, run.error
    assert ip.user_ns["r"] == ["$n", "{n}"]


def test_loop_header_dollar_name_is_not_rewritten(ip, run_cell):
    """`data[$n]` is not Python: refused as typed, never silently read as data[1]."""
    ip.user_ns["n"] = 1
    ip.user_ns["data"] = {1: ["wrong"]}
    ip.user_ns.pop("r", None)
    run = run_cell("%%azpar -q -o r for x in data[$n]:\nx")
    assert not run.success
    assert isinstance(run.error, UsageError), run.error
    assert "$n" in str(run.error)
    assert "r" not in ip.user_ns


@pytest.mark.timeout(60)
def test_line_magic_argument_is_not_expanded(ip, run_cell):
    """`%azpar logs {jid}` looks for a job named `{jid}`, not for the value of `jid`."""
    job = azpar_magic.run("for x in range(2)", "print('hello', x)", {})
    job.result(timeout=30)
    ip.user_ns["jid"] = job.id
    as_typed = run_cell("%azpar logs {jid}")
    assert not as_typed.success
    assert isinstance(as_typed.error, UsageError) and "{jid}" in str(as_typed.error)
    assert "hello 0" not in as_typed.stdout
    by_id = run_cell(f"%azpar logs {job.id}")  # the id itself still works
    assert by_id.success, by_id.error
    assert "hello 0" in by_id.stdout
