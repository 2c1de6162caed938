"""Unit tests of parsing.py: header split, body checks, runner code semantics."""

import marshal
import traceback

import pytest

from azpar_magic.parsing import CELL_FILENAME, CellError, parse_cell, split_header


def run_code(cell, item, namespace=None):
    ns = dict(namespace or {})
    ns["__azpar_item__"] = item
    exec(marshal.loads(cell.code), ns)
    return ns


@pytest.mark.parametrize("line, options, clause", [
    ("for x in xs", "", "for x in xs"),
    ("-o out --combine sum for x in xs:", "-o out --combine sum", "for x in xs:"),
    ("--export 'a b' for (i, j) in pairs", "--export 'a b'", "for (i, j) in pairs"),
    ("-o r for x in ['for', 'x']", "-o r", "for x in ['for', 'x']"),
])
def test_split_header(line, options, clause):
    assert split_header(line) == (options, clause)


@pytest.mark.parametrize("line", ["", "-o out", "x in xs", "-o out while True"])
def test_header_without_for_is_refused(line):
    with pytest.raises(CellError, match="needs a loop header"):
        split_header(line)


@pytest.mark.parametrize("line", ["for x in", "for in xs", "for x xs", "for x in xs if x", "for 1 in xs"])
def test_malformed_for_clause(line):
    with pytest.raises(CellError):
        parse_cell(line, "x")


def test_targets_and_iterable_sources():
    cell = parse_cell("for i, (a, b) in enumerate(zip(xs, ys)):", "a + b")
    assert cell.target_names == ("i", "a", "b")
    assert cell.iterable_source == "enumerate(zip(xs, ys))"


def test_last_expression_is_the_value_and_continue_gives_none():
    cell = parse_cell("for x in xs", "if x % 2:\n    continue\ny = x * 10\ny + 1\n")
    assert run_code(cell, 4)["__azpar_value__"] == 41
    assert run_code(cell, 3)["__azpar_value__"] is None


def test_body_without_final_expression_gives_none():
    cell = parse_cell("for x in xs", "y = x\n")
    assert run_code(cell, 1)["__azpar_value__"] is None


def test_attribute_and_subscript_targets():
    class Box:
        pass

    box, store = Box(), {}
    cell = parse_cell("for box.v in xs", "box.v * 2")
    assert run_code(cell, 5, {"box": box})["__azpar_value__"] == 10
    cell = parse_cell("for store['k'] in xs", "store['k'] + 1")
    assert run_code(cell, 5, {"store": store})["__azpar_value__"] == 6


@pytest.mark.parametrize("body, word", [
    ("break", "`break`"),
    ("if x:\n    break", "`break`"),
    ("return 1", "`return`"),
    ("yield x", "`yield`"),
    ("y = yield from xs", "`yield`"),
    ("nonlocal y", "nonlocal"),
    ("await thing()", "await"),
])
def test_forbidden_statements(body, word):
    with pytest.raises(CellError) as info:
        parse_cell("for x in xs", body)
    assert word in str(info.value)
    assert "Nothing was submitted" in str(info.value)


@pytest.mark.parametrize("body", [
    "for y in range(3):\n    if y: break\nx",
    "while True:\n    break\nx",
    "def f():\n    return 1\nf()",
    "def g():\n    yield 1\nlist(g())",
    "async def h():\n    await other()\nx",
    "class C:\n    def m(self):\n        return 2\nC().m()",
])
def test_allowed_in_nested_scopes_and_loops(body):
    parse_cell("for x in xs", body)


def test_magics_in_body_get_a_hint():
    with pytest.raises(CellError, match="magics and shell escapes"):
        parse_cell("for x in xs", "%time x")


def test_empty_body_is_refused():
    with pytest.raises(CellError, match="no body"):
        parse_cell("for x in xs", "  \n")


def test_traceback_line_numbers_are_the_cells():
    cell = parse_cell("for x in xs", "a = 1\nb = 2\n1 / x\n")
    with pytest.raises(ZeroDivisionError) as info:
        run_code(cell, 0)
    frame = traceback.extract_tb(info.value.__traceback__)[-1]
    assert frame.filename == CELL_FILENAME
    assert frame.lineno == 4  # the magic line is line 1
    assert cell.source.splitlines()[frame.lineno - 1] == "1 / x"
