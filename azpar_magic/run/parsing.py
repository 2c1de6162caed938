"""Parse a ``%%azpar`` cell: the ``for TARGET in ITERABLE`` header and the loop body.

Everything here is pure (no IPython, no I/O) so that every check runs before anything is
captured or submitted. The body is compiled on the client into one code object whose line
numbers are the cell's own (the magic line is line 1), so a remote traceback points at the
line the user sees in the notebook.
"""

from __future__ import annotations
import __future__

import ast
import base64
import collections
import copy
import functools
import io
import keyword
import marshal
import re
import tokenize
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..errors import CellError
from ..worker import FUNCTION_NAME, ITEM_NAME, VALUE_NAME

CELL_FILENAME = "<azpar cell>"
LINE_FORM = "%azpar"  # the one-line loop's magic (``parse_one_line``), as its job's source starts
_ONCE_NAME = "__azpar_once__"


@dataclass(frozen=True)
class ParsedCell:
    """A validated cell, ready for capture."""

    options: str  # the text before ``for``, for the argument parser
    target_source: str  # e.g. "i, row"
    iterable_source: str  # e.g. "df.iterrows()"
    target_names: tuple[str, ...]
    body: str
    body_tree: ast.Module
    source: str  # the whole cell as the user sees it: magic line + body
    code: bytes  # marshal of the compiled runner code (module mode)
    function_code: bytes  # marshal of a module defining the same runner as a function

    @property
    def code_b64(self) -> str:
        return base64.b64encode(self.code).decode()

    @property
    def function_code_b64(self) -> str:
        return base64.b64encode(self.function_code).decode()


def split_header(line: str, magic: str = "%%azpar") -> tuple[str, str]:
    """Split the magic line into (options, ``for ...`` clause) at the first ``for`` token
    outside quotes and brackets (an unquoted ``--combine lambda r: [v for v in r]`` is then
    refused as options needing quotes, not as a broken loop header); options may not
    contain a bare word ``for``."""
    tokens: list[tokenize.TokenInfo] = []
    try:
        tokens.extend(tokenize.generate_tokens(io.StringIO(line).readline))
        why = None
    except (tokenize.TokenError, SyntaxError, IndentationError) as exc:
        why = str(exc.args[0] if exc.args else exc)
    loop_at, closes_unopened = _top_level_for(tokens)
    if why is not None and "multi-line statement" not in why:
        raise CellError(
            f"The {magic} line could not be read: {why}. Expected: {magic} [options] for TARGET in "
            "ITERABLE. Nothing was submitted."
        )
    # "for x in [1," and the rest on the next lines. Python 3.12+ also says so of a line that closes a
    # bracket it never opened (`))) for (((`), which 3.10 and 3.11 tokenize whole: that one is read on
    # from the tokens had so far, and its loop header is refused as not Python.
    if why is not None and not closes_unopened:
        raise CellError(
            f"The %%azpar line ends inside an open bracket: {line.strip()!r}. IPython gives a cell magic "
            "only its first line (the next lines are the body), so the loop header must fit on it: make "
            "the iterable in the notebook first (`xs = [...]`), then `%%azpar for x in xs:`. "
            "Nothing was submitted."
        )
    if loop_at is not None:
        return line[:loop_at].strip(), line[loop_at:].strip()
    example = "-o squares for x in range(10)" + (": x * x" if magic == LINE_FORM else "")
    raise CellError(
        f"The {magic} line needs a loop header: {magic} [options] for TARGET in ITERABLE, "
        f"for example `{magic} {example}`. Got: {line.strip()!r}."
    )


def _top_level_for(tokens: list[tokenize.TokenInfo]) -> tuple[int | None, bool]:
    """The column of the first ``for`` outside brackets (None: there is none), and whether the tokens
    close a bracket that none before them opened (such a closer counts as closing nothing)."""
    depth, loop_at, closes_unopened = 0, None, False
    for tok in tokens:
        if tok.type == tokenize.OP and tok.string in ("(", "[", "{"):
            depth += 1
        elif tok.type == tokenize.OP and tok.string in (")", "]", "}"):
            closes_unopened = closes_unopened or depth == 0
            depth = max(0, depth - 1)
        elif tok.type == tokenize.NAME and tok.string == "for" and depth == 0 and loop_at is None:
            loop_at = tok.start[1]
    return loop_at, closes_unopened


def parse_for_clause(clause: str) -> tuple[ast.expr, ast.expr, str, str]:
    """Parse ``for TARGET in ITERABLE[:]`` and return (target, iter, their sources)."""
    text = clause.rstrip()
    if text.endswith(":"):
        text = text[:-1]
    try:
        tree = ast.parse(text + ":\n    pass\n")
    except SyntaxError as exc:
        _, inline = _split_inline_body(clause)  # Python's one-line loop: `for x in xs: y = f(x)`
        if inline:
            raise CellError(
                f"The loop header {clause!r} has a statement after its colon ({inline!r}): in %%azpar the loop "
                "body goes on the lines below the magic line, as in a `for` block (the line magic, `%azpar "
                "[options] for TARGET in ITERABLE: STATEMENT`, runs a loop written on one line). Nothing was submitted."
            ) from None
        raise CellError(
            f"The loop header {clause!r} is not valid Python: {exc.msg}. Expected "
            "`for TARGET in ITERABLE`, for example `for i, row in df.iterrows()`."
        ) from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.For) or tree.body[0].orelse:
        kind = type(tree.body[0]).__name__ if tree.body else "nothing"
        raise CellError(
            f"The loop header must be a single `for TARGET in ITERABLE` clause; {clause!r} parsed as {kind}."
        )
    node = tree.body[0]
    _refuse_assigning_into_objects(node.target)
    return node.target, node.iter, ast.unparse(node.target), ast.unparse(node.iter)


def _refuse_assigning_into_objects(target: ast.expr) -> None:
    """Only names (unpacked as deep as one likes) may be loop targets here. ``for d['k'] in xs`` is
    Python, but each iteration would set the key in its own copy of ``d``, which was not even sent
    (its iterations failed with NameError on the workers)."""
    for node in ast.walk(target):
        if isinstance(node, (ast.Subscript, ast.Attribute)):
            whole, part = ast.unparse(target), ast.unparse(node)
            where = "" if part == whole else f" (`{part}`)"
            raise CellError(
                f"The loop target `{whole}` assigns into an object{where}: iterations run in "
                "processes of their own, so a loop target must be a name or names (`for k in ...`, `for i, "
                "(a, b) in ...`). Loop over a name and use it in the body instead. Nothing was submitted."
            )


def _names_bound_by(target: ast.expr) -> tuple[str, ...]:
    return tuple(n.id for n in ast.walk(target) if isinstance(n, ast.Name))


class _BodyChecker(ast.NodeVisitor):
    """Reject statements that mean something else once iterations run apart."""

    def __init__(self) -> None:
        self.loop_depth = 0
        self.problems: list[tuple[int, str]] = []
        self.continues = False  # a `continue` of the cell's own loop: the runner needs its one-pass loop

    def _scope(self, node: ast.AST) -> None:
        """A nested function or class is its own scope: return/yield/break there are fine."""

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = visit_ClassDef = _scope

    def _loop(self, node: ast.AST) -> None:
        for field in ("target", "iter", "test"):
            if hasattr(node, field):
                self.visit(getattr(node, field))
        self.loop_depth += 1
        for stmt in node.body:
            self.visit(stmt)
        self.loop_depth -= 1
        for stmt in node.orelse:
            self.visit(stmt)

    visit_For = visit_While = visit_AsyncFor = _loop

    def visit_Break(self, node: ast.Break) -> None:
        if self.loop_depth == 0:
            self.problems.append(
                (
                    node.lineno,
                    "`break` would stop the whole loop, but iterations run "
                    "independently and in parallel; filter the items instead, or use "
                    "`continue` to give this iteration the value None",
                )
            )

    def visit_Continue(self, node: ast.Continue) -> None:
        if self.loop_depth == 0:
            self.continues = True

    def visit_Return(self, node: ast.Return) -> None:
        self.problems.append(
            (
                node.lineno,
                "`return` is not allowed in the loop body (it is not a "
                "function); make the value the last expression of the body instead",
            )
        )

    def visit_Yield(self, node: ast.AST) -> None:
        self.problems.append(
            (node.lineno, "`yield` is not allowed in the loop body; the value of an iteration is its last expression")
        )

    visit_YieldFrom = visit_Yield

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.problems.append((node.lineno, "`nonlocal` is not allowed at the top of the loop body"))

    def visit_Await(self, node: ast.Await) -> None:
        self.problems.append(
            (
                node.lineno,
                "top-level `await` is not supported in the loop body; wrap the coroutine with asyncio.run(...)",
            )
        )

    def _async_stmt(self, node: ast.AST) -> None:
        self.problems.append(
            (
                node.lineno,
                "top-level `async for`/`async with` is not supported in "
                "the loop body; wrap it in a coroutine run by asyncio.run(...)",
            )
        )

    visit_AsyncWith = _async_stmt


def check_body(tree: ast.Module, line_offset: int) -> None:
    checker = _BodyChecker()
    for stmt in tree.body:
        if isinstance(stmt, ast.AsyncFor):
            checker._async_stmt(stmt)
        checker.visit(stmt)
    if checker.problems:
        line, why = min(checker.problems)
        raise CellError(f"Line {line + line_offset} of the cell: {why}. Nothing was submitted.")


def _runner_statements(target: ast.expr, body: ast.Module, line_offset: int) -> list[ast.stmt]:
    """The runner, as statements:

    __azpar_value__ = None
    TARGET = __azpar_item__
    <body, its last expression statement assigned to __azpar_value__>

    A body with a `continue` of its own (not one of a loop inside it) runs inside
    ``for __azpar_once__ in (None,):``, where that `continue` ends the iteration. Only then:
    the loop costs each iteration ~25 ns, as much as a trivial body itself (issue 16, a).
    """
    stmts = _cell_statements(body, line_offset, lambda value: ast.Assign([ast.Name(VALUE_NAME, ast.Store())], value))
    bind = ast.Assign(targets=[copy.deepcopy(target)], value=ast.Name(ITEM_NAME, ast.Load()))
    init = ast.Assign(targets=[ast.Name(VALUE_NAME, ast.Store())], value=ast.Constant(None))
    synthetic = [*ast.walk(init), *ast.walk(bind)]
    runner: list[ast.stmt] = [init, bind, *stmts]
    if _continues_the_loop(stmts):
        loop = ast.For(
            target=ast.Name(_ONCE_NAME, ast.Store()),
            iter=ast.Tuple([ast.Constant(None)], ast.Load()),
            body=[bind, *stmts],
            orelse=[],
        )
        synthetic += [loop, loop.target, *ast.walk(loop.iter)]
        runner = [init, loop]
    for node in synthetic:
        _on_magic_line(node)
    return runner


def _continues_the_loop(stmts: list[ast.stmt]) -> bool:
    """Whether a `continue` belongs to the cell's own loop: not to a loop of the body, nor to a
    function or class it defines (the body checker's own scoping)."""
    checker = _BodyChecker()
    for stmt in stmts:
        checker.visit(stmt)
    return checker.continues


def _cell_statements(body: ast.Module, line_offset: int, value: Callable[[ast.expr], ast.stmt]) -> list[ast.stmt]:
    """The body's statements, copied (the caller's tree stays as parsed) and on the cell's lines,
    its last expression statement made ``value(expression)``."""
    stmts = list(copy.deepcopy(body).body)
    if stmts and isinstance(stmts[-1], ast.Expr):
        stmts[-1] = ast.copy_location(value(stmts[-1].value), stmts[-1])
    ast.increment_lineno(ast.Module(body=stmts, type_ignores=[]), line_offset)
    return stmts


def _on_magic_line(node: ast.AST) -> None:
    """Synthetic statements sit on line 1, the %%azpar line."""
    if "lineno" in node._attributes:
        node.lineno = node.end_lineno = 1
        node.col_offset = node.end_col_offset = 0


def future_flags(namespace: Mapping[str, object]) -> int:
    """The compiler flag of the notebook's ``from __future__ import annotations``, which a body
    must be compiled with too: the notebook's own loop then leaves annotations unevaluated, and a
    function defined in the body with a forward reference (``def g(x: Later)``) failed with
    NameError on the workers only. The import binds ``annotations`` to the feature in the
    namespace, which tells it alike for a cell and for ``run()``'s namespace."""
    feature = __future__.annotations
    return feature.compiler_flag if namespace.get("annotations") is feature else 0


def build_runner_code(target: ast.expr, body: ast.Module, line_offset: int, future: int = 0) -> bytes:
    """Module mode: the runner executes in the worker's global namespace, as a notebook
    cell does, so the body's assignments are globals that notebook functions can read."""
    module = ast.Module(body=_runner_statements(target, body, line_offset), type_ignores=[])
    ast.fix_missing_locations(module)
    return marshal.dumps(compile(module, CELL_FILENAME, "exec", flags=future, dont_inherit=True))


def build_function_code(target: ast.expr, body: ast.Module, line_offset: int, future: int = 0) -> bytes:
    """Function mode: the same runner as ``def FUNCTION_NAME(__azpar_item__): ... return
    __azpar_value__``. A call is cheaper than exec of module code and the globals need no
    reset between iterations; capture decides when it is equivalent to module mode.
    Returns b"" when the body cannot live in a function (``import *``).

    The common loop, one name and no `continue`, runs as ``def FUNCTION_NAME(x): <body, its
    last expression returned>``: binding the item and keeping the value cost a trivial
    iteration ~10 ns of ~70 (issue 16, a)."""
    synthetic: list[ast.AST] = []
    if isinstance(target, ast.Name) and not _continues_the_loop(body.body):
        param, stmts = target.id, _cell_statements(body, line_offset, ast.Return)
        if not stmts:  # a body of comments only
            stmts = [ast.Pass()]
            synthetic = [stmts[0]]
    else:
        ret = ast.Return(ast.Name(VALUE_NAME, ast.Load()))
        param, stmts = ITEM_NAME, [*_runner_statements(target, body, line_offset), ret]
        synthetic = [ret, *ast.walk(ret)]
    args = ast.arguments(posonlyargs=[], args=[ast.arg(param)], kwonlyargs=[], kw_defaults=[], defaults=[])
    extra = {"type_params": []} if "type_params" in ast.FunctionDef._fields else {}  # Python 3.12+
    func = ast.FunctionDef(name=FUNCTION_NAME, args=args, body=stmts, decorator_list=[], returns=None, **extra)
    for node in (func, *synthetic, args, *args.args):
        _on_magic_line(node)
    module = ast.Module(body=[func], type_ignores=[])
    ast.fix_missing_locations(module)
    try:
        return marshal.dumps(compile(module, CELL_FILENAME, "exec", flags=future, dont_inherit=True))
    except SyntaxError:
        return b""


# A line IPython would have rewritten: a magic or shell escape, alone or assigned (`files = !ls`, `t = %time f()`).
_IPYTHON_SYNTAX = re.compile(r"\s*(?:[A-Za-z_][\w.,\s]*=\s*)?[%!]")


@functools.lru_cache(maxsize=64)
def parse_cell(line: str, body: str, future: int = 0) -> ParsedCell:
    """Validate the magic line and body; raise CellError with a user-facing message.
    ``future``: the notebook's __future__ compiler flags (:func:`future_flags`).

    Cached: re-running a cell is the common case and the result is immutable (callers
    must not modify ``body_tree``)."""
    options, clause = split_header(line)
    target, iterable, target_src, iterable_src = parse_for_clause(clause)
    if not body.strip():
        raise CellError("The %%azpar cell has no body: write the loop body on the lines after the %%azpar line.")
    source = f"%%azpar {line.strip()}\n{body}"
    body = _without_leading_indent(body)
    # The body's first line is the cell's line 2: the magic line is line 1.
    return _parsed(options, target, target_src, iterable_src, body, source, line_offset=1, future=future)


@functools.lru_cache(maxsize=64)
def parse_one_line(line: str, future: int = 0) -> ParsedCell:
    """``%azpar [options] for TARGET in ITERABLE: STATEMENT``, Python's one-line loop as a line magic. IPython
    refuses a ``%%azpar`` cell with nothing below its line, and tells the user to try the line magic: that
    said "unknown %azpar command '-o'". The body is the text after the header's colon, on line 1 of the job's
    source (``%azpar LINE``), with its columns where they are on that line, so a traceback marks the right
    characters."""
    options, clause = split_header(line, LINE_FORM)
    header, body = _split_inline_body(clause)
    target, _, target_src, iterable_src = parse_for_clause(header)
    if not body.strip():
        raise CellError(
            f"The loop {clause!r} has no body. On one line, put the statement after the colon, as in Python: "
            "`%azpar -o squares for x in range(10): x * x`. For a longer body, use the cell magic: "
            "`%%azpar -o squares for x in range(10):` on the first line of a cell, and the body on the lines below. "
            "Nothing was submitted."
        )
    source = f"{LINE_FORM} {line.strip()}"
    shift = len(source.encode()) - len(body.encode())  # the body ends the line; columns count UTF-8 bytes
    return _parsed(
        options, target, target_src, iterable_src, body, source, line_offset=0, column_shift=shift, future=future
    )


def parse_source(source: str, future: int = 0) -> ParsedCell:
    """A job's source parsed again (``rerun``): a ``%%azpar`` cell, a one-line ``%azpar`` loop, or a loop
    header (``run()``'s) with its body below."""
    first_line, _, body = source.partition("\n")
    if first_line.startswith(f"{LINE_FORM} ") and not body:
        return parse_one_line(first_line[len(LINE_FORM) :], future)
    line = first_line[len("%%azpar") :] if first_line.startswith("%%azpar") else first_line
    return parse_cell(line, body, future)


def _split_inline_body(clause: str) -> tuple[str, str]:
    """(``for TARGET in ITERABLE``, the text after its colon), both as written; the body is "" when the clause
    has no colon, or nothing after it."""
    text = clause.strip()
    try:
        tree = ast.parse(text)
    except SyntaxError:
        inline = None
    else:
        loop = tree.body[0] if len(tree.body) == 1 else None
        inline = loop.body[0].col_offset if isinstance(loop, ast.For) and loop.body[0].lineno == 1 else None
    if inline is None:  # no statement after the colon (or not a loop: parse_for_clause says why)
        return text, ""
    raw = text.encode()
    return raw[:inline].decode().rstrip(), raw[inline:].decode()


def _parsed(
    options: str,
    target: ast.expr,
    target_src: str,
    iterable_src: str,
    body: str,
    source: str,
    *,
    line_offset: int,
    column_shift: int = 0,
    future: int,
) -> ParsedCell:
    """The body checked and compiled, on the lines (and, for a one-line loop, the columns) of ``source``."""
    try:
        tree = ast.parse(body, filename=CELL_FILENAME)
    except SyntaxError as exc:
        where = f"line {exc.lineno + line_offset}" if exc.lineno else "the body"
        hint = ""
        if exc.text and _IPYTHON_SYNTAX.match(exc.text):
            hint = " IPython magics and shell escapes (% and !) cannot run inside a %%azpar body."
        raise CellError(f"Syntax error at {where} of the cell: {exc.msg}.{hint} Nothing was submitted.") from None
    if column_shift:
        for node in ast.walk(tree):
            if "col_offset" in node._attributes:
                node.col_offset += column_shift
                node.end_col_offset = (node.end_col_offset or 0) + column_shift
    check_body(tree, line_offset)
    code = build_runner_code(target, tree, line_offset, future)
    function_code = build_function_code(target, tree, line_offset, future)
    return ParsedCell(
        options=options,
        target_source=target_src,
        iterable_source=iterable_src,
        target_names=_names_bound_by(target),
        body=body,
        body_tree=tree,
        source=source,
        code=code,
        function_code=function_code,
    )


def _without_leading_indent(body: str) -> str:
    """The body with the indentation of its first line taken off every line that has it, as
    IPython does for a cell (its ``leading_indent`` transform): a body indented under the
    ``for`` of the magic line, as a loop's body is in Python, was a syntax error ("unexpected
    indent"). Lines keep their numbers; a body whose first line is not indented is unchanged."""
    lines = body.splitlines(keepends=True)
    first = next((text for text in lines if text.strip()), "")
    indent = first[: len(first) - len(first.lstrip(" \t"))]
    if not indent:
        return body
    return "".join(text[len(indent) :] if text.startswith(indent) else text for text in lines)


def is_variable_name(name: str) -> bool:
    """A name an assignment can bind: ``str.isidentifier`` also accepts keywords (``class``,
    ``None``), which no body can assign and no result can be bound to. Soft keywords
    (``match``, ``type``, ``_``) are ordinary names and pass."""
    return name.isidentifier() and not keyword.iskeyword(name)


def _binds_at_top(tree: ast.AST, augmented: bool = True) -> set[str]:
    """Names a body binds in its own (module) scope: assignment targets, imports, ``def``
    and ``class`` names, ``except ... as``, ``with ... as``, loop targets and walrus targets.
    Nested functions, lambdas and classes bind in their own scope; so do comprehensions,
    except for their walrus targets. ``augmented=False``: ``name += ...`` does not count (it
    reads the name first: without another binding, the notebook's value)."""
    names: set[str] = set()
    todo = list(ast.iter_child_nodes(tree))
    while todo:
        node = todo.pop()
        if not augmented and isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            todo.append(node.value)
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            todo.extend(node.decorator_list)
            continue
        if isinstance(node, ast.Lambda):
            continue
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            names.update(
                n.target.id for n in ast.walk(node) if isinstance(n, ast.NamedExpr) and isinstance(n.target, ast.Name)
            )
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
        todo.extend(ast.iter_child_nodes(node))
    return names


_DYNAMIC_BINDERS = {"globals", "exec", "vars", "locals", "setattr", "__import__"}


def _may_bind_dynamically(tree: ast.AST) -> bool:
    """Whether the body may bind names its text does not show (``globals()``, ``exec``,
    ``import *``): the warnings below then give it the benefit of the doubt."""
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    star = any(isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names) for n in ast.walk(tree))
    return star or bool(used & _DYNAMIC_BINDERS)


def body_warnings(cell: ParsedCell, gather: Iterable[str], gather_flag: str = "--gather") -> list[str]:
    """One-line warnings about a cell that runs but cannot give what was asked: a body with
    no statement (only comments) gives None for every iteration, and ``--gather NAME`` of a
    name the body never binds gives the same value (None, or the captured one) for every
    iteration. A body that may bind names dynamically (``globals()``, ``exec``, ``import *``)
    is given the benefit of the doubt."""
    if not cell.body_tree.body:
        return ["the loop body has no statement (only comments or blank lines): every iteration's value will be None"]
    gather = list(gather)
    if not gather:  # the walks below are for --gather alone (two passes over the body per cell otherwise)
        return []
    tree = cell.body_tree
    if _may_bind_dynamically(tree):
        return []
    bound = _binds_at_top(tree) | set(cell.target_names)
    missing = [name for name in gather if name not in bound]
    if not missing:
        return []
    listed = ", ".join(missing)
    verb = "assigns" if len(missing) == 1 else "assigns any of"
    return [
        f"{gather_flag} {listed}: the loop body never {verb} {listed}, so the gathered list will hold the same "
        "value (None unless the notebook defines it) for every iteration"
    ]


# Methods that change a list, dict, set, deque, array or frame in place.
_MUTATORS = frozenset(
    {"append", "extend", "insert", "add", "update", "setdefault", "pop", "popitem", "remove", "discard", "clear"}
    | {"sort", "reverse", "appendleft", "extendleft", "fill", "resize", "put", "itemset"}
)
# Values whose changes on a worker certainly stay there: plain data, not a module being configured
# nor an object that may keep its state elsewhere (a database handle, a client of a service).
_PLAIN_DATA = (list, dict, set, bytearray, collections.deque, int, float, complex, str, bytes, tuple, frozenset)
_PLAIN_DATA_MODULES = ("numpy", "pandas")


def _root_name(node: ast.AST) -> str | None:
    """``df`` for ``df.loc[i, "a"]``, ``d`` for ``d[k][j]``; None when the chain does not start at a name."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _changed_names(tree: ast.AST) -> list[str]:
    """Names whose objects the body changes or whose values it updates, in order of appearance:
    ``name += v``, ``name[k] = v``, ``name.attr = v``, ``del name[k]`` and ``name.append(v)`` (and
    the other in-place methods). Not inside nested functions and classes, whose names are their
    own, nor a comprehension's own variables (``[row.append(0) for row in rows]``)."""
    found: dict[str, tuple[int, int]] = {}  # name -> where the body first changes it

    def visit(node: ast.AST, own: frozenset[str]) -> None:
        for target in _targets(node):
            if isinstance(target, (ast.Attribute, ast.Subscript, ast.Call)):
                name = _root_name(target.func if isinstance(target, ast.Call) else target)
            elif isinstance(target, ast.Name) and isinstance(node, (ast.AugAssign, ast.Call)):
                name = target.id
            else:
                continue
            if name is not None and name not in own:
                where = (getattr(node, "lineno", 0), getattr(node, "col_offset", 0))
                found[name] = min(found.get(name, where), where)
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            own = own | {n.id for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                visit(child, own)

    visit(tree, frozenset())
    return sorted(found, key=found.__getitem__)


def _targets(node: ast.AST) -> list[ast.AST]:
    """What ``node`` changes: the targets of an (augmented) assignment or ``del``, tuples and
    starred targets unpacked, or the object an in-place method is called on."""
    if isinstance(node, ast.AugAssign):
        todo = [node.target]
    elif isinstance(node, (ast.Assign, ast.Delete)):
        todo = list(node.targets)
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        todo = [node.target]
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _MUTATORS:
        todo = [node.func.value]
    else:
        return []
    found: list[ast.AST] = []
    while todo:
        target = todo.pop(0)
        if isinstance(target, (ast.Tuple, ast.List)):
            todo[:0] = target.elts
        elif isinstance(target, ast.Starred):
            todo.insert(0, target.value)
        else:
            found.append(target)
    return found


def _rebound_names(tree: ast.Module, targets: Iterable[str]) -> list[str]:
    """Names an assignment of the body rebinds from the notebook's value, in order of appearance:
    ``best = max(best, x)``, ``df = pd.concat([df, row])``, ``total = total + x`` (the value reads
    the name before the body has bound it, so in a loop written for one process each iteration
    builds on the last), and any name the body declares ``global`` and binds. Only the body's own
    statements count, in the order they run (a branch's bindings are taken as made); nested
    functions and classes have names of their own."""
    declared: set[str] = set()
    seen, found = set(targets), []

    def stored(node: ast.AST | None) -> list[str]:  # the plain names a target binds (not d of d[k] = v)
        return (
            [n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)] if node else []
        )

    def reads(value: ast.AST) -> set[str]:
        read, todo = set(), [value]
        while todo:
            node = todo.pop()
            if isinstance(node, ast.Lambda):
                continue  # runs later, if at all, with names of its own
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                read.add(node.id)
            todo.extend(ast.iter_child_nodes(node))
        return read

    def visit(statements: list[ast.stmt]) -> None:
        for stmt in statements:
            if isinstance(stmt, ast.Global):
                declared.update(stmt.names)
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                seen.add(stmt.name)
                continue
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
                read = reads(stmt.value)
                for target in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                    for name in stored(target):
                        if (name in declared or (name in read and name not in seen)) and name not in found:
                            found.append(name)
            # Then what the statement binds: a compound one's header first, then its blocks in order.
            if isinstance(stmt, (ast.For, ast.AsyncFor)):
                seen.update(stored(stmt.target))
            elif isinstance(stmt, (ast.With, ast.AsyncWith)):
                seen.update(name for item in stmt.items for name in stored(item.optional_vars))
            blocks = [getattr(stmt, key) for key in ("body", "orelse") if isinstance(getattr(stmt, key, None), list)]
            for handler in getattr(stmt, "handlers", None) or []:
                blocks.append(handler.body)
                seen.update([handler.name] if handler.name else [])
            for case in getattr(stmt, "cases", None) or []:
                seen.update(_binds_at_top(ast.Module(body=[ast.Expr(case.pattern)], type_ignores=[])))
                blocks.append(case.body)
            blocks.extend([stmt.finalbody] if isinstance(getattr(stmt, "finalbody", None), list) else [])
            for block in blocks:
                visit(block)
            if not blocks:
                seen.update(_binds_at_top(ast.Module(body=[stmt], type_ignores=[])))

    visit(tree.body)
    return found


@functools.lru_cache(maxsize=64)
def _changes(cell: ParsedCell) -> tuple[str, ...]:
    """The notebook names whose change the body loses, in order of appearance: those it changes in
    place or updates (``_changed_names``) without binding them itself first (its loop targets are
    its own), and those it rebinds from their own value (``_rebound_names``). Read once per cell
    (parse_cell gives a cell run again the same ParsedCell); none for a body that may bind names
    dynamically, as ``body_warnings`` does."""
    tree = cell.body_tree
    changed = _changed_names(tree)
    rebound = _rebound_names(tree, cell.target_names)
    if not (changed or rebound) or _may_bind_dynamically(tree):
        return ()
    bound = _binds_at_top(tree, augmented=False) | set(cell.target_names)
    lost = [name for name in changed if name not in bound]
    return tuple(lost + [name for name in rebound if name not in lost])


def _plain_data(value: object) -> bool:
    return isinstance(value, _PLAIN_DATA) or type(value).__module__.split(".")[0] in _PLAIN_DATA_MODULES


# How the change warning's advice reads: in a cell, and for ``azpar_magic.run``.
CELL_ADVICE = "-o binds the list of values (--combine sum adds them, --combine dict keys them by item)"
API_ADVICE = 'the result is the list of values (combine="sum" adds them, combine="dict" keys them by item)'


def notebook_change_warnings(
    cell: ParsedCell, namespace: Mapping[str, object], gather: Iterable[str], advice: str = CELL_ADVICE
) -> list[str]:
    """A one-line warning when the body changes a notebook variable (``total += x``,
    ``results.append(x)``, ``d[k] = v``) that it never binds itself: the loop written for one
    process, whose effect is lost in parallel. Each iteration changes its worker's copy, the
    notebook's value never changes, and the cell binds a list of Nones: the commonest silent
    mistake when a loop is first moved to ``%%azpar``. Only plain data is named (lists, dicts,
    sets, numbers, strings, numpy and pandas objects): setting a module's attribute configures
    the worker, and an object of another kind may hold its state elsewhere."""
    lost = _changes(cell)
    gather = set(gather) | set(_declared_global(cell)) if lost else ()  # (global_warnings names those)
    names = [n for n in lost if n not in gather and n in namespace and _plain_data(namespace[n])]
    if not names:
        return []
    listed = ", ".join(names)
    which = "a notebook variable" if len(names) == 1 else "notebook variables"
    if _gives_a_value(cell) and not set(names) & set(_changed_names(cell.body_tree)):
        # `df = df[df.k == x]` then `len(df)`: the value is already the last expression, so that advice did not
        # fit; what differs from one process is where each iteration starts.
        return [
            f"the loop body rebinds {listed} ({which}) from its own value: each iteration starts from the "
            f"notebook's {listed}, where a loop in one process starts from what the previous iteration left, and "
            f"the notebook's {listed} will not change. If each iteration's own was meant, a new name for the "
            "result says so (and silences this warning)"
        ]
    return [
        f"the loop body changes {listed} ({which}): each iteration changes its own copy on a worker, and "
        f"the notebook's {listed} will not change. Make the value the body's last expression instead: {advice}"
    ]


def global_warnings(cell: ParsedCell, gather: Iterable[str], gather_flag: str = "--gather") -> list[str]:
    """A one-line warning when the body, or a function it defines, declares ``global NAME``: the
    declaration says "change the notebook's NAME", which a loop in one process does, but an iteration
    changes its worker's globals, and the notebook's NAME never changes. Silent before: the cell ended
    well and the notebook's value was the old one. A gathered name comes back, so it is not named."""
    declared = _declared_global(cell)
    if not declared:
        return []
    gathered = set(gather)
    names = [name for name in declared if name not in gathered]
    if not names:
        return []
    listed = ", ".join(names)
    return [
        f"the loop body declares global {listed}: an iteration sets {listed} on its worker, and the notebook's "
        f"{listed} will not change as in a loop run here. {gather_flag} {names[0]} binds each iteration's "
        f"{names[0]} as a list, or make the value the body's last expression"
    ]


@functools.lru_cache(maxsize=64)
def _declared_global(cell: ParsedCell) -> tuple[str, ...]:
    """The names ``global`` statements of the body (or of functions it defines) declare and that the body
    binds somewhere (a global only read changes nothing), in order; read once per cell, as ``_changes``."""
    declared: dict[str, None] = {}
    bound: set[str] = set()
    for node in ast.walk(cell.body_tree):
        if isinstance(node, ast.Global):
            declared.update(dict.fromkeys(node.names))
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return tuple(name for name in declared if name in bound)


def _gives_a_value(cell: ParsedCell) -> bool:
    """Whether the body ends with an expression (its value is the iteration's)."""
    return bool(cell.body_tree.body) and isinstance(cell.body_tree.body[-1], ast.Expr)


_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_OPERATOR = r"(?:===|==|>=|<=|~=|!=|<|>)"
_VERSION = r"[A-Za-z0-9.*+!_-]+"
_REQUIREMENT = re.compile(
    rf"{_NAME}\s*(?:\[\s*{_NAME}(?:\s*,\s*{_NAME})*\s*\])?\s*"
    rf"(?:{_OPERATOR}\s*{_VERSION}(?:\s*,\s*{_OPERATOR}\s*{_VERSION})*)?"
)
_CONTINUES_SPECIFIER = re.compile(rf"\s*{_OPERATOR}")


def checked_requirements(
    values: Iterable[str], spelling: str = "--packages", how: str = " (repeatable, or separated by commas)"
) -> list[str]:
    """``split_requirements``, refusing (CellError, a ValueError) anything pip would not read as a requirement:
    the one check behind the magic's ``--packages`` and ``map(packages=...)``; ``spelling`` and ``how`` say
    the option as the caller's user wrote it."""
    found = split_requirements(values)
    bad = [p for p in found if not is_requirement(p)]
    if bad:
        raise CellError(
            f"{spelling} takes pip requirements like numpy==1.26.4 or 'scipy>=1.11,<1.14'{how}; "
            f"{', '.join(map(repr, bad))} {'is' if len(bad) == 1 else 'are'} not. Nothing was submitted."
        )
    return found


def split_requirements(values: Iterable[str]) -> list[str]:
    """``--packages`` values (the option is repeatable) as pip requirements.

    A comma separates requirements only where a new requirement can start: not inside
    ``[extras]``, and not before a version operator, where it continues the requirement's
    specifier set as PEP 440 writes it (``x>=0.1,<0.2`` is one requirement,
    ``numpy==1.26.4,scipy`` two)."""
    found: list[str] = []
    for value in values:
        depth, start = 0, 0
        for at, char in enumerate(value):
            if char == "[":
                depth += 1
            elif char == "]":
                depth = max(0, depth - 1)
            elif char == "," and depth == 0 and not _CONTINUES_SPECIFIER.match(value, at + 1):
                found.append(value[start:at])
                start = at + 1
        found.append(value[start:])
    return [part.strip() for part in found if part.strip()]


def is_requirement(text: str) -> bool:
    """NAME[extras] with optional PEP 440 specifiers: what ``--packages`` installs by name
    (no URLs, paths or pip options, which would not be cached by hash on the nodes)."""
    return _REQUIREMENT.fullmatch(text.strip()) is not None
