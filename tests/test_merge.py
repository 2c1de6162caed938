"""Unit tests of merge.py: error policies and combine modes (pure functions)."""

import collections
import warnings

import numpy as np
import pandas as pd
import pytest

from azpar_magic.errors import CombineError, CombineWarning
from azpar_magic.jobs.merge import check_dict_keys, combine, select


def test_select_policies():
    items, values = ["a", "b", "c"], [1, None, 3]
    err = ValueError("boom")
    assert select(values, items, {1: err}, "remove") == (["a", "c"], [1, 3])
    kept_items, kept = select(values, items, {1: err}, "pass")
    assert kept_items == items and kept == [1, err, 3]
    assert select(values, items, {}, "stop") == (items, values)
    with pytest.raises(ValueError):
        select(values, items, {1: err}, "stop")


def test_combine_modes():
    assert combine([1, 2, 3], [0, 1, 2], "list") == [1, 2, 3]
    assert combine([1, 2], ["a", "b"], "dict") == {"a": 1, "b": 2}
    assert combine([1, 2, 3], [0, 1, 2], "sum") == 6
    assert combine([], [], "sum") == 0
    assert combine([[1], [2, 3]], [0, 1], "concat") == [1, 2, 3]
    assert combine(["ab", "c"], [0, 1], "concat") == "abc"
    assert combine([(1,), (2,)], [0, 1], "concat") == (1, 2)
    assert combine([3, 1, 2], [0, 1, 2], sorted) == [1, 2, 3]


def test_combine_sum_of_arrays_and_concat_of_frames():
    arrays = [np.arange(3), np.arange(3) * 2]
    assert (combine(arrays, [0, 1], "sum") == np.arange(3) * 3).all()
    assert (combine(arrays, [0, 1], "concat") == np.concatenate(arrays)).all()
    frames = [pd.DataFrame({"a": [i]}) for i in range(3)]
    assert combine(frames, [0, 1, 2], "concat")["a"].tolist() == [0, 1, 2]


def test_unhashable_items_for_dict():
    with pytest.raises(CombineError, match="item 1"):
        check_dict_keys([1, [2], 3])
    with pytest.raises(CombineError, match="not hashable"):
        check_dict_keys([(1, [2])])


def test_bad_combine():
    with pytest.raises(CombineError, match="could not add"):
        combine([1, "a"], [0, 1], "sum")
    with pytest.raises(CombineError, match="unknown combine mode"):
        combine([1], [0], "product")
    with pytest.raises(CombineError, match="iterable"):
        combine([1, 2], [0, 1], "concat")


def test_combine_dict_names_an_unhashable_item():
    with pytest.raises(CombineError, match="item 1"):
        combine([1, 2], ["a", ["b"]], "dict")


def test_concat_merges_dicts_as_update_would_and_warns_of_repeated_keys():
    """A loop returning dicts got a list of their keys: the values were lost without a word."""
    assert combine([{"a": 1}, {"b": 2}], [0, 1], "concat") == {"a": 1, "b": 2}
    with pytest.warns(CombineWarning, match=r"2 key\(s\) came again .*the first: 'score'.*items 'x' and 'y'"):
        merged = combine([{"score": 1, "n": 1}, {"score": 2, "n": 2}, {"z": 3}], ["x", "y", "z"], "concat")
    assert merged == {"score": 2, "n": 2, "z": 3}
    ordered = combine([collections.OrderedDict(b=1), {"a": 2}], [0, 1], "concat")
    assert type(ordered) is collections.OrderedDict and list(ordered) == ["b", "a"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a Counter adds what it is given again: nothing is lost, no warning
        counted = combine([collections.Counter("ab"), collections.Counter("bc")], [0, 1], "concat")
    assert counted == collections.Counter("abbc") and isinstance(counted, collections.Counter)
    factory = combine([collections.defaultdict(list, a=[1]), {"b": [2]}], [0, 1], "concat")
    assert factory.default_factory is list and factory == {"a": [1], "b": [2]}
    with pytest.raises(CombineError, match=r"joins dicts \(the first value is a dict\), but the value for item 1 is a list"):
        combine([{"a": 1}, [("b", 2)]], [0, 1], "concat")


def test_concat_joins_sets_and_names_a_value_of_another_kind():
    assert combine([{1, 2}, {2, 3}], [0, 1], "concat") == {1, 2, 3}
    joined = combine([frozenset({1}), {2}], [0, 1], "concat")
    assert joined == frozenset({1, 2}) and type(joined) is frozenset
    with pytest.raises(CombineError, match=r"joins strings .* value for item 'b' is a NoneType \(None\)"):
        combine(["x", None], ["a", "b"], "concat")
    with pytest.raises(CombineError, match=r"value for item 2 is a NoneType \(None\), which is not iterable"):
        combine([[1], [2], None], [0, 1, 2], "concat")
    with pytest.raises(CombineError, match=r"numpy scalars \(float64\).*--combine np.array"):
        combine([np.float64(1), np.float64(2)], [0, 1], "concat")
