"""The iterable's items are taken with a bound (issue 13, item 6): an endless or huge
iterable is refused with a UsageError that says how to raise the bound, before anything is
submitted; up to the bound everything runs as before."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

import azpar_magic
from azpar_magic.run import engine
from azpar_magic.run.parsing import parse_cell


def _refusal(run) -> str:
    assert not run.success
    assert isinstance(run.error, UsageError), f"expected a UsageError, got {run.error!r}"
    message = str(run.error)
    for fragment in ("max_items", "AZPAR_MAX_ITEMS", "Nothing was submitted"):
        assert fragment in message, message
    return message


@pytest.fixture
def no_config(monkeypatch, tmp_path):
    """No user config file, no AZPAR_MAX_ITEMS: the default bound applies."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("AZPAR_MAX_ITEMS", raising=False)
    return tmp_path / "config"


@pytest.mark.timeout(60)
def test_an_endless_iterable_is_refused_past_the_bound(ip, run_cell, no_config, monkeypatch):
    monkeypatch.setenv("AZPAR_MAX_ITEMS", "1000")
    before = len(azpar_magic.jobs())
    ip.user_ns.pop("r", None)
    message = _refusal(run_cell("%%azpar -q -o r for x in __import__('itertools').count():\nx"))
    assert "more than 1,000 items" in message, message
    assert "r" not in ip.user_ns
    assert len(azpar_magic.jobs()) == before, "a job was recorded"


@pytest.mark.timeout(60)
def test_a_huge_range_is_refused_at_once_with_the_default_bound(ip, run_cell, no_config):
    # Before the bound: OverflowError from list(range(10**20)), with no word on what to do.
    message = _refusal(run_cell("%%azpar -q -o r for x in range(10**20):\nx"))
    assert f"more than {engine.MAX_ITEMS:,} items" in message, message
    message = _refusal(run_cell(f"%%azpar -q -o r for x in range({engine.MAX_ITEMS + 1}):\nx"))


@pytest.mark.timeout(60)
def test_exactly_the_bound_runs_and_one_more_is_refused(ip, run_cell, no_config, monkeypatch):
    monkeypatch.setenv("AZPAR_MAX_ITEMS", "5")
    run = run_cell("%%azpar -q -o r for x in (i for i in range(5)):\nx * 2")
    assert run.success, run.error
    assert ip.user_ns["r"] == [0, 2, 4, 6, 8]
    _refusal(run_cell("%%azpar -q -o r for x in (i for i in range(6)):\nx"))
    _refusal(run_cell("%%azpar -q -o r for x in list(range(6)):\nx"))


@pytest.mark.timeout(60)
def test_the_bound_is_raised_in_a_config_file(ip, run_cell, no_config):
    (no_config / "azpar").mkdir(parents=True)
    (no_config / "azpar" / "config.toml").write_text("max_items = 3\n")
    _refusal(run_cell("%%azpar -q -o r for x in range(4):\nx"))
    (no_config / "azpar" / "config.toml").write_text("max_items = 4\n")
    run = run_cell("%%azpar -q -o r for x in range(4):\nx")
    assert run.success, run.error
    assert ip.user_ns["r"] == [0, 1, 2, 3]


@pytest.mark.timeout(60)
def test_the_python_api_refuses_past_the_bound_too(no_config, monkeypatch):
    monkeypatch.setenv("AZPAR_MAX_ITEMS", "10")
    with pytest.raises(ValueError, match="max_items"):
        azpar_magic.run("for x in itertools.count():", "x", {"itertools": __import__("itertools")})


def test_a_dataframe_like_length_is_not_taken_for_the_item_count():
    """Only built-in containers are trusted to yield len() items: another object's len may
    count something else (a DataFrame's rows, while it iterates over its columns)."""

    class Columns:
        def __len__(self):
            return 10 ** 9

        def __iter__(self):
            return iter(["a", "b"])

    cell = parse_cell(" for c in cols:", "c")
    assert engine.materialize(cell, {"cols": Columns()}, max_items=10) == ["a", "b"]


def _third_step_raises(monkeypatch, exc: type[BaseException]) -> list[int]:
    """Make the third step of taking items raise ``exc``; the sizes of the steps asked are returned."""
    calls: list[int] = []
    real = engine.itertools.islice

    def step(iterator, n):
        calls.append(n)
        if len(calls) == 3:
            raise exc
        return real(iterator, n)

    monkeypatch.setattr(engine.itertools, "islice", step)
    return calls


def test_items_are_taken_in_steps_so_ctrl_c_can_get_through(monkeypatch):
    """An iterator that raises KeyboardInterrupt (as Ctrl-C does between steps) stops the
    taking with a message that nothing was submitted; what was taken is dropped."""
    calls = _third_step_raises(monkeypatch, KeyboardInterrupt)
    cell = parse_cell(" for x in itertools.count():", "x")
    with pytest.raises(KeyboardInterrupt, match="Nothing was submitted"):
        engine.materialize(cell, {"itertools": __import__("itertools")}, max_items=10 ** 9)
    assert calls[:2] == [engine._TAKE, engine._TAKE]


def test_running_out_of_memory_while_taking_items_is_a_submit_error_naming_it(monkeypatch):
    """MemoryError while items are taken (an address space capped below what they need) is
    said in one paragraph: how far it got, what to do, and that nothing was submitted."""
    _third_step_raises(monkeypatch, MemoryError)
    cell = parse_cell(" for x in itertools.count():", "x")
    with pytest.raises(engine.SubmitError) as raised:
        engine.materialize(cell, {"itertools": __import__("itertools")}, max_items=10 ** 9)
    said = str(raised.value)
    assert f"ran out of memory while taking the items of `itertools.count()` (some {2 * engine._TAKE:,} so far)" in said
    assert "itertools.islice" in said and said.endswith("Nothing was submitted.")
