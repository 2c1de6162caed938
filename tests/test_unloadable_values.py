"""A value computed on a worker that cannot be loaded in the kernel fails its own iteration,
saying so and why, not every iteration of its task as "could not run" (issue 13, item 7)."""

from __future__ import annotations

import pickle

import pytest

import azpar_magic
from azpar_magic import worker
from azpar_magic.jobs import results

# Iteration 4 returns an instance of a class from a module that exists only in the worker
# process; iteration 7 an object whose rebuilding raises anywhere but in the process that
# made it. Chunks of 3: tasks [0, 1, 2], [3, 4, 5], [6, 7, 8].
SETUP = '''
import os

def rebuild_fragile(pid):
    if pid != os.getpid():
        raise RuntimeError("a Fragile only loads in the process that made it")
    return Fragile()

class Fragile:
    def __reduce__(self):
        return (rebuild_fragile, (os.getpid(),))
'''
BODY = '''import sys, types
if x == 4:
    mod = types.ModuleType("azpar_worker_only")
    exec("class Thing:\\n    pass", mod.__dict__)
    mod.Thing.__module__ = "azpar_worker_only"
    sys.modules["azpar_worker_only"] = mod
    value = mod.Thing()
elif x == 7:
    value = Fragile()
else:
    value = x * 10
value'''


@pytest.fixture
def notebook(ip):
    ip.run_cell(SETUP)
    yield ip
    for name in ("rebuild_fragile", "Fragile", "r"):
        ip.user_ns.pop(name, None)


@pytest.mark.timeout(120)
def test_only_the_iterations_whose_values_cannot_be_loaded_fail(notebook, run_cell):
    run = run_cell(f"%%azpar -q --workers 2 --chunk-size 3 --errors pass -o r for x in range(9):\n{BODY}")
    assert run.success, run.error
    r = notebook.user_ns["r"]
    assert [v for i, v in enumerate(r) if i not in (4, 7)] == [0, 10, 20, 30, 50, 60, 80]
    job = azpar_magic.jobs()[-1]
    failures = job.failures
    assert sorted(failures) == [4, 7]
    for index, why in ((4, "No module named 'azpar_worker_only'"),
                       (7, "a Fragile only loads in the process that made it")):
        failure = failures[index]
        assert failure.kind == "user", failure
        assert "could not be loaded here" in failure.message and why in failure.message, failure.message
        assert "could not run" not in failure.message
        assert isinstance(r[index], Exception) and why in str(r[index])


@pytest.mark.timeout(120)
def test_under_errors_stop_the_first_unloadable_value_is_named(notebook, run_cell):
    run = run_cell(f"%%azpar -q --workers 2 --chunk-size 3 -o r for x in range(9):\n{BODY}")
    assert not run.success
    message = str(run.error)
    assert "iteration 4" in message and "could not be loaded here" in message, message
    assert "azpar_worker_only" in message and "could not run" not in message, message
    partial = azpar_magic.jobs()[-1].partial_results()
    assert partial[3] == 30 and partial[5] == 50, partial  # the failing value's task mates are kept


def test_a_stand_in_inside_containers_and_attributes_fails_only_its_value():
    """The lenient decoding finds a value that could not be built wherever it sits in an
    iteration's value (a dict in a list, an attribute), and leaves the others whole."""

    class Box:
        def __init__(self, inner):
            self.inner = inner

    def broken_class():
        raise ImportError("no such class here")

    class Broken:
        def __reduce__(self):
            return (broken_class, ())

    values = [1, [{"a": Broken()}], Box(Broken()), "fine", (2, 3)]
    encoded = ["all", *worker.dumps(values)]
    decoded, problems = results.decode_each(encoded, len(values))
    assert sorted(problems) == [1, 2]
    assert all("no such class here" in why for why in problems.values())
    assert decoded[0] == 1 and decoded[3] == "fine" and decoded[4] == (2, 3)
    # The fast path is unchanged when everything loads.
    good = ["all", "pickle", pickle.dumps([1, 2, 3])]
    assert results.decode_each(good, 3) == ([1, 2, 3], {})
