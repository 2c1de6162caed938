"""An unchanged capture is reused, a changed one never is (issue 16, target d').

Running the same cell again over an unchanged large array must not pickle and hash it again
(nor write or keep another copy); any change to what the body reads -- an array mutated in
place, a name rebound, a dict or list changed -- must be seen and give the new results.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
import types

import numpy as np
import pytest

import azpar_magic
from azpar_magic import jobstore
from azpar_magic.run import capture, fingerprint


@pytest.fixture
def ns(monkeypatch):
    """A fresh __main__ module, as a notebook's namespace is."""
    module = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", module)
    return module.__dict__


@pytest.fixture
def serialized(monkeypatch):
    """How many times the capture serialised a namespace (pickled it whole)."""
    calls = []
    original = capture.serialize_inspected

    def counting(namespace):
        calls.append(sorted(namespace))
        return original(namespace)

    monkeypatch.setattr(capture, "serialize_inspected", counting)
    return calls


def _kept_namespaces() -> set[str]:
    folder = jobstore.store_root() / jobstore.NAMESPACES
    return set(os.listdir(folder)) if folder.is_dir() else set()


def _written() -> int | None:
    """Bytes this process passed to write() so far (Linux /proc/self/io), or None."""
    try:
        with open("/proc/self/io") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("wchar:"))
    except (OSError, StopIteration, ValueError):
        return None


def _run(ns, body="float(big[x].sum())", loop="for x in range(4)"):
    job = azpar_magic.run(loop, body, ns, workers=1)
    out = job.result()
    jobstore.flush()  # the store keeps the namespace on its writer thread: done before the next cell
    return job, out


# ---------------------------------------------------------------------------- end to end


def test_an_identical_second_cell_reuses_the_capture_and_moves_nothing(ns, serialized):
    ns["big"] = np.random.default_rng(1).random((4, 500_000))  # 16 MB
    expected = [float(ns["big"][x].sum()) for x in range(4)]
    first, out = _run(ns)
    assert out == expected and len(serialized) == 1
    kept = _kept_namespaces()
    written = _written()

    second, out = _run(ns)

    assert out == expected
    assert len(serialized) == 1, "the unchanged array was pickled again"
    assert second.capture.sha256 == first.capture.sha256 and second.capture.size == first.capture.size
    assert _kept_namespaces() == kept, "a new namespace file in the job store"
    if written is not None:
        assert _written() - written < 2_000_000, "the namespace bytes were written again"
    assert second.capture.data == b""  # the job keeps no copy


def test_a_capture_reused_from_the_store_is_staged_again_after_another_namespace(ns, serialized):
    """The pool keeps the last staged namespace only: a cell in between stages another, and the identical
    cell after it stages the bytes the job store kept (a memory-mapped file), not a fresh pickle. Staging
    them failed once (TypeError: Object of type mmap is not JSON serializable)."""
    ns["big"] = np.random.default_rng(3).random((4, 100_000))
    expected = [float(ns["big"][x].sum()) for x in range(4)]
    assert _run(ns)[1] == expected
    other = {"small": np.arange(10)}
    assert _run(other, body="int(small[x])")[1] == [0, 1, 2, 3]
    _, out = _run(ns)
    assert out == expected
    assert len(serialized) == 2, "the unchanged array was pickled again"


def test_an_array_mutated_in_place_is_captured_again(ns, serialized):
    ns["big"] = np.random.default_rng(2).random((4, 50_000))
    first, _ = _run(ns)
    ns["big"][2, 17] += 1.0  # same object, same shape, one value changed
    second, out = _run(ns)
    assert len(serialized) == 2
    assert second.capture.sha256 != first.capture.sha256
    assert out == [float(ns["big"][x].sum()) for x in range(4)]


def test_a_rebound_name_is_captured_again(ns, serialized):
    ns["big"] = np.arange(40.0).reshape(4, 10)
    _run(ns)
    ns["big"] = ns["big"] * 2
    _, out = _run(ns)
    assert len(serialized) == 2
    assert out == [float((np.arange(40.0).reshape(4, 10) * 2)[x].sum()) for x in range(4)]


def test_a_mutated_dict_and_list_are_captured_again(ns, serialized):
    # (a table large enough to be worth reusing: small namespaces are simply pickled again)
    ns["cfg"] = {"scale": 2, "offsets": [10, 20, 30, 40], "table": list(range(30_000))}
    body = "cfg['scale'] * x + cfg['offsets'][x]"
    _, out = _run(ns, body)
    assert out == [10, 22, 34, 46]
    ns["cfg"]["offsets"][1] = 100  # a list inside the dict, in place
    _, out = _run(ns, body)
    assert out == [10, 102, 34, 46]
    ns["cfg"]["scale"] = 3  # the dict itself, in place
    _, out = _run(ns, body)
    assert out == [10, 103, 36, 49]
    assert len(serialized) == 3
    _, out = _run(ns, body)  # unchanged since: reused
    assert out == [10, 103, 36, 49] and len(serialized) == 3


def test_a_notebook_function_is_reused_until_it_or_its_default_changes(ns, serialized):
    ns["big"] = np.random.default_rng(4).random((4, 50_000))
    body = "helper(big[x])"
    exec("def helper(row, extra=[0]):\n    return float(row.sum()) + extra[0]\n", ns)
    sums = [float(ns["big"][x].sum()) for x in range(4)]
    assert _run(ns, body)[1] == sums
    assert _run(ns, body)[1] == sums and len(serialized) == 1  # reused
    exec("def helper(row, extra=[0]):\n    return float(row.sum()) + extra[0] + 1\n", ns)  # redefined
    assert _run(ns, body)[1] == [v + 1 for v in sums] and len(serialized) == 2
    ns["helper"].__defaults__[0][0] = 10  # its mutable default, changed in place
    assert _run(ns, body)[1] == [v + 11 for v in sums] and len(serialized) == 3
    ns["helper"].note = "an attribute"
    assert _run(ns, body)[1] == [v + 11 for v in sums] and len(serialized) == 4
    assert _run(ns, body)[1] == [v + 11 for v in sums] and len(serialized) == 4  # unchanged since


def test_a_redefined_notebook_function_is_seen(ns, serialized):
    exec("def helper(v):\n    return v + 1\n", ns)
    body = "helper(x)"
    assert _run(ns, body)[1] == [1, 2, 3, 4]
    exec("def helper(v):\n    return v + 2\n", ns)  # redefined: must be seen, so never fingerprinted
    assert _run(ns, body)[1] == [2, 3, 4, 5]
    assert len(serialized) == 2


# ---------------------------------------------------------------------------- the fingerprint


def fp(**values):
    return fingerprint.fingerprint(values)


def test_equal_content_gives_equal_fingerprints_and_any_change_another():
    a = np.arange(12, dtype="f8").reshape(3, 4)
    assert fp(a=a) == fp(a=a.copy()) is not None
    assert fp(a=a) != fp(b=a)  # the name is part of it
    assert fp(a=a) != fp(a=a.astype("f4"))
    assert fp(a=a) != fp(a=a.reshape(4, 3))
    assert fp(a=a) != fp(a=np.asfortranarray(a))  # pickled in another order
    changed = a.copy()
    changed[1, 1] = -0.0 if changed[1, 1] == 0 else 0.0
    assert fp(a=a) != fp(a=changed)
    for one, other in [(1, 1.0), (1, True), ("1", b"1"), ([1, 2], (1, 2)), ({1: 2}, {1: 2.0}), (0.0, -0.0)]:
        assert fp(v=one) != fp(v=other), (one, other)
    assert fp(v={"k": [1, {2, 3}]}) == fp(v={"k": [1, {2, 3}]})


def test_changes_to_a_large_array_are_seen_whatever_their_pattern():
    """Large buffers take the fast path (CRC-32 per part, XOR of the words): changes a checksum
    is weak against in other settings (sign flips, swaps, equal changes at several places)."""
    a = np.random.default_rng(3).random(4_000_000)  # 32 MB: split across CPUs
    before = fp(a=a)
    for change in (
        lambda v: v.__setitem__(slice(0, 2), -v[0:2]),  # two sign bits flipped: their XOR cancels
        lambda v: v.__setitem__([10, 3_000_000], v[[3_000_000, 10]]),  # two values swapped
        lambda v: v.sort(),
        lambda v: v.__setitem__(slice(None, None, 4096), 0.5),  # the same value at many places
    ):
        changed = a.copy()
        change(changed)
        assert fp(a=changed) != before
    zeros = np.zeros((512, 512))
    ones = zeros.copy()
    ones[0:2, 0:2] = 1.0  # a block of equal changes in a zero array
    assert fp(z=zeros) != fp(z=ones)


def test_a_namespace_that_cannot_be_fingerprinted_costs_no_pass_over_its_arrays(monkeypatch):
    read = []
    monkeypatch.setattr(fingerprint, "buffer_digest", lambda view: read.append(len(view)) or b"")
    big = np.zeros(1_000_000)
    assert fp(a=big, f=lambda: 1) is None  # "a" is walked first, the lambda then refuses
    assert read == []
    assert fp(a=big) is not None and read == [big.nbytes]


def test_aliasing_is_part_of_the_fingerprint():
    shared = [1, 2]
    assert fp(a=shared, b=shared) != fp(a=shared, b=copy.copy(shared))
    assert fp(v=[shared, shared]) != fp(v=[shared, [1, 2]])


def test_what_cannot_be_fingerprinted_exactly_is_not():
    class Point:
        pass

    assert fp(v=Point()) is None
    assert fp(v=lambda: 1) is None  # its globals are this test module's, not __main__'s: dill copies them

    def outer():
        captured = [1]
        return lambda: captured

    assert fp(v=outer()) is None  # a closure
    assert fp(v=np.array([object()])) is None
    assert fp(v=np.arange(20.0)[::2]) is None  # a strided view
    assert fp(v=[[1]] * 300_000) is None  # too many objects to walk: serialising is as cheap
    assert fp(m=np, f=math.sqrt, s=os.path.join, t=np.ndarray) is not None  # travel by name


# ---------------------------------------------------------------------------- the module table


def test_a_file_saved_beside_the_notebook_does_not_rebuild_the_module_table(tmp_path, monkeypatch):
    """The notebook's folder is on sys.path; saving the notebook used to cost the next cell a
    rebuild of the module-to-distribution table (0.5-0.7 s). A pip install must still rebuild it."""
    monkeypatch.syspath_prepend(str(tmp_path))
    capture._module_to_distributions()
    misses = capture._module_table.cache_info().misses
    (tmp_path / "analysis.ipynb").write_text("{}")
    os.utime(tmp_path, ns=(time.time_ns(), time.time_ns() + 10**9))  # the folder's mtime surely moved
    capture._module_to_distributions()
    assert capture._module_table.cache_info().misses == misses
    (tmp_path / "newpkg-1.0.dist-info").mkdir()
    os.utime(tmp_path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    capture._module_to_distributions()
    assert capture._module_table.cache_info().misses == misses + 1


def test_a_large_table_of_atoms_is_reused_until_a_key_or_value_changes(ns, serialized):
    # (guard) A dict of a million atoms is told apart by its kinds and repr at C speed, without a list of
    # its pairs (0.3 s a cell before): a changed value, key, or kind of value (1 and 1.0 and True) is seen.
    ns["table"] = {i: str(i) for i in range(50_000)}
    body = "table[x] + str(type(table.get(-1)).__name__)"
    assert _run(ns, body)[1] == ["0NoneType", "1NoneType", "2NoneType", "3NoneType"]
    assert _run(ns, body)[1] == ["0NoneType", "1NoneType", "2NoneType", "3NoneType"] and len(serialized) == 1
    ns["table"][2] = "two"
    assert _run(ns, body)[1][2] == "twoNoneType" and len(serialized) == 2
    for stand_in, name in ((1, "int"), (1.0, "float"), (True, "bool")):
        ns["table"][-1] = stand_in
        assert _run(ns, body)[1][0] == f"0{name}"
    assert len(serialized) == 5
    del ns["table"][-1]
    ns["table"][-2] = "x"  # another key, the same count of entries
    assert _run(ns, body)[1][0] == "0NoneType" and len(serialized) == 6


def test_an_unchanged_dataframe_is_reused_and_any_change_to_it_is_seen(ns, serialized):
    # A DataFrame is fingerprinted as pickling writes it (its reduction: blocks by their buffers, the
    # column and index labels, attrs): an unchanged one was pickled again at every cell (~70 ms at 40 MB).
    pd = pytest.importorskip("pandas")
    ns["df"] = pd.DataFrame(np.arange(40_000.0).reshape(10_000, 4), columns=["a", "b", "c", "d"])
    ns["df"]["label"] = [f"r{i % 7}" for i in range(10_000)]
    body = "(float(df.iloc[:, x].sum()), list(df.columns)[x], df.attrs.get('unit'), df.index[0], df['label'].iloc[3])"

    def expected():
        df = ns["df"]
        return [(float(df.iloc[:, x].sum()), list(df.columns)[x], df.attrs.get("unit"), df.index[0],
                 df["label"].iloc[3]) for x in range(4)]

    assert _run(ns, body)[1] == expected()
    assert _run(ns, body)[1] == expected() and len(serialized) == 1  # unchanged: reused
    changes = [
        lambda df: df.iloc.__setitem__((17, 2), -1.0),  # one value, in place
        lambda df: setattr(df, "columns", ["a", "B", "c", "d", "label"]),  # a label
        lambda df: df.attrs.__setitem__("unit", "m"),  # attrs
        lambda df: setattr(df, "index", df.index + 1),  # the index
        lambda df: df.loc.__setitem__((5, "label"), "changed"),  # a string in an object column
        lambda df: df.__setitem__("a", df["a"].astype("float32")),  # a dtype
    ]
    for number, change in enumerate(changes, start=2):
        change(ns["df"])
        assert _run(ns, body)[1] == expected(), number
        assert len(serialized) == number, number
    # A copy with the same content: right either way, and reused where pandas reduces a copy as it does
    # the original (pandas 3; a copy on pandas 2 differs in how its blocks are laid out, and is pickled).
    ns["df"] = ns["df"].copy()
    assert _run(ns, body)[1] == expected()
    assert len(serialized) == len(changes) + (1 if int(pd.__version__.split(".")[0]) >= 3 else 2)
