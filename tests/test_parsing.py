"""Unit tests of parsing.py: header split, body checks, runner code semantics."""

import ast
import marshal
import sys
import traceback

import pytest

from azpar_magic.errors import CellError
from azpar_magic.run.parsing import (
    CELL_FILENAME,
    body_warnings,
    is_requirement,
    is_variable_name,
    notebook_change_warnings,
    parse_cell,
    parse_one_line,
    parse_source,
    split_header,
    split_requirements,
)


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
    ("--combine 'lambda rows: [r for r in rows]' for x in xs", "--combine 'lambda rows: [r for r in rows]'",
     "for x in xs"),
    ("--combine lambda rows: [r for r in rows] for x in xs", "--combine lambda rows: [r for r in rows]",
     "for x in xs"),  # unquoted: the options are refused by the option parser, with a hint to quote
    ("for x in [y for y in ys]", "", "for x in [y for y in ys]"),
    # Python 3.12+ tokenizes a line with a bracket closed before it opened as one left open: it was
    # told it "ends inside an open bracket" there, and "not valid Python" on 3.10 and 3.11
    (")) for x in ((", "))", "for x in (("),
])
def test_split_header(line, options, clause):
    assert split_header(line) == (options, clause)


@pytest.mark.parametrize("line", ["-o r for x in [1,", "for x in (1, ')'", "for x in {'a': [1,"])
def test_a_header_left_inside_an_open_bracket_says_so(line):
    with pytest.raises(CellError, match="ends inside an open bracket"):
        split_header(line)


@pytest.mark.parametrize("line", ["", "-o out", "x in xs", "-o out while True"])
def test_header_without_for_is_refused(line):
    with pytest.raises(CellError, match="needs a loop header"):
        split_header(line)


@pytest.mark.parametrize("line", ["for x in", "for in xs", "for x xs", "for x in xs if x", "for 1 in xs"])
def test_malformed_for_clause(line):
    with pytest.raises(CellError):
        parse_cell(line, "x")


@pytest.mark.parametrize(("line", "said"), [
    ("for x in range(3): y = x", "'y = x'"),
    ("for x in d[1:3]: print(x); x", "'print(x); x'"),
    ("for k in {1: 2}: k", "'k'"),
])
def test_a_statement_after_the_headers_colon_is_named_with_where_the_body_goes(line, said):
    """Python's one-line loop (`for x in xs: f(x)`) on the magic line, with the body below: the error
    said only that the header was not valid Python. It names the statement and where it goes. Colons
    of the iterable (a slice, a dict) are not taken for the loop's."""
    with pytest.raises(CellError, match="has a statement after its colon") as caught:
        parse_cell(line, "x")
    assert said in str(caught.value) and "lines below the magic line" in str(caught.value)
    assert parse_cell("for x in d[1:3]:", "x").iterable_source == "d[1:3]"


@pytest.mark.parametrize(("line", "options", "body", "iterable", "item", "value"), [
    (" -o r for x in xs: x * 3", "-o r", "x * 3", "xs", 2, 6),
    ("for x in d[1:3]: y = x + 1; y * 2  # note", "", "y = x + 1; y * 2  # note", "d[1:3]", 1, 4),
    ("--combine sum for k, v in {1: 2}.items(): k * v", "--combine sum", "k * v", "{1: 2}.items()", (3, 4), 12),
    ("for é in 'àb': é.upper()", "", "é.upper()", "'àb'", "à", "À"),
])
def test_a_loop_on_one_line_keeps_its_body_on_line_1_with_its_columns(line, options, body, iterable, item, value):
    """``%azpar [options] for x in xs: STATEMENT``: IPython sends a %%azpar cell with nothing below its line to the
    line magic, which said "unknown %azpar command '-o'". The body is the text after the loop's own colon (not a
    slice's or a dict's), run on line 1 of the source ``%azpar LINE``, with the columns it has there: a traceback's
    marks fall under the body, also after non-ASCII text."""
    cell = parse_one_line(line)
    assert (cell.options, cell.body, cell.iterable_source) == (options, body, iterable)
    assert cell.source == f"%azpar {line.strip()}"
    again = parse_source(cell.source)  # what a rerun parses
    assert (again.source, again.code, again.function_code) == (cell.source, cell.code, cell.function_code)
    assert run_code(cell, item)["__azpar_value__"] == value
    start = len(cell.source.encode()) - len(body.encode())
    assert min(n.col_offset for n in ast.walk(cell.body_tree) if hasattr(n, "col_offset")) == start
    if sys.version_info >= (3, 11):  # what a traceback marks (Python 3.10 marks nothing)
        columns = [p[2] for p in marshal.loads(cell.code).co_positions() if p[0] == 1 and p[2]]  # runner's: 0
        assert columns and min(columns) == start


def test_a_loop_on_one_line_marks_the_failing_expression():
    cell = parse_one_line("-o r for x in range(4): 1 / (x - 2)")
    try:
        run_code(cell, 2)
    except ZeroDivisionError as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
    assert (frame.filename, frame.lineno) == (CELL_FILENAME, 1)
    if sys.version_info >= (3, 11):
        assert cell.source[frame.colno : frame.end_colno] == "1 / (x - 2)"


@pytest.mark.parametrize(("line", "said"), [
    ("for x in range(2):", "has no body. On one line, put the statement after the colon"),
    ("for x in range(2)", "has no body"),
    ("-o r for x in", "is not valid Python"),
    ("-q", "The %azpar line needs a loop header: %azpar [options] for TARGET in ITERABLE, for example "
           "`%azpar -o squares for x in range(10): x * x`"),
    ("for x in range(2): break", "Line 1 of the cell: `break`"),
])
def test_a_loop_on_one_line_without_a_body_or_header_is_refused_in_the_line_magics_terms(line, said):
    with pytest.raises(CellError) as caught:
        parse_one_line(line)
    assert said in str(caught.value)


def test_a_cells_source_is_parsed_again_as_the_cell():
    cell = parse_cell("-o r for x in xs:", "y = x\ny")
    again = parse_source(cell.source)
    assert (again.source, again.code, again.options) == (cell.source, cell.code, cell.options)


@pytest.mark.parametrize(("line", "said"), [
    ("for d['k'] in range(2)", "The loop target `d['k']` assigns into an object:"),
    ("for obj.x in xs", "The loop target `obj.x` assigns into an object:"),
    ("for i, (j, rows[0]) in pairs", "The loop target `(i, (j, rows[0]))` assigns into an object (`rows[0]`):"),
])
def test_a_loop_target_that_assigns_into_an_object_is_refused(line, said):
    """Python allows `for d['k'] in xs`, but the iterations ran without `d` (it counted as bound by the
    target) and each failed with NameError on the workers; each would have changed its own copy anyway."""
    with pytest.raises(CellError) as caught:
        parse_cell(line, "x")
    assert said in str(caught.value) and str(caught.value).endswith("Nothing was submitted.")
    assert parse_cell("for i, (j, *k) in pairs", "i").target_names == ("i", "j", "k")


def test_targets_and_iterable_sources():
    cell = parse_cell("for i, (a, b) in enumerate(zip(xs, ys)):", "a + b")
    assert cell.target_names == ("i", "a", "b")
    assert cell.iterable_source == "enumerate(zip(xs, ys))"


def test_last_expression_is_the_value_and_continue_gives_none():
    cell = parse_cell("for x in xs", "if x % 2:\n    continue\ny = x * 10\ny + 1\n")
    assert run_code(cell, 4)["__azpar_value__"] == 41
    assert run_code(cell, 3)["__azpar_value__"] is None


def _names_in(code) -> set:
    names = set(code.co_names) | set(code.co_varnames)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _names_in(const)
    return names


def run_function(cell, item, namespace=None):
    """The function mode's runner, called as the worker calls it."""
    ns = dict(namespace or {})
    exec(marshal.loads(cell.function_code), ns)
    return ns["__azpar_run__"](item)


# Where a `continue` sits decides whether the runner needs its one-pass loop: the loop costs
# each iteration as much as a trivial body does (issue 16, a), so it is there only when a
# `continue` of the cell's own loop would otherwise be a syntax error or end the wrong loop.
CONTINUE_CASES = [
    # (body, needs the one-pass loop, value of item 3, value of item 4)
    ("x * 2", False, 6, 8),
    ("if x % 2:\n    continue\nx * 2", True, None, 8),
    ("try:\n    if x == 3:\n        continue\nfinally:\n    y = 1\nx + y", True, None, 5),
    ("with open(__file__) as fh:\n    if x == 4:\n        continue\nx", True, 3, None),
    ("acc = []\nfor k in range(x):\n    if k % 2:\n        continue\n    acc.append(k)\nacc", False, [0, 2], [0, 2]),
    ("for k in range(x):\n    pass\nelse:\n    if x == 3:\n        continue\nx", True, None, 4),
    ("n = x\nwhile n:\n    n -= 1\n    if n % 2:\n        continue\nn + x", False, 3, 4),
    ("def f(v):\n    for k in range(v):\n        continue\n    return v\nf(x)", False, 3, 4),
    ("class C:\n    for k in range(2):\n        continue\nx", False, 3, 4),
]


@pytest.mark.parametrize("body, needs_loop, value3, value4", CONTINUE_CASES)
def test_the_one_pass_loop_only_where_a_continue_needs_it(body, needs_loop, value3, value4):
    cell = parse_cell("for x in xs", body)
    for code in (marshal.loads(cell.code), marshal.loads(cell.function_code)):
        assert ("__azpar_once__" in _names_in(code)) is needs_loop
    ns = {"__file__": __file__}
    for item, expected in ((3, value3), (4, value4)):
        assert run_code(cell, item, ns)["__azpar_value__"] == expected
        assert run_function(cell, item, ns) == expected


@pytest.mark.parametrize("header, body, item, expected, direct", [
    ("for x in xs", "x * 2", 3, 6, True),
    ("for x in xs", "x = x + 1\nx * 2", 3, 8, True),
    ("for x in xs", "y = x + 1", 3, None, True),
    ("for x in xs", "# nothing but a comment", 3, None, True),
    ("for a, b in pairs", "a * b", (2, 3), 6, False),
    ("for x in xs", "if x:\n    continue\nx - 1", 0, -1, False),
])
def test_a_one_name_loop_runs_as_a_function_of_that_name(header, body, item, expected, direct):
    # The common loop needs neither the item's name nor the value's: the function takes the
    # loop's name as its parameter and returns the last expression (issue 16, a).
    cell = parse_cell(header, body)
    code = marshal.loads(cell.function_code)
    assert ({"__azpar_item__", "__azpar_value__"} & _names_in(code) == set()) is direct
    assert run_function(cell, item) == expected == run_code(cell, item)["__azpar_value__"]


def test_function_mode_tracebacks_show_the_cells_lines():
    cell = parse_cell("for x in xs", "a = 1\nb = 2\n1 / x\n")
    with pytest.raises(ZeroDivisionError) as info:
        run_function(cell, 0)
    frame = traceback.extract_tb(info.value.__traceback__)[-1]
    assert (frame.filename, frame.lineno) == (CELL_FILENAME, 4)  # the magic line is line 1


def test_body_without_final_expression_gives_none():
    cell = parse_cell("for x in xs", "y = x\n")
    assert run_code(cell, 1)["__azpar_value__"] is None


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


@pytest.mark.parametrize("body", ["%time x", "  !ls", "files = !ls {x}", "a, b = %sx ls", "t = %time f(x)"])
def test_magics_in_body_get_a_hint(body):
    """IPython rewrites a magic or shell escape, alone or assigned (``files = !ls``); the assigned ones got a bare
    "invalid syntax"."""
    with pytest.raises(CellError, match="magics and shell escapes"):
        parse_cell("for x in xs", "y = 1\n" + body)


@pytest.mark.parametrize("body", ["x =+ 1 +", "if x != :\n    pass", "print(x) !"])
def test_other_syntax_errors_get_no_magic_hint(body):
    with pytest.raises(CellError) as info:
        parse_cell("for x in xs", body)
    assert "Syntax error" in str(info.value) and "magics" not in str(info.value)


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


def test_a_body_indented_under_the_for_runs_as_written_without_the_indent():
    """A body indented under the magic line's ``for``, as a loop body is in Python, was a syntax
    error ("unexpected indent"); IPython takes a cell's leading indent off the same way."""
    plain = parse_cell("for x in xs", "y = x * 10\nif y > 10:\n    y += 1\ny\n")
    indented = parse_cell("for x in xs", "\n    y = x * 10\n    if y > 10:\n        y += 1\n    y\n")
    values = [run_code(plain, x)["__azpar_value__"] for x in (1, 2)]
    assert values == [10, 21]
    assert [run_code(indented, x)["__azpar_value__"] for x in (1, 2)] == values
    cell = parse_cell("for x in xs", "\ta = 1\n\t1 / x\n")
    with pytest.raises(ZeroDivisionError) as info:
        run_code(cell, 0)
    assert traceback.extract_tb(info.value.__traceback__)[-1].lineno == 3  # the cell's line, as before
    with pytest.raises(CellError, match="line 3 of the cell: unexpected indent"):
        parse_cell("for x in xs", "    y = x\n  y\n")  # not the first line's indent: not taken off


@pytest.mark.parametrize("values, expected", [
    (["numpy==1.26.4,scipy"], ["numpy==1.26.4", "scipy"]),
    (["x>=0.1,<0.2"], ["x>=0.1,<0.2"]),
    (["x>=0.1, <0.2, y ~= 1.0"], ["x>=0.1, <0.2", "y ~= 1.0"]),
    (["a[b,c]>=1,!=1.5,d"], ["a[b,c]>=1,!=1.5", "d"]),
    (["x==1.0", "y>=2,<3"], ["x==1.0", "y>=2,<3"]),  # repeated --packages
    (["x,,", " "], ["x"]),
])
def test_split_requirements_at_top_level_commas_only(values, expected):
    assert split_requirements(values) == expected


@pytest.mark.parametrize("text, ok", [
    ("numpy", True), ("numpy==1.26.4", True), ("x>=0.1,<0.2", True), ("a[b, c] ~= 1.0", True),
    ("x==1.*", True), ("'x==1.0'", False), ("x; os_name == 'nt'", False), ("https://h/x.whl", False),
    ("x==", False), ("-r reqs.txt", False), ("x>=1,", False),
])
def test_requirement_syntax(text, ok):
    assert is_requirement(text) is ok


@pytest.mark.parametrize("name, ok", [
    ("x", True), ("match", True), ("type", True), ("_", True), ("class", False), ("None", False),
    ("True", False), ("lambda", False), ("2x", False), ("a-b", False),
])
def test_variable_names_exclude_keywords(name, ok):
    assert is_variable_name(name) is ok


def test_body_warnings():
    assert body_warnings(parse_cell("for x in xs", "# nothing yet\n"), ())[0].startswith("the loop body has no")
    assert body_warnings(parse_cell("for x in xs", "pass"), ()) == []
    cell = parse_cell("for i, x in xs", "y = x\nclass K:\n    z = 1\ndef f():\n    w = 1\n(lambda v: v)(1)")
    assert body_warnings(cell, ("i", "x", "y", "K", "f")) == []
    (warning,) = body_warnings(cell, ("z", "w", "v"))
    assert warning.startswith("--gather z, w, v:")
    assert body_warnings(parse_cell("for x in xs", "from os.path import *"), ("join", "q")) == []
    assert body_warnings(parse_cell("for x in xs", "exec('q = 1')"), ("q",)) == []


@pytest.mark.parametrize("body, named", [
    ("total += x", ["total"]),
    ("results.append(x)", ["results"]),
    ("d[x] = 1", ["d"]),
    ("d.setdefault(x, []).append(1)", ["d"]),
    ("a, d[x] = 1, 2", ["d"]),
    ("first, *d[1:] = [1, 2]", ["d"]),
    ("del d[x]", ["d"]),
    ("arr[x] = 1\narr.sort()", ["arr"]),
    ("frame.loc[x, 'a'] = 1", ["frame"]),
    ("dq.appendleft(x)\ntotal += 1", ["dq", "total"]),
    ("s += 'y'", ["s"]),
    ("total = 5\ntotal += x", []),
    ("results = []\nresults.append(x)", []),
    ("x += 1", []),
    ("sys.path.append('.')", []),
    ("proxy.append(x)", []),
    ("f(x).append(1)", []),
    ("unknown.append(1)", []),
    ("def g():\n    results.append(1)\ng()", []),
    ("class K:\n    total += 1", []),
    ("[d.append(0) for d in lists]", []),  # the comprehension's own d
    ("[results.append(v) for v in range(x)]", ["results"]),
    ("total += sum(d[k] for k in d)", ["total"]),
    ("exec('results = []')\nresults.append(x)", []),  # it may bind them itself: the benefit of the doubt
    # Rebound from the notebook's own value (each iteration built on the last, in one process):
    ("total = total + x", ["total"]),
    ("results = results + [x]", ["results"]),
    ("frame = pandas.concat([frame, frame])", ["frame"]),
    ("results = [r for r in results if r]", ["results"]),
    ("if x:\n    total = max(total, x)", ["total"]),
    ("for v in d:\n    total = total + v", ["total"]),
    ("try:\n    total = total + x\nexcept Exception:\n    pass", ["total"]),
    ("total = total + x\ntotal += 1", ["total"]),
    ("d[x] = 1\ntotal = total + 1", ["d", "total"]),
    ("global s\ns = 'z'", []),  # declared global: global_warnings names it, saying why (test_options)
    ("total = 0\ntotal = total + x", []),  # its own from the first line
    ("x = x * 2", []),  # the loop target is the iteration's own
    ("y = total + x", []),  # reads the notebook's total, changes nothing
    ("for total in range(3):\n    total = total + 1", []),
    ("with open(f) as s:\n    s = s.read()", []),
    ("f2 = lambda: total\ntotal = 1", []),
    ("def g(total):\n    total = total + 1\n    return total\ng(x)", []),
])
def test_notebook_change_warnings_name_plain_notebook_data_the_body_changes(body, named):
    import collections
    import sys

    class Proxy:  # stands for a multiprocessing.Manager list, whose changes do travel back
        def append(self, value):
            pass

    numpy = pytest.importorskip("numpy")
    pandas = pytest.importorskip("pandas")
    namespace = dict(total=0, results=[], d={}, s="x", dq=collections.deque(), arr=numpy.zeros(3),
                     frame=pandas.DataFrame({"a": [1]}), sys=sys, proxy=Proxy(), f=len)
    warnings = notebook_change_warnings(parse_cell("for x in xs", body), namespace, ())
    if not named:
        assert warnings == []
        return
    (warning,) = warnings
    which = "a notebook variable" if len(named) == 1 else "notebook variables"
    assert warning.startswith(f"the loop body changes {', '.join(named)} ({which}): ")


@pytest.mark.parametrize("body", ["frame = frame[frame.a == x]\nlen(frame)", "total = total + x\ntotal"])
def test_a_body_that_rebinds_a_notebook_name_and_gives_a_value_is_told_where_iterations_start(body):
    """``df = df[df.k == x]`` then ``len(df)``: the value already is the last expression, and the warning's advice
    said to make it so. What differs from a loop in one process is where each iteration starts."""
    pandas = pytest.importorskip("pandas")
    namespace = {"frame": pandas.DataFrame({"a": [1]}), "total": 0}
    (warning,) = notebook_change_warnings(parse_cell("for x in xs", body), namespace, ())
    name = body.split()[0]
    assert warning.startswith(f"the loop body rebinds {name} (a notebook variable) from its own value: each "
                              f"iteration starts from the notebook's {name}, where a loop in one process"), warning
    assert "last expression" not in warning
    changed = notebook_change_warnings(parse_cell("for x in xs", "frame['b'] = x\nframe = frame[frame.a == x]\n1"),
                                       namespace, ())
    assert changed[0].startswith("the loop body changes frame") and "last expression" in changed[0]


def test_a_gathered_name_is_not_a_lost_change():
    cell = parse_cell("for x in xs", "total += x")
    assert notebook_change_warnings(cell, {"total": 0}, ("total",)) == []
