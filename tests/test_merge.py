"""Unit tests of merge.py: error policies and combine modes (pure functions)."""

import numpy as np
import pandas as pd
import pytest

from azpar_magic.errors import CombineError
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
