"""A body that reaches notebook names through ``globals()`` (issue 13, item 7): a literal
``globals()["name"]`` is captured like a plain read; any other use is warned about before
submission, naming --export; and a KeyError from the cell's own ``globals()[...]`` on a
worker says the name was not captured and how to ship it."""

from __future__ import annotations

import ast

import pytest

from azpar_magic.run import capture


@pytest.fixture
def notebook(ip):
    ip.run_cell("threshold = 7\nsettings = {'scale': 3}")
    yield ip
    for name in ("threshold", "settings", "r", "key"):
        ip.user_ns.pop(name, None)


@pytest.mark.timeout(60)
def test_a_literal_globals_lookup_is_captured(notebook, run_cell):
    run = run_cell("%%azpar -q --workers 2 -o r for x in range(3):\n"
                   "x * globals()['threshold'] + globals().get('settings')['scale']")
    assert run.success, run.error
    assert notebook.user_ns["r"] == [3, 10, 17]
    assert "warning" not in run.stderr, run.stderr


@pytest.mark.timeout(60)
def test_a_computed_globals_lookup_warns_before_and_names_export_after(notebook, run_cell):
    notebook.user_ns["key"] = "thresh" + "old"
    run = run_cell("%%azpar -q --workers 2 -o r for x in range(2):\nname = 'thresh' + 'old'\nx + globals()[name]")
    assert "uses globals() or vars()" in run.stderr and "--export NAME" in run.stderr, run.stderr
    assert not run.success
    message = str(run.error)
    assert "KeyError" in message and "'threshold'" in message, message
    assert "was not captured" in message and "--export threshold" in message, message
    # With --export the same cell works.
    run = run_cell("%%azpar -q --workers 2 --export threshold -o r for x in range(2):\n"
                   "name = 'thresh' + 'old'\nx + globals()[name]")
    assert run.success, run.error
    assert notebook.user_ns["r"] == [7, 8]


@pytest.mark.timeout(60)
def test_a_key_error_of_the_bodys_own_dict_gets_no_hint(notebook, run_cell):
    run = run_cell("%%azpar -q --workers 2 -o r for x in range(2):\nsettings['missing']")
    assert not run.success
    assert "KeyError" in str(run.error) and "--export" not in str(run.error), str(run.error)


def test_namespace_lookups_finds_literal_and_dynamic_uses():
    def lookups(source: str):
        return capture.namespace_lookups(ast.parse(source))

    assert lookups("globals()['a'] + vars()['b'] + globals().get('c', 0)") == ({"a", "b", "c"}, False)
    assert lookups("globals()[k]") == (set(), True)
    assert lookups("g = globals()\ng['a']") == (set(), True)
    assert lookups("vars(obj)['a']\nd['x']") == (set(), False)  # vars(obj) is not the namespace
