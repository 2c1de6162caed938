"""Capture what a loop body needs from the kernel namespace and seal it in an envelope.

Only names the body (or the notebook code it calls) reads are shipped; everything else in
the namespace -- IPython's own state, unrelated large objects, unpicklable handles -- stays
home. Notebook-defined functions, classes, lambdas and closures travel by value (dill);
modules and objects from installed packages travel by reference, and the distributions
behind them are recorded so the worker can refuse a mismatched environment up front.
"""

from __future__ import annotations

import ast
import base64
import builtins
import dis
import functools
import importlib.machinery
import importlib.metadata
import inspect
import io
import itertools
import linecache
import math
import os
import pickle
import platform
import re
import socket
import sys
import textwrap
import threading
import time
import tokenize
import types
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import dill

from .. import verbosity, worker as wire
from ..errors import CaptureError
from . import environment, fingerprint
from .parsing import CELL_FILENAME, ParsedCell

# Never shipped, whatever the body reads: IPython's history and handles, and the shell.
IPYTHON_NAMES = frozenset(
    {
        "In",
        "Out",
        "_",
        "__",
        "___",
        "_i",
        "_ii",
        "_iii",
        "_oh",
        "_ih",
        "_dh",
        "_sh",
        "exit",
        "quit",
        "get_ipython",
        "display",
        "__builtins__",
        "__builtin__",
        "__name__",
        "__doc__",
        "__package__",
        "__loader__",
        "__spec__",
    }
)
_IPYTHON_HISTORY = re.compile(r"^_(i{1,3}|i?\d+)$")

# Objects that pickle (dill even pickles locks and open files) but mean nothing elsewhere.
_UNSHIPPABLE: dict[type, str] = {
    type(threading.Lock()): "a lock only synchronises threads of this process",
    type(threading.RLock()): "a lock only synchronises threads of this process",
    threading.Thread: "a thread belongs to this process",
    socket.socket: "a socket is a connection held by this process",
    types.GeneratorType: "a generator's paused state cannot be copied",
    types.CoroutineType: "a coroutine's paused state cannot be copied",
    types.AsyncGeneratorType: "an async generator's paused state cannot be copied",
    types.FrameType: "a frame belongs to this process's running code",
}


@dataclass
class Capture:
    """The namespace part of a job, ready to stage."""

    names: tuple[str, ...]
    codec: str
    data: bytes
    sha256: str
    packages: dict[str, str]
    local_modules: dict[str, str]
    sources: dict[str, str]
    function_mode: bool = False  # the body may run as a function (see function_mode_is_safe)
    size: int = 0  # len(data), kept when the bytes are dropped
    warnings: tuple[str, ...] = ()  # said before the job is submitted (engine.submit)
    # Names the body or the notebook functions it calls read that --no-export kept out: the workers
    # will not have them (a NameError at run time), said before the job is submitted.
    unshipped: tuple[str, ...] = ()
    # The random generators shipped ("`rng` (a numpy.random.Generator)"): every worker starts from
    # its own copy of their state, so workers draw the same numbers (engine.random_state_warnings).
    random_states: tuple[str, ...] = ()
    # The iterators shipped as notebook variables ("`ids` (itertools.count)"): each worker takes values
    # from its own copy, so iterations on different workers take the same ones (engine.shared_iterator_warnings).
    iterators: tuple[str, ...] = ()
    # Whether an iteration could change a shipped object in place (worker.namespace_is_changeable): a worker
    # then loads the namespace again for each job, and the local pool's mirror of its cache knows it.
    changeable: bool = True
    # The kernel's logging set-up the iterations' log records follow (``logging_setup``), or None.
    logging: dict | None = None
    # The kernel's settings the iterations follow (``interpreter_settings``): warning filters, numpy's errors, ...
    settings: dict | None = None
    # A digest of local_modules (``modules_digest``), "" when there are none: the local pool stages them
    # once per digest, and workers key their loaded copy by it, instead of carrying them in every job.
    local_modules_sha256: str = ""
    # Submodules the body and its functions reach through a shipped module's attributes, which the workers
    # import after loading the namespace (submodules_reached).
    submodules: tuple[str, ...] = ()
    # Compiled modules of the user's own the namespace refers to by name (a %%cython cell's, an extension
    # built in place beside the notebook), as {module: file}: found in this machine's folders only
    # (compiled_modules), which the local pool's workers add to their sys.path.
    compiled_modules: dict[str, str] = field(default_factory=dict)
    # Where azpar_magic's own objects travel (an earlier cell's failed iterations kept with --errors pass, a Job):
    # the names holding them, "the items" for the loop's items. Azure's nodes do not have azpar_magic
    # (engine.own_objects_message).
    own_objects: tuple[str, ...] = ()

    def without_data(self) -> Capture:
        """What was shipped, without the namespace bytes: what a job keeps. The bytes are
        staged once (a file, a blob) and never needed again in the kernel; kept by every
        remembered job, each run of a cell capturing a 100 MB array would add 100 MB."""
        return replace(self, data=b"")


def is_ipython_name(name: str) -> bool:
    return name in IPYTHON_NAMES or bool(_IPYTHON_HISTORY.match(name))


def _is_ipython_builtin(name: str, value: object) -> bool:
    """IPython puts wrappers of some builtins (``open``) into the user namespace, dressed
    as the builtin (functools.wraps); the worker has the real builtin, and the wrapper
    would drag IPython's state (sys.stdout, the shell) along."""
    if not hasattr(builtins, name) or isinstance(value, types.ModuleType):
        return False
    if (getattr(value, "__module__", None) or "").startswith("IPython"):
        return True
    try:
        return inspect.unwrap(value) is getattr(builtins, name) and value is not getattr(builtins, name)
    except ValueError:  # a __wrapped__ cycle
        return False


# --------------------------------------------------------------------------- free names


def _stored_names(nodes: Iterable[ast.AST], nested: bool = False) -> set[str]:
    """Names a scope binds (assignments, loop targets, imports, defs, and ``del``, which makes a name
    local to a function as an assignment does), not looking into the nested scopes it contains;
    ``nested``: those of every scope inside too, with their parameters and type parameters."""
    found: set[str] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            found.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
            if not nested:
                continue
        elif nested and isinstance(node, ast.arg):
            found.add(node.arg)
        elif nested and type(node).__name__ in _TYPE_PARAMS:  # def f[T](...), class Box[T] (3.12)
            found.add(node.name)  # type: ignore[attr-defined]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ExceptHandler) and node.name:
            found.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:  # case {"k": v}: v is bound
            found.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            found.add(node.rest)
        elif not nested and isinstance(node, (ast.Lambda, *_COMPREHENSIONS)):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_TYPE_PARAMS = frozenset({"TypeVar", "ParamSpec", "TypeVarTuple"})  # ast's, from Python 3.12


def _scope_reads(node: ast.AST, local: frozenset[str] = frozenset()) -> set[str]:
    """Global names read by ``node``, nested scopes included: a name counts when no
    enclosing function, lambda or comprehension binds it (``local`` holds those)."""
    if isinstance(node, ast.Name):
        return {node.id} if isinstance(node.ctx, (ast.Load, ast.Del)) and node.id not in local else set()
    reads: set[str] = set()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        args = node.args
        for expr in [
            *args.defaults,
            *(d for d in args.kw_defaults if d is not None),
            *getattr(node, "decorator_list", []),
        ]:
            reads |= _scope_reads(expr, local)
        params = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg] if a}
        body = node.body if isinstance(node.body, list) else [node.body]
        inner = local | params | _stored_names(body)
        for stmt in body:
            reads |= _scope_reads(stmt, frozenset(inner))
        return reads
    if isinstance(node, _COMPREHENSIONS):
        targets = _stored_names(g.target for g in node.generators)
        reads |= _scope_reads(node.generators[0].iter, local)
        inner = frozenset(local | targets)
        for gen in node.generators:
            if gen is not node.generators[0]:
                reads |= _scope_reads(gen.iter, inner)
            for cond in gen.ifs:
                reads |= _scope_reads(cond, inner)
        for part in ("elt", "key", "value"):
            if hasattr(node, part):
                reads |= _scope_reads(getattr(node, part), inner)
        return reads
    if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and node.target.id not in local:
        reads.add(node.target.id)
    for child in ast.iter_child_nodes(node):
        reads |= _scope_reads(child, local)
    return reads


def _unconditional_bindings(stmt: ast.stmt) -> set[str]:
    """Names a top-level statement always binds (conditional blocks bind nothing sure)."""
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        if isinstance(stmt, ast.AnnAssign) and stmt.value is None:
            return set()
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names if a.name != "*"}
    return set()


def free_names(tree: ast.Module, target_names: Iterable[str]) -> set[str]:
    """Names the body reads before (or without) binding them itself, minus the loop target."""
    return _flow(tree.body, set(target_names))[0]


def _flow(statements: list[ast.stmt], bound: set[str]) -> tuple[set[str], set[str]]:
    """(the names ``statements`` read before they are surely bound, the names surely bound after them),
    from ``bound`` on. What ``with``, ``if`` and ``try`` blocks bind on every way through them counts, in
    order: ``with open(path) as fh: rows = ...`` then ``len(rows)`` reads neither from the notebook, where
    the notebook's ``rows`` was shipped with every job (or refused, unpicklable). Loops may run no time:
    what they bind is not sure."""
    needed: set[str] = set()
    bound = set(bound)
    for stmt in statements:
        if isinstance(stmt, (ast.With, ast.AsyncWith)):
            for item in stmt.items:
                needed |= _scope_reads(item.context_expr) - bound
                if item.optional_vars is not None:
                    needed |= _scope_reads(item.optional_vars) - bound  # (an attribute or item target reads)
                    bound |= _stored_names([item.optional_vars])
            inner_needed, inner_bound = _flow(stmt.body, bound)
            needed |= inner_needed
            if not _may_suppress(stmt):  # (else the block may end at any statement, the rest carried on)
                bound = inner_bound
        elif isinstance(stmt, ast.If):
            needed |= _scope_reads(stmt.test) - bound
            body_needed, body_bound = _flow(stmt.body, bound)
            else_needed, else_bound = _flow(stmt.orelse, bound)
            needed |= body_needed | else_needed
            ways = [
                b for block, b in ((stmt.body, body_bound), (stmt.orelse, else_bound)) if not _ends_the_iteration(block)
            ]
            bound = set.intersection(*ways) if ways else bound  # (``else: continue``: the other way is the only one)
        elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            body_needed, body_bound = _flow(stmt.body, bound)
            else_needed, else_bound = _flow(stmt.orelse, body_bound)
            needed |= body_needed | else_needed
            ways = [else_bound]
            for handler in stmt.handlers:  # (it may start from any statement of the body: from ``bound``)
                if handler.type is not None:
                    needed |= _scope_reads(handler.type) - bound
                own = {handler.name} if handler.name else set()
                handler_needed, handler_bound = _flow(handler.body, bound | own)
                needed |= handler_needed
                if not _ends_the_iteration(handler.body):
                    ways.append(handler_bound - own)  # (Python deletes ``except E as e``'s name at its end)
            final_needed, final_bound = _flow(stmt.finalbody, bound)
            needed |= final_needed
            bound = set.intersection(*ways) | final_bound
        elif isinstance(stmt, (ast.For, ast.AsyncFor, ast.While)):  # (nothing sure after: it may run no time)
            header = stmt.test if isinstance(stmt, ast.While) else ast.Tuple([stmt.iter, stmt.target], ast.Load())
            needed |= _scope_reads(header) - bound
            own = set() if isinstance(stmt, ast.While) else _stored_names([stmt.target])
            needed |= _flow(stmt.body, bound | own)[0] | _flow(stmt.orelse, bound)[0]
        else:
            needed |= _scope_reads(stmt) - bound
            bound |= _unconditional_bindings(stmt)
    return needed, bound


# Context managers that may swallow the exception of their block (``contextlib.suppress``, pytest's
# ``raises``, unittest's ``assertRaises``): after them, what the block binds is not sure.
_SUPPRESSING = frozenset({"suppress", "raises", "assertRaises", "assertRaisesRegex", "ExitStack", "AsyncExitStack"})


def _may_suppress(stmt: ast.With | ast.AsyncWith) -> bool:
    for item in stmt.items:
        call = item.context_expr.func if isinstance(item.context_expr, ast.Call) else item.context_expr
        name = call.id if isinstance(call, ast.Name) else call.attr if isinstance(call, ast.Attribute) else None
        if name is None or name in _SUPPRESSING:
            return True
    return False


def _ends_the_iteration(block: list[ast.stmt]) -> bool:
    """A block (a handler, a branch) that raises or goes on to the next item: no statement after its ``try``
    or ``if`` runs from it."""
    return bool(block) and isinstance(block[-1], (ast.Raise, ast.Continue, ast.Break, ast.Return))


# Names whose use means the body inspects or changes its own scope.
_SCOPE_INTROSPECTION = frozenset({"eval", "exec", "globals", "locals", "vars", "dir", "__import__"})


def function_mode_is_safe(tree: ast.Module, target_names: Iterable[str], global_reads: set[str]) -> bool:
    """Whether running the body as a function gives exactly what running it as a
    notebook cell (module code) gives. In a function the body's assignments are locals;
    that is only invisible when no code reads those names as globals: not the notebook
    functions it calls, not the body itself before it binds them, not introspection."""
    if any(isinstance(node, (ast.Global, ast.Nonlocal)) for node in tree.body):
        return False
    # Functions and classes defined in a function get "<locals>" qualified names, which
    # show in reprs and change how they pickle: keep the notebook's names.
    if any(
        isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)) for node in ast.walk(tree)
    ):
        return False
    if any(isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names) for node in ast.walk(tree)):
        return False
    assigned = _stored_names(tree.body) | set(target_names)
    if assigned & free_names(tree, target_names) or assigned & global_reads:
        return False
    return not (_scope_reads(tree) & _SCOPE_INTROSPECTION)


_NAMESPACE_VIEWS = frozenset({"globals", "vars"})
_LOOKUP_METHODS = frozenset({"get", "__getitem__", "setdefault", "pop", "__contains__"})


def _is_namespace_view(node: ast.AST) -> bool:
    """``globals()`` or ``vars()`` (no argument: the module's namespace)."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _NAMESPACE_VIEWS
        and not node.args
        and not node.keywords
    )


def _literal(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def namespace_lookups(tree: ast.AST) -> tuple[set[str], bool]:
    """Names the body reads through its namespace rather than as names: (the literal ones,
    ``globals()["df"]`` or ``vars().get("df")``, whether it uses ``globals()``/``vars()`` in
    any other way, whose names cannot be known before it runs)."""
    literal: set[str] = set()
    consumed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _is_namespace_view(node.value):
            key = _literal(node.slice)
            if key is not None:
                literal.add(key)
                consumed.add(id(node.value))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _LOOKUP_METHODS
            and _is_namespace_view(node.func.value)
            and node.args
        ):
            key = _literal(node.args[0])
            if key is not None:
                literal.add(key)
                consumed.add(id(node.func.value))
    dynamic = any(_is_namespace_view(node) and id(node) not in consumed for node in ast.walk(tree))
    return literal, dynamic


def imported_modules(tree: ast.AST) -> set[str]:
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            mods.add(node.module)
    return mods


# ------------------------------------------------------------- what captured code reaches


class _CodeGlobals(NamedTuple):
    """What a code object and those nested in it do with globals (``_code_globals``)."""

    names: frozenset[str]  # loaded, as globals or (a class body's) by name
    modules: frozenset[str]  # imported
    chains: frozenset[tuple[str, ...]]  # attribute chains read from a global: ``xml.dom.minidom``, ("xml", "dom", ...)
    global_loads: frozenset[str]  # loaded as globals only (a class body's LOAD_NAME may read what the class bound)
    global_stores: frozenset[str]  # assigned or deleted as globals (`global cache; cache = ...`)


@functools.lru_cache(maxsize=4096)
def _code_globals(code: types.CodeType) -> _CodeGlobals:
    """What ``code`` and the code nested in it load, import and assign as globals. Kept per code object:
    10,000 closures one notebook function made share their code, and reading it took ~20 us each time."""
    names: set[str] = set()
    mods: set[str] = set()
    chains: set[tuple[str, ...]] = set()
    loads: set[str] = set()
    stores: set[str] = set()
    chain: list[str] = []
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            name = ins.argval if isinstance(ins.argval, str) else str(ins.argval)
            names.add(name)
            if ins.opname == "LOAD_GLOBAL":
                loads.add(name)
            if len(chain) > 1:
                chains.add(tuple(chain))
            chain = [name]
            continue
        if chain and ins.opname in ("LOAD_ATTR", "LOAD_METHOD") and isinstance(ins.argval, str):
            chain.append(ins.argval)
            continue
        if chain and ins.opname in ("EXTENDED_ARG", "CACHE", "NOP"):
            continue  # (an attribute read whose name index needs more than a byte comes after EXTENDED_ARG)
        if len(chain) > 1:
            chains.add(tuple(chain))
        chain = []
        if ins.opname == "IMPORT_NAME":
            mods.add(ins.argval)
        elif ins.opname in ("STORE_GLOBAL", "DELETE_GLOBAL"):
            stores.add(str(ins.argval))
    if len(chain) > 1:
        chains.add(tuple(chain))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            inner = _code_globals(const)
            names |= inner.names
            mods |= inner.modules
            chains |= inner.chains
            loads |= inner.global_loads
            stores |= inner.global_stores
    return _CodeGlobals(frozenset(names), frozenset(mods), frozenset(chains), frozenset(loads), frozenset(stores))


def attribute_chains(tree: ast.AST) -> set[tuple[str, ...]]:
    """The dotted reads of a body (``xml.dom.minidom.parseString`` as ("xml", "dom", "minidom",
    "parseString")): those through a module tell which of its submodules the body reaches."""
    chains = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                parts.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name):
                chains.add((value.id, *reversed(parts)))
    return chains


def submodules_reached(chains: Iterable[tuple[str, ...]], scope: Mapping[str, object]) -> set[str]:
    """The submodules a chain of attribute reads goes through from a module of ``scope``: ``import
    xml.dom.minidom`` binds ``xml``, and ``xml.dom`` exists in the kernel only because that import made
    it. A worker importing ``xml`` alone has no ``xml.dom``: the body failed with AttributeError (``import
    urllib.request``, ``import sklearn.metrics`` alike). Read from the modules' own dicts: a package
    that loads its submodules lazily (``__getattr__``) does so on the worker too."""
    found: set[str] = set()
    for root, *attrs in chains:
        module = scope.get(root)
        for attr in attrs:
            if not isinstance(module, types.ModuleType):
                break
            value = vars(module).get(attr)
            if not isinstance(value, types.ModuleType) or value.__name__ != f"{module.__name__}.{attr}":
                break
            found.add(value.__name__)
            module = value
    return found


class _Reach:
    """Walks captured values to find the further notebook names and modules they need."""

    def __init__(self, namespace: Mapping[str, object]):
        self.namespace = namespace
        self.main_dict = getattr(sys.modules.get("__main__"), "__dict__", None)
        self.names: set[str] = set()
        self.global_reads: set[str] = set()  # every global name reachable notebook code loads
        self.modules: set[str] = set()
        self.submodules: set[str] = set()  # reached through a module's attributes (submodules_reached)
        self.sources: dict[str, str] = {}
        self.walked: set[int] = set()  # ids of the objects visited
        self._files_looked_at: set[str] = set()  # code files looked at for sources
        # Notebook functions' reads of globals that nothing defines ({function: names}), and the code of every
        # notebook function reached (one that assigns a global, `global cache; cache = ...`, defines it for another).
        self.undefined_reads: dict[str, set[str]] = {}
        self.notebook_code: dict[int, types.CodeType] = {}  # (by id: 10,000 closures share one code object)

    def _is_notebook(self, obj: object) -> bool:
        return getattr(obj, "__module__", None) == "__main__"

    def _name_in_namespace(self, obj: object) -> None:
        """A notebook class reached through an instance travels under its own name, so
        the worker's instances and results are of the very class the user defined."""
        name = getattr(obj, "__qualname__", "")
        if self.namespace.get(name) is obj and not is_ipython_name(name):
            self.names.add(name)

    def visit(self, obj: object, depth: int = 0) -> None:
        if id(obj) in self.walked or depth > 4:
            return
        self.walked.add(id(obj))
        if isinstance(obj, types.ModuleType):
            self.modules.add(obj.__name__)
        elif isinstance(obj, types.MethodType):
            self.visit(obj.__func__, depth + 1)
            self.visit(obj.__self__, depth + 1)
        elif isinstance(obj, types.FunctionType):
            if self._is_notebook(obj) or "<locals>" in obj.__qualname__ or obj.__name__ == "<lambda>":
                self._visit_function(obj, depth)
            else:
                self.modules.add(obj.__module__ or "")
        elif isinstance(obj, functools.partial):
            self.visit(obj.func, depth + 1)
            for arg in (*obj.args, *obj.keywords.values()):
                self.visit(arg, depth + 1)
        elif isinstance(obj, type):
            if self._is_notebook(obj):
                self._name_in_namespace(obj)
                for base in obj.__mro__[1:]:
                    self.visit(base, depth + 1)
                for member in vars(obj).values():
                    for fn in (
                        member,
                        getattr(member, "__func__", None),
                        getattr(member, "fget", None),
                        getattr(member, "fset", None),
                    ):
                        if isinstance(fn, types.FunctionType):
                            self._visit_function(fn, depth)
            else:
                self.modules.add(obj.__module__ or "")
        elif isinstance(obj, (list, tuple, set, frozenset)):
            if len(obj) <= 1000:
                for value in obj:
                    self.visit(value, depth + 1)
        elif isinstance(obj, dict):
            if len(obj) <= 1000:
                for value in obj.values():
                    self.visit(value, depth + 1)
        else:
            cls = type(obj)
            if self._is_notebook(cls):
                self.visit(cls, depth + 1)
                attrs = getattr(obj, "__dict__", None)
                if isinstance(attrs, dict) and len(attrs) <= 1000:
                    for value in attrs.values():
                        self.visit(value, depth + 1)
            else:
                self.modules.add(cls.__module__ or "")

    def _visit_function(self, fn: types.FunctionType, depth: int) -> None:
        names, mods, chains, _, _ = _code_globals(fn.__code__)
        self.modules |= mods
        self.global_reads |= names
        if chains:
            self.submodules |= submodules_reached(chains, fn.__globals__)
        if fn.__globals__ is self.namespace or fn.__globals__ is self.main_dict:
            self.notebook_code[id(fn.__code__)] = fn.__code__
            undefined = False
            for name in names:
                if name in self.namespace:
                    if not is_ipython_name(name) and not _is_ipython_builtin(name, self.namespace[name]):
                        self.names.add(name)
                elif _defined_nowhere(name, fn.__globals__):
                    undefined = True
            if undefined:  # (rare: only then is the code read again, for what it loads and assigns as globals)
                self._note_undefined(fn)
        filename = fn.__code__.co_filename
        if filename not in self._files_looked_at:  # (once a file: a stat each of 10,000 closures cost ~8 ms)
            self._files_looked_at.add(filename)
            import linecache

            lines = linecache.getlines(filename)
            if lines and not os.path.isfile(filename):
                self.sources[filename] = "".join(lines)
        for cell in fn.__closure__ or ():
            try:
                self.visit(cell.cell_contents, depth + 1)
            except ValueError:  # an empty cell
                pass
        for default in (*(fn.__defaults__ or ()), *(fn.__kwdefaults__ or {}).values()):
            self.visit(default, depth + 1)

    def _note_undefined(self, fn: types.FunctionType) -> None:
        """The globals ``fn`` loads that nothing defines, unless it may reach globals its code does not spell
        (``globals()``, ``exec``) or reads them inside a ``try`` that catches NameError."""
        loads = _code_globals(fn.__code__).global_loads
        found = {n for n in loads if _defined_nowhere(n, self.namespace, fn.__globals__)}
        if found and not loads & _BINDING_CALLS and (found := found - _guarded_reads_of(fn)):
            self.undefined_reads.setdefault(fn.__qualname__, set()).update(found)


def resolve_names(
    namespace: Mapping[str, object], wanted: Iterable[str], exclude: Iterable[str] = ()
) -> tuple[dict[str, object], _Reach]:
    """The transitive set of namespace entries the body needs, keyed by name."""
    exclude = set(exclude)
    reach = _Reach(namespace)
    chosen: dict[str, object] = {}
    pending = [
        n
        for n in wanted
        if n in namespace and n not in exclude and not is_ipython_name(n) and not _is_ipython_builtin(n, namespace[n])
    ]
    while pending:
        name = pending.pop()
        if name in chosen:
            continue
        chosen[name] = namespace[name]
        before = set(reach.names)
        reach.visit(namespace[name])
        pending.extend(n for n in reach.names - before if n not in exclude and n not in chosen)
    return chosen, reach


# ---------------------------------------------------------------------- serialisation


def _unshippable_reason(obj: object) -> str | None:
    for cls, why in _UNSHIPPABLE.items():
        if isinstance(obj, cls):
            return why
    if isinstance(obj, types.ModuleType):
        return _unimportable_module_reason(obj)
    # (a file-like class defines fileno; a DataFrame answers for columns named fileno, mode and closed)
    if isinstance(obj, io.IOBase) or (hasattr(type(obj), "fileno") and hasattr(obj, "mode") and hasattr(obj, "closed")):
        return "an open file is a handle held by this process (ship its path, or its contents, instead)"
    managers = sys.modules.get("multiprocessing.managers")  # loaded whenever a proxy exists
    if managers is not None and isinstance(obj, managers.BaseProxy):
        # It pickles, and then fails on the worker ("digest sent was rejected"): a proxy reconnects
        # to its manager with the key of the process tree that started it, which workers azpar
        # starts do not hold, nor can a node in Azure reach this machine's manager.
        return (
            "a multiprocessing manager's proxy connects back to its manager in this process's "
            "tree, which the workers cannot reach (return each iteration's result as the body's value)"
        )
    return None


_SHIPPABLE_TYPES: set[type] = set()  # types every instance of which _unshippable_reason passes

# Modules the notebook holds that sys.modules does not know by their name, by that name: their file. Modules
# travel by name (the worker imports them), and one loaded with importlib's module_from_spec and
# exec_module without a `sys.modules[name] = module` failed on the workers with ModuleNotFoundError
# after the job was submitted. A file of the user's own is shipped as the notebook's local modules are
# (_module_source); the newest module met under a name gives its file.
_UNREGISTERED_FILES: dict[str, str] = {}


def _unimportable_module_reason(module: types.ModuleType) -> str | None:
    """Why ``module`` cannot be imported by its name on a worker, or None. None when sys.modules has it under
    its name, or when it is not the user's own (a file of the interpreter's folders, a module with a spec:
    by name, as before, wherever it came from); a user's .py file loaded under a name without dots is recorded
    in _UNREGISTERED_FILES (its file travels). Refused: a user's file under a dotted name, and a module made at
    run time (``types.ModuleType('cfg')``: no spec, no file, nothing to send)."""
    name = module.__name__
    if not isinstance(name, str) or sys.modules.get(name) is module or name in ("__main__", "builtins"):
        return None
    path = getattr(module, "__file__", None)
    if isinstance(path, str) and path.endswith(".py"):
        if _installed_place(os.path.realpath(path), _interpreter_prefixes()) or not os.path.isfile(path):
            return None
        if name.isidentifier():
            _UNREGISTERED_FILES[name] = path
            return None
        return (
            f"the module {name!r} was loaded from {path} under a name sys.modules does not know, and the workers "
            "import modules by name: load it under a name without dots (its file then travels with the job), or "
            "import it from a folder on sys.path"
        )
    if path is not None or getattr(module, "__spec__", None) is not None or hasattr(module, "__path__"):
        return None  # (a compiled module, a namespace package: by name, as before)
    return (
        f"the module {name!r} was made at run time (it has no file, and sys.modules does not know it), and "
        "the workers import modules by name: keep what the body needs in a dict, a class or "
        "types.SimpleNamespace instead"
    )


def _refuse_unshippable(obj: object) -> None:
    kind = type(obj)
    if kind in _SHIPPABLE_TYPES:  # (this runs for every object an item or value pickles into)
        return
    why = _unshippable_reason(obj)
    if why:
        raise CaptureError(f"{kind.__module__}.{kind.__qualname__}: {why}")
    # Every instance gets the same answer when what it answers is its class's, or when its class is no
    # file (no fileno: the look for one asked each DataFrame for a column of that name, ~10 us apiece).
    if wire.attributes_are_the_types(obj) or (not hasattr(kind, "fileno") and wire.answers_by_type(obj)):
        _SHIPPABLE_TYPES.add(kind)


def random_state_kind(obj: object) -> str | None:
    """The kind of a random generator whose state travels with it (``random.Random``, numpy's
    ``Generator``, ``RandomState``, bit generators), or None. ``SystemRandom`` keeps no state."""
    random = sys.modules.get("random")  # (looked up, not imported: this runs for every object pickled)
    if random is not None and isinstance(obj, random.Random):
        return None if isinstance(obj, random.SystemRandom) else "random.Random"
    np_random = sys.modules.get("numpy.random")  # no numpy generator exists before numpy is imported
    if np_random is not None and isinstance(obj, (np_random.Generator, np_random.RandomState, np_random.BitGenerator)):
        return f"numpy.random.{type(obj).__name__}"
    return None


class _Inspector:
    """Hook given to both picklers: refuses process-bound objects, records packages used,
    the random generators shipped (each worker starts from its own copy of their state) and the
    notebook's functions and classes pickled (``names_inside``)."""

    def __init__(self) -> None:
        self.modules: set[str] = set()
        self.random_states: set[str] = set()
        self.notebook: list[object] = []

    def __call__(self, obj: object) -> None:
        _refuse_unshippable(obj)
        kind = random_state_kind(obj)
        if kind is not None:
            self.random_states.add(kind)
        if isinstance(obj, types.ModuleType):
            self.modules.add(obj.__name__)
        elif isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
            module = getattr(obj, "__module__", None) or ""
            self.modules.add(module)
            if module == "__main__":
                self.notebook.append(obj)
        else:
            self.modules.add(type(obj).__module__ or "")
            if callable(obj):  # a compiled function (a %%cython cell's) names its module as a function does
                module = getattr(obj, "__module__", None)
                if isinstance(module, str):
                    self.modules.add(module)


INSIDE_PASSES = 3  # serialisations again for names found inside (each adds what the last one reached)


def names_inside(
    notebook_objects: Iterable[object], namespace: Mapping[str, object], walked: Collection[int] = ()
) -> set[str]:
    """The notebook names that notebook functions and classes met while pickling need (``reach_inside``)."""
    return reach_inside(notebook_objects, namespace, walked).names


def reach_inside(
    notebook_objects: Iterable[object], namespace: Mapping[str, object], walked: Collection[int] = ()
) -> _Reach:
    """What notebook functions and classes met while pickling reach: the names they need, their own
    (when the namespace holds them under it) and those their code reads, as for the body's, and every
    global name their code reads (``global_reads``: the body runs as a function only if it binds none
    of them). ``_Reach`` walks the objects it knows how to look into; what a pickle reaches inside other
    objects (a datetime whose tzinfo is of a notebook class, a defaultdict's factory, a
    ``functools.partial`` or a lambda among the items) went by value without what its code reads: a
    NameError on the workers. ``walked``: the ids of objects a walk has looked at already (what they
    read is chosen)."""
    reach = _Reach(namespace)
    for obj in notebook_objects:
        if id(obj) in walked:
            continue
        reach._name_in_namespace(obj)  # (a function as well as a class: the items may name it)
        reach.visit(obj)
    return reach


def _own_objects(chosen: Mapping[str, object], modules: set[str], item_kinds: set[str]) -> tuple[str, ...]:
    """The chosen names whose objects are azpar_magic's own, and "the items" when the items are (only looked
    at when the pickle named an azpar_magic module: each such name pickled again alone, on that path only)."""

    def ours(names: Iterable[str]) -> bool:
        return any(m.partition(".")[0] == "azpar_magic" for m in names)

    found = []
    if ours(modules):
        for name, value in chosen.items():
            inspector = _Inspector()
            try:
                wire.dumps(value, hook=inspector)
            except Exception:  # noqa: BLE001 - it pickled as part of the namespace; alone it is not the one
                continue
            if ours(inspector.modules):
                found.append(f"`{name}`")
    if ours(item_kinds):
        found.append("the items")
    return tuple(found)


def serialize(namespace: dict[str, object]) -> tuple[str, bytes, set[str]]:
    """Serialise the chosen namespace; on failure name the variable, its type and why."""
    codec, data, inspector = serialize_inspected(namespace)
    return codec, data, inspector.modules


def serialize_inspected(namespace: dict[str, object]) -> tuple[str, bytes, _Inspector]:
    """:func:`serialize`, with what its inspector saw (modules used, random generators): the
    capture's one serialisation of a namespace, which tests count."""
    inspector = _Inspector()
    try:
        # Large arrays out of band: a worker maps them from its copy of the file (issue 16, i).
        codec, data = wire.dumps(namespace, hook=inspector, out_of_band=True)
        return codec, data, inspector
    except Exception:
        pass
    for name, value in namespace.items():  # find the culprit to name it
        try:
            wire.dumps(value, hook=_Inspector())
        except Exception as exc:
            reason = (str(exc) if isinstance(exc, CaptureError) else f"{type(exc).__name__}: {exc}").rstrip(".")
            reason += _culprit_words(culprit_path(name, value, lambda part: not _ships(part, _Inspector())), reason)
            readers = _functions_reading(name, namespace)
            by = f"; {_listed(readers)} read{'s' if len(readers) == 1 else ''} it" if readers else ""
            raise CaptureError(
                f"The loop body needs the variable `{name}` ({type(value).__module__}."
                f"{type(value).__qualname__}{by}), which cannot be sent to the workers: {reason}. "
                f"Create it inside the loop body instead, or pass --no-export {name} if the body "
                "does not really use it. Nothing was submitted."
            ) from None
    raise CaptureError("The namespace could not be serialised (no single variable is at fault).")


def _functions_reading(name: str, namespace: dict[str, object]) -> list[str]:
    """The notebook functions of ``namespace`` whose code reads the global ``name`` (in nested code
    too), as ``helper`` reading a connection: the error then says why a body that never names it needs it."""
    found = []
    for key, value in namespace.items():
        code = getattr(value, "__code__", None)
        if isinstance(value, types.FunctionType) and code is not None and name in _code_globals(code)[0]:
            found.append(f"`{key}`" if key == value.__name__ else f"`{key}` ({value.__name__})")
    return found


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _ships(value: object, hook: Callable[[object], None], **options: Any) -> bool:
    """Whether ``value`` alone serialises as a namespace or an item would (only on the error path)."""
    try:
        wire.dumps(value, hook=hook, **options)
    except Exception:
        return False
    return True


_PARTS_LOOKED_AT = 200  # of each container or object: a path is worth a few hundred tries, not a walk of a large list


def culprit_path(
    name: str, value: object, fails: Callable[[object], bool], depth: int = 8
) -> tuple[str, object] | None:
    """Where inside ``value`` (the variable ``name``) the part that cannot be sent is, as the body would
    spell it (``model.lock``, ``config['conn']``, ``jobs[2].handle``), with that part; None when
    ``value`` itself is the culprit or no single part of it fails. It goes down into the first part that
    fails on its own, serialising each part again: only when a capture has already failed. A class
    holding a lock named only the lock's type, and a notebook's model has many attributes."""
    path, current = name, value
    try:
        for _ in range(depth):
            for label, part in _parts(current):
                if type(part) in _ATOMIC or _plain_array(part):  # (they always serialise)
                    continue
                if fails(part):
                    path, current = path + label, part
                    break
            else:
                break
    except Exception:  # noqa: BLE001 - an odd object (a mapping that raises on lookup): the path so far
        pass
    return (path, current) if current is not value else None


def _plain_array(part: object) -> bool:
    """A numpy array of numbers (not of objects): it always serialises, and may be large to try."""
    dtype = getattr(part, "dtype", None)
    return type(part).__module__ == "numpy" and dtype is not None and getattr(dtype, "hasobject", True) is False


def _culprit_words(where: tuple[str, object] | None, reason: str) -> str:
    """`` (at `m.lock`)`` for a message saying ``reason``, with the part's type unless the reason names it."""
    if where is None:
        return ""
    kind = f"{type(where[1]).__module__}.{type(where[1]).__qualname__}"
    return f" (at `{where[0]}`)" if type(where[1]).__qualname__ in reason else f" (at `{where[0]}`, a {kind})"


def _parts(obj: object) -> list[tuple[str, object]]:
    """``obj``'s parts with how the body reaches each: a mapping's values, a sequence's elements, an
    object's attributes (``__dict__`` and ``__slots__``)."""
    if isinstance(obj, Mapping):
        return [(f"[{key!r}]", obj[key]) for key in list(obj)[:_PARTS_LOOKED_AT]]
    if isinstance(obj, (list, tuple)):
        return [(f"[{i}]", part) for i, part in enumerate(obj[:_PARTS_LOOKED_AT])]
    if isinstance(obj, (type, types.ModuleType, types.FunctionType)):
        return []  # pickled by reference or by their code: their attributes are not the culprit's path
    parts = [(f".{key}", part) for key, part in list(getattr(obj, "__dict__", {}).items())[:_PARTS_LOOKED_AT]]
    slots = getattr(type(obj), "__slots__", ())
    for slot in (slots,) if isinstance(slots, str) else slots:
        if isinstance(slot, str) and hasattr(obj, slot) and not slot.startswith("__"):
            parts.append((f".{slot}", getattr(obj, slot)))
    return parts


# -------------------------------------------------------------------- package versions


def _module_to_distributions() -> Mapping[str, list[str]]:
    return _module_table(installed_signature())


_METADATA_SUFFIXES = (".dist-info", ".egg-info", ".egg-link", ".pth")
_folder_metadata: dict[str, tuple[int | None, frozenset[str]]] = {}


def installed_signature() -> tuple:
    """sys.path with the installed-distribution entries (``*.dist-info``, ``.pth`` files...) of
    each folder: what the tables below are computed from. A folder's mtime alone is not enough
    of a key: the notebook's own folder is on sys.path, and saving the notebook (or any file
    there) changed it, which rebuilt the module table, 0.5-0.7 s, at the next cell (issue 16).
    A folder is listed again only when its mtime changed, so a warm cell costs a stat per entry;
    a ``pip install`` (a new or renamed ``.dist-info``) still changes the signature."""
    out = []
    for entry in sys.path:
        folder = entry or "."
        try:
            mtime: int | None = os.stat(folder).st_mtime_ns
        except OSError:
            mtime = None
        cached = _folder_metadata.get(folder)
        if cached is None or cached[0] != mtime:
            try:
                names = frozenset(n for n in os.listdir(folder) if n.endswith(_METADATA_SUFFIXES))
            except OSError:
                names = frozenset()
            cached = _folder_metadata[folder] = (mtime, names)
        out.append((entry, cached[0] is not None, cached[1]))
    return tuple(out)


@functools.lru_cache(maxsize=2)
def _module_table(_stamp: tuple) -> Mapping[str, list[str]]:
    """Top-level module name -> distributions providing it.

    Python 3.10's packages_distributions() reads only top_level.txt, which wheels built
    by newer backends (numpy's meson-python, for one) do not have; the installed file list
    tells the same thing, so it is the fallback here on every version."""
    table: dict[str, list[str]] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        tops = set((dist.read_text("top_level.txt") or "").split())
        if not tops:
            for path in dist.files or ():
                parts = path.parts
                if not parts or parts[0] in ("..", ".") or parts[0].endswith((".dist-info", ".data")):
                    continue
                if len(parts) > 1 or path.suffix in (".py", ".so", ".pyd"):
                    tops.add(parts[0] if len(parts) > 1 else path.name.split(".")[0])
        for top in tops:
            table.setdefault(top, []).append(name)
    return table


@functools.lru_cache(maxsize=2)
def _editable_roots(_stamp: tuple) -> tuple[tuple[str, str], ...]:
    """(source folder, distribution) of each editable install (PEP 610 ``direct_url.json`` with
    ``dir_info.editable``). Its RECORD lists a ``.pth`` file or an import hook, not the modules,
    so the table above cannot name it; a module whose file lies in that folder is its (issue 15:
    the user's package under development must travel too)."""
    roots = []
    for dist in importlib.metadata.distributions():
        info = environment.direct_url(dist) or {}
        path = environment.file_url_path(info.get("url") or "")
        if (info.get("dir_info") or {}).get("editable") and path is not None and dist.metadata["Name"]:
            roots.append((os.path.realpath(path), dist.metadata["Name"]))
    return tuple(roots)


def _editable_distribution(top: str) -> str | None:
    """The editable install whose source folder holds the imported module ``top``, if any."""
    module = sys.modules.get(top)
    where = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", None) or ()), None)
    if not where:
        return None
    where = os.path.realpath(where)
    for root, name in _editable_roots(installed_signature()):
        if where.startswith(root.rstrip(os.sep) + os.sep):
            return name
    return None


def _stdlib_names() -> frozenset[str]:
    names = getattr(sys, "stdlib_module_names", None)
    if names is None:  # Python 3.9 and older do not list them
        names = sys.builtin_module_names
    return frozenset(names) | {"__main__", "builtins", "__builtin__", ""}


def distributions_for(modules: Iterable[str]) -> dict[str, str]:
    """name -> version of the installed distributions behind the given modules. A cell using no
    module outside the standard library never builds the module table (a third of a second on
    a kernel's first cell, which a cell over plain data need not pay: issue 16, g)."""
    stdlib = _stdlib_names()
    tops = [
        top
        for top in dict.fromkeys(module.split(".")[0] for module in modules)
        if not (top in stdlib or top.startswith("_") and top[1:] in stdlib)
    ]
    if not tops:
        return {}
    table = _module_to_distributions()
    found: dict[str, str] = {}
    for top in tops:
        editable = None if top in table else _editable_distribution(top)
        for dist in table.get(top) or ([editable] if editable else []):
            try:
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
    found.pop("azpar-magic", None)  # the worker file is shipped; the package is not needed
    return found


# ----------------------------------------------------------------------- local modules


def local_module_files(modules: Iterable[str], folder: str) -> dict[str, str]:
    """Source of modules imported from the notebook's own folder, keyed by relative path,
    with the local modules those import in turn; and of the user's own modules the notebook
    imported through a folder it put on ``sys.path`` (``sys.path.append("../src")``), keyed by
    their path below that folder.

    They are not installed anywhere the workers could import them from, so they travel
    with the job (a package folder travels whole). A worker's ``sys.path`` is its own: a module
    found through the notebook's addition failed there with ModuleNotFoundError, on the local
    pool as on Azure."""
    files: dict[str, str] = {}
    pending = sorted({m.split(".")[0] for m in modules})
    if not pending:  # most cells: no realpath calls (three per cell showed in a warm cell's profile)
        return files
    folder = os.path.realpath(folder)
    prefixes = _interpreter_prefixes()
    done: set[str] = set()
    while pending:
        name = pending.pop()
        if name in done:
            continue
        done.add(name)
        path = _module_source(name, folder, prefixes)
        if path is not None:  # a module, or a package: its folder
            units = [os.path.dirname(path) if os.path.basename(path) == "__init__.py" else path]
        else:  # a namespace package (PEP 420, no __init__.py): each of its folders that is the user's
            units = _namespace_portions(name, folder, prefixes)
        for unit in units:
            # Keyed from the folder the import found it in (name.py, name/ there): a module in the notebook's
            # folder as before, one in src/ put on sys.path as src/'s, which the worker's import of the same
            # name then finds.
            root = os.path.dirname(unit)
            if unit.endswith(".py"):
                sources = [unit]
            else:
                sources = [os.path.join(d, f) for d, _dirs, names in os.walk(unit) for f in names if f.endswith(".py")]
            below = root.rstrip(os.sep) + os.sep  # (a slice: relpath made both paths absolute again, per file)
            for full in sources:
                try:
                    text, imports = _module_file(full)
                except OSError:  # not a file one can read (a module inside a zip on sys.path): not shipped
                    continue
                rel = full[len(below) :] if full.startswith(below) else os.path.relpath(full, root)
                if unit.endswith(".py") and rel != name + ".py":  # a file loaded under another name
                    rel = name + ".py"  # (spec_from_file_location('helpers', 'helpers_v2.py')): imported as that
                files.setdefault(rel.replace(os.sep, "/"), text)
                pending.extend(imports)
    return files


def compiled_modules(modules: Iterable[str]) -> dict[str, str]:
    """The user's own compiled modules among ``modules`` ({name: file}): a ``%%cython`` cell's
    (``_cython_magic_<hash>``, under IPython's cache folder) or an extension built in place beside the
    notebook. Shipped by name, they were found nowhere on the workers' ``sys.path``: every iteration
    failed with ModuleNotFoundError. Installed ones (under the interpreter's prefixes, in site-packages,
    or a distribution's, an editable install's too) are not the user's own."""
    found: dict[str, str] = {}
    for name in modules:
        if "." in name or name in _NEVER_LOCAL:
            continue
        path = getattr(sys.modules.get(name), "__file__", None)
        if not isinstance(path, str) or not path.endswith(_EXTENSION_SUFFIXES):
            continue
        real = os.path.realpath(path)
        if _installed_place(real, _interpreter_prefixes()):
            continue
        if name in _module_to_distributions() or _editable_distribution(name):
            continue  # an editable install's extension: the nodes install the distribution (environment.py)
        found[name] = real
    return found


_EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


@functools.lru_cache(maxsize=1)
def _interpreter_prefixes() -> tuple[str, ...]:
    """The interpreter's own folders (real paths): what is below them is installed, never the user's own."""
    return tuple(os.path.realpath(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})


def _installed_place(path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether the real path ``path`` is where installed code lives: below the interpreter's prefixes, or in
    a site-packages or dist-packages folder."""
    parts = path.split(os.sep)
    return path.startswith(prefixes) or "site-packages" in parts or "dist-packages" in parts


def _namespace_portions(name: str, folder: str, prefixes: tuple[str, ...]) -> list[str]:
    """The folders of ``name`` when it is a namespace package of the user's own (PEP 420: a folder of
    modules without ``__init__.py``, ``from utils import helpers``): beside the notebook, or found through
    a ``sys.path`` folder of the user's. They were not shipped, and every iteration failed with
    ModuleNotFoundError. Portions of installed namespace packages (``google``) are never shipped."""
    if name in _NEVER_LOCAL:
        return []
    module = sys.modules.get(name)
    if module is not None:
        if getattr(module, "__file__", None) is not None:
            return []
        portions = list(getattr(module, "__path__", None) or ())
    else:  # imported by the body only: a folder beside the notebook, as the kernel's import would find it
        candidate = os.path.join(folder, name)
        if not os.path.isdir(candidate) or name in _stdlib_names() or name in _module_to_distributions():
            return []
        portions = [candidate]
    found = []
    for portion in portions:
        try:
            path = os.path.realpath(portion)
        except (OSError, ValueError, TypeError):
            continue
        if _installed_place(path, prefixes):
            continue
        if os.path.dirname(path) == folder or (module is not None and _on_user_path(name, path, prefixes)):
            found.append(path)
    return found


# path -> (the file's stat stamp, its text, the top-level modules it imports), for the files
# local_module_files shipped: each is read and parsed again only once it changed. A package of 300
# modules beside the notebook was read and parsed whole by every cell that used it, ~60 ms a cell
# (issue 16). It keeps one version of each file, the user's own source the jobs ship anyway.
_module_files: dict[str, tuple[tuple[int, int, int, int], str, tuple[str, ...]]] = {}
_RACY_NS = 2_000_000_000


def _module_file(path: str) -> tuple[str, tuple[str, ...]]:
    """The text of the module file ``path`` and the top-level names of the modules it imports."""
    st = os.stat(path)
    stamp = _stamp(st)
    known = _module_files.get(path)
    if known is not None and known[0] == stamp:
        return known[1], known[2]
    with open(path, "rb") as fh:
        raw = fh.read()
    encoding = "utf-8"
    try:  # as Python reads it: a coding comment (PEP 263) or a BOM, else UTF-8 (the worker writes it back so)
        encoding = tokenize.detect_encoding(io.BytesIO(raw).readline)[0]
        text = raw.decode(encoding)
    except (SyntaxError, UnicodeDecodeError, LookupError) as exc:
        raise CaptureError(
            f"{path} cannot travel to the workers: it is a module of the notebook's own, and its text cannot be "
            f"read as {encoding} ({exc}). Save it as UTF-8, or declare its encoding on its first line "
            "(`# -*- coding: latin-1 -*-`). Nothing was submitted."
        ) from None
    try:
        imports = tuple(sorted({m.split(".")[0] for m in imported_modules(ast.parse(text)) if m}))
    except SyntaxError:
        imports = ()  # the worker's import will report it, as the notebook's did
    if _settled(st):
        _module_files[path] = (stamp, text, imports)
    return text, imports


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells a file's versions apart without reading it (the caches of _module_file, _differs_from_file)."""
    return st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino


def _settled(st: os.stat_result) -> bool:
    """Whether a file's stamp may stand for its content: not written within the last two seconds, where a
    second write in the same tick of the file system's clock, of the same size, would leave it as it was."""
    return time.time_ns() - st.st_mtime_ns > _RACY_NS


def modules_digest(files: Mapping[str, str]) -> str:
    """A sha256 that names this set of shipped modules (relative paths and texts). Each text is hashed
    once while this process holds it (``_text_sha256``), so a cell shipping the same package again pays a
    dictionary look-up per file, not a serialisation and hash of the whole package."""
    return wire.sha256("".join(f"{rel}\0{_text_sha256(text)}\n" for rel, text in sorted(files.items())).encode())


@functools.lru_cache(maxsize=4096)
def _text_sha256(text: str) -> str:
    # Keyed by the text itself: the same string object comes back from _module_files for a file that did
    # not change, and a string keeps its hash, so a look-up is an identity check.
    return wire.sha256(text.encode())


def stale_local_modules(files: Mapping[str, str]) -> list[str]:
    """The shipped local modules (``local_module_files``' relative paths) whose file changed since this
    kernel imported them: the workers run each file as it is now, the notebook the code it imported, so
    the cell's values could differ from the same loop run here. Told by comparing the code of the
    functions and methods the module defines with the file compiled again (once per version of the file):
    Python keeps nothing else of what it imported, and its bytecode cache is not always written
    (PYTHONDONTWRITEBYTECODE). A module that defines no function is not judged."""
    stale = []
    for rel in files:
        name = rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        try:
            if path and _differs_from_file(module, path):
                stale.append(name)
        except Exception:  # noqa: BLE001 - an odd module (a lazy attribute that raises) is not judged, never fatal
            continue
    return stale


def _differs_from_file(module: types.ModuleType, path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    # The verdict holds while the file keeps its stamp and the module its import: a reload (importlib's,
    # %autoreload's) gives the module a new __spec__. A package of 100 modules the kernel imported was
    # compiled again and compared function by function at every cell, ~20 ms (issue 16).
    stamp, spec = _stamp(st), getattr(module, "__spec__", None)
    known = _verdicts.get(path)
    if known is not None and known[0] == stamp and known[1] is module and known[2] is spec:
        return known[3]
    compiled = _compiled_functions(path, st.st_mtime_ns, st.st_size)
    differs = compiled is not None and any(
        not any(code == c for c in compiled.get(code.co_name, ())) for code in _defined_code(module, path)
    )
    if _settled(st):
        _verdicts[path] = (stamp, module, spec, differs)
    return differs


# path -> (the file's stat stamp, the module judged, its __spec__ then, whether it differed): see above.
_verdicts: dict[str, tuple[tuple[int, int, int, int], types.ModuleType, object, bool]] = {}


@functools.lru_cache(maxsize=2048)
def _compiled_functions(path: str, mtime_ns: int, size: int) -> dict[str, list[types.CodeType]] | None:
    """The code objects of the functions (at any depth) of ``path`` compiled as its import would, by name."""
    try:
        with open(path, "rb") as fh:
            code = compile(fh.read(), path, "exec", dont_inherit=True)
    except (OSError, SyntaxError, ValueError):
        return None
    found: dict[str, list[types.CodeType]] = {}
    todo = [code]
    while todo:
        for const in todo.pop().co_consts:
            if isinstance(const, types.CodeType):
                found.setdefault(const.co_name, []).append(const)
                todo.append(const)
    return found


def _defined_code(module: types.ModuleType, path: str) -> Iterable[types.CodeType]:
    """The code of the functions, and of the methods of the classes, that ``module`` defines in ``path``."""
    for value in list(vars(module).values()):
        candidates = (
            list(vars(value).values()) if isinstance(value, type) and value.__module__ == module.__name__ else [value]
        )
        for obj in candidates:
            code = getattr(getattr(obj, "__func__", obj), "__code__", None)
            if isinstance(code, types.CodeType) and code.co_filename == path:
                yield code


def _stale_module_warning(names: list[str]) -> str:
    listed = ", ".join(names)
    reload = "; ".join(f"importlib.reload({n})" for n in names)
    return (
        f"{listed} changed on disk since this kernel imported {'it' if len(names) == 1 else 'them'}: the workers "
        f"run the file{'s' if len(names) > 1 else ''} as it is now, this notebook the code it imported, so the values "
        f"may differ from the same loop run here; {reload} (or %autoreload) makes them agree"
    )


_NEVER_LOCAL = frozenset({"__main__", __name__.split(".")[0]})  # the notebook/script itself; this package


def _module_source(name: str, folder: str, prefixes: tuple[str, ...]) -> str | None:
    """The .py file (or package __init__.py) of module ``name`` if it is the user's own code: it lives
    in ``folder``, or the notebook reached it through a folder it put on ``sys.path``
    (``_on_user_path``). The notebook or script itself (``__main__``) is captured, not shipped as a
    module, and this package is never shipped: the worker file is all a node needs of it."""
    if name in _NEVER_LOCAL:
        return None
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if module is None and name in _UNREGISTERED_FILES:  # (the notebook's own module_from_spec)
        path = os.path.realpath(_UNREGISTERED_FILES[name])
        return None if _installed_place(path, prefixes) else path
    if module is None:
        candidates = [os.path.join(folder, name + ".py"), os.path.join(folder, name, "__init__.py")]
        path = next((c for c in candidates if os.path.isfile(c)), None)
        if path is None:  # not beside the notebook: where the kernel's import would find it
            return _found_on_user_path(name, prefixes)
    if not path:
        return None
    path = os.path.realpath(path)  # (one per module the cell uses: most are under the prefixes)
    if path.startswith(prefixes) or not path.endswith(".py"):
        return None
    if os.path.dirname(os.path.dirname(path) if path.endswith(os.sep + "__init__.py") else path) == folder:
        return path  # beside the notebook
    # Elsewhere, also in a subfolder of the notebook's folder: only when imported through a sys.path
    # folder of the user's, and not an installed distribution (one kept beside the notebook is a
    # package to install, as it was).
    return path if module is not None and _on_user_path(name, path, prefixes) else None


def _found_on_user_path(name: str, prefixes: tuple[str, ...]) -> str | None:
    """The file of a module the kernel has not imported (the body imports it itself) when the kernel's
    ``sys.path`` finds it in a folder of the user's (``sys.path.insert(0, "../src")``), without importing it.
    A body's ``import helpers`` of such a module failed on every worker with ModuleNotFoundError, where the
    loop run in the notebook imported it. The path finder's caches of the folders make it ~10 us."""
    from importlib.machinery import PathFinder

    try:
        spec = PathFinder.find_spec(name)
    except Exception:  # an odd sys.path entry, an unreadable folder: what the import would meet, not the capture's
        return None
    origin = getattr(spec, "origin", None)
    if not isinstance(origin, str) or not origin.endswith(".py"):
        return None
    path = os.path.realpath(origin)
    if _installed_place(path, prefixes):
        return None
    return path if _on_user_path(name, path, prefixes) else None


def _on_user_path(name: str, path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether module ``name`` (its file ``path``, outside the interpreter's prefixes) was found through
    a ``sys.path`` folder of the user's: not a site-packages or dist-packages folder, or through the
    current folder's entry ('') before the notebook changed folder; and the module is not an installed
    distribution (an editable install is a package to install, as before)."""
    relative = False  # a sys.path entry that follows the current folder: '' (a kernel's), '.'
    for entry in sys.path:
        if not isinstance(entry, str):
            continue
        relative = relative or not os.path.isabs(entry)
        try:
            root = os.path.realpath(entry or ".")
        except (OSError, ValueError):
            continue
        if _installed_place(root, prefixes):
            continue
        if path.startswith(root.rstrip(os.sep) + os.sep):
            break
    else:
        # Below no folder on sys.path now: the kernel found it through '' in the folder it was in then, and
        # the notebook has changed folder since (os.chdir("data")). It was not shipped: ModuleNotFoundError.
        if not relative or _installed_place(path, prefixes):
            return False
    return not (name in _module_to_distributions() or _editable_distribution(name))


# ---------------------------------------------------------------------------- capture


_ATOMIC = frozenset({int, float, complex, str, bytes, bool, type(None)})
_CONTAINERS = (tuple, list, set, frozenset, dict)


def notebook_objects_in(items: Iterable[object], namespace: Mapping[str, object], depth: int = 3) -> set[str]:
    """Names of notebook functions and classes that items are, contain, or are instances
    of: the worker must have them under those names, so items unpickle as the very
    objects the body and the notebook's functions use."""
    items = items if isinstance(items, list) else list(items)
    if set(map(type, items)) <= _ATOMIC:  # C-speed: a million ints cost milliseconds
        return set()
    found: set[str] = set()
    seen: set[int] = set()
    budget = [100_000]  # objects inspected at most, so huge nested items stay cheap
    inert: set[type] = set()  # classes whose instances are not, hold nor are of notebook objects
    looked_up: set[type] = set()  # classes looked for in the namespace already

    def look_up(candidate: object) -> None:
        # (the module first: asking a DataFrame for a __qualname__ it lacks looks through its columns)
        if getattr(candidate, "__module__", None) == "__main__":
            name = getattr(candidate, "__qualname__", None)
            if isinstance(name, str) and namespace.get(name) is candidate:
                found.add(name)

    if _instances_of_plain_attributes(items):  # 10,000 instances of a notebook dataclass: ~0.6 us each
        look_up(type(items[0]))
        return found

    def visit(obj: object, level: int) -> None:
        kind = type(obj)
        if budget[0] <= 0 or kind in _ATOMIC or kind in inert:
            return
        if (
            kind.__module__ != "__main__"
            and not issubclass(kind, (type, *_CONTAINERS))
            and wire.attributes_are_the_types(obj)
        ):
            inert.add(kind)  # (a date's __module__ is its class's; it has no __qualname__ of its own)
            return
        budget[0] -= 1
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if kind not in looked_up:  # once per class: 10,000 instances of a notebook dataclass asked 10,000 times
            looked_up.add(kind)
            look_up(kind)
        if isinstance(obj, type) or callable(obj):  # a class or a function may be an entry itself
            look_up(obj)
        if level >= depth:
            return
        if isinstance(obj, _CONTAINERS):
            parts: Iterable[object] = obj.values() if isinstance(obj, dict) else obj
        elif kind.__module__ == "__main__":
            parts = _attribute_values(obj)
        else:
            return
        for part in parts:
            if type(part) not in _ATOMIC:
                visit(part, level + 1)

    for item in items:
        visit(item, 0)
    return found


def _attribute_values(obj: object) -> list:
    """The values of ``obj``'s attributes: its ``__dict__``'s and its slots' (a dataclass(slots=True))."""
    values = list((getattr(obj, "__dict__", None) or {}).values())
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__"):
                try:
                    values.append(getattr(obj, name))
                except AttributeError:  # (a slot never set)
                    pass
    return values


def _instances_of_plain_attributes(items: list) -> bool:
    """Whether ``items`` are instances of one class whose attributes are all in their ``__dict__`` (no
    slots, no container base) and hold atoms only, told at C speed: then nothing inside them is the
    notebook's, and only their class need be looked for."""
    kinds = set(map(type, items))
    if len(kinds) != 1:
        return False
    (kind,) = kinds
    if issubclass(kind, (type, *_CONTAINERS)) or not kind.__dictoffset__:
        return False
    if any("__slots__" in cls.__dict__ for cls in kind.__mro__) or not wire.answers_by_type(items[0]):
        return False
    from itertools import chain
    from operator import methodcaller

    try:
        held = set(map(type, chain.from_iterable(map(methodcaller("values"), map(vars, items)))))
    except TypeError:  # (an instance without a __dict__ after all)
        return False
    return held <= _ATOMIC


def item_modules(items: Iterable[object], depth: int = 3, budget: int = 10_000) -> set[str]:
    """Modules of the types of the items and of what their containers hold (numpy arrays,
    pandas rows from ``iterrows()``): the worker unpickles items too, so the distributions
    behind them travel like the body's (issue 15). Distinct types are few, so a bounded look
    at the items finds them; atomic items cost one pass at C speed."""
    items = items if isinstance(items, list) else list(items)
    kinds = set(map(type, items))  # (C speed: 10,000 instances of one class are one type, looked at once)
    if kinds <= _ATOMIC:
        return set()
    found = {kind.__module__ or "" for kind in kinds - _ATOMIC}
    containers = {kind for kind in kinds if issubclass(kind, _CONTAINERS)}
    left = [budget]

    def visit(obj: object, level: int) -> None:
        if left[0] <= 0 or type(obj) in _ATOMIC:
            return
        left[0] -= 1
        found.add(type(obj).__module__ or "")
        if level < depth and isinstance(obj, _CONTAINERS):
            for part in list(obj.items() if isinstance(obj, dict) else obj)[:100]:
                visit(part, level + 1)

    for item in items if containers else ():
        if type(item) in containers:
            visit(item, 0)
    return {m for m in found if m and m != "builtins" and m != "__main__"}


def capture(
    cell: ParsedCell,
    namespace: Mapping[str, object],
    *,
    export: Iterable[str] = (),
    no_export: Iterable[str] = (),
    folder: str | None = None,
    items: Iterable[object] = (),
    stored: Callable[[str, int], bytes | None] | None = None,
    plain: bool = False,
    items_from: frozenset[str] = frozenset(),
    also_read: frozenset[str] = frozenset(),
) -> Capture:
    """Choose, check and serialise what ``cell`` needs from ``namespace``.

    ``stored(sha256, size)``, when given, returns the bytes of a namespace kept earlier (or None):
    when the chosen objects are unchanged since a capture that gave those bytes (``fingerprint``),
    they are reused instead of pickled and hashed again (issue 16: an identical cell over a 100 MB
    array cost a full copy and its sha256, to stage nothing new). ``plain``: the caller found the
    items plain data (``worker.plain_pickle``) or numpy's scalars and arrays, so nothing in them is
    looked through; ``items_from``: then, the modules their classes come from (numpy's). ``also_read``:
    global names that notebook code inside the items reads (the body runs as a function only if it
    binds none of them, as for the code it calls)."""
    export = list(export)
    missing = [n for n in export if n not in namespace]
    if missing:
        raise CaptureError(
            f"--export names {', '.join(missing)}, which the namespace does not define. Nothing was submitted."
        )
    free, looked_up, dynamic, body_imports, body_chains = _body_facts(cell.body_tree, cell.target_names)
    items = items if isinstance(items, list) else list(items)  # looked through twice below
    wanted = (
        set(free)
        | set(export)
        | (set() if plain else notebook_objects_in(items, namespace))
        | {name for name in looked_up if name in namespace}
    )
    for _ in range(1 + INSIDE_PASSES):  # notebook code inside other objects goes with what it reads
        chosen, reach = resolve_names(namespace, wanted, exclude=no_export)
        for name in export:
            chosen[name] = namespace[name]
        codec, data, used_modules, sha, random_kinds, inside, inside_reads = _serialize_or_reuse(chosen, stored, reach)
        more = inside - chosen.keys() - set(no_export)
        if not more:
            break
        wanted |= more
    unshipped = (
        tuple(sorted(n for n in set(no_export) & (wanted | reach.names) if n in namespace and n not in chosen))
        if no_export
        else ()
    )
    item_kinds = set(items_from) if plain else item_modules(items)
    modules = used_modules | reach.modules | body_imports | item_kinds
    folder = folder or os.getcwd()
    local = local_module_files(modules, folder)
    local_tops = {path.split("/")[0].removesuffix(".py") for path in local}
    packages = distributions_for(m for m in modules if m.split(".")[0] not in local_tops)
    return Capture(
        function_mode=bool(cell.function_code)
        and _function_mode_is_safe(
            cell.body_tree, cell.target_names, frozenset(reach.global_reads) | inside_reads | also_read
        ),
        names=tuple(sorted(chosen)),
        codec=codec,
        data=data,
        size=len(data),
        sha256=sha,
        packages=packages,
        local_modules=local,
        local_modules_sha256=modules_digest(local) if local else "",
        submodules=tuple(sorted(submodules_reached(body_chains, namespace) | reach.submodules)),
        compiled_modules=compiled_modules(modules),
        own_objects=_own_objects(chosen, used_modules | reach.modules, item_kinds),
        sources=reach.sources,
        warnings=((_DYNAMIC_LOOKUP_WARNING,) if dynamic else ())
        + ((_stale_module_warning(stale),) if (stale := stale_local_modules(local)) else ())
        + ((_history_warning(history),) if (history := _history_reads(free, namespace)) else ())
        + ((_undefined_warning(undefined),) if (undefined := _undefined_reads(cell, free, namespace)) else ())
        + ((_undefined_in_functions_warning(found),) if (found := _undefined_in_functions(cell, reach)) else ()),
        unshipped=unshipped,
        random_states=_random_state_holders(chosen, random_kinds),
        iterators=_shipped_iterators(chosen),
        changeable=wire.namespace_is_changeable(chosen.values()),
        logging=logging_setup(chosen),
        settings=interpreter_settings(),
    )


# azpar's own loggers, and the Azure SDK's request log that `%azpar verbose http` turns on in the kernel.
_OWN_LOGGERS = (verbosity.PACKAGE_LOGGER, verbosity.HTTP_LOGGER)


def logging_setup(chosen: Mapping[str, object]) -> dict | None:
    """How the notebook shows log records, for the workers to do the same (None: as Python does
    unconfigured, which the workers do anyway). A notebook's ``logging.basicConfig(level=INFO)`` or
    ``log.setLevel(DEBUG)`` on a logger the body uses made the sequential loop print records that the
    workers, configured by nobody, dropped (below WARNING) or printed bare: the root logger's level and
    the format of its first stream handler (what the notebook prints), and the levels set on the
    loggers the body is given (and, with that handler, on any other logger but azpar's). A handler
    writing to a file is not copied: a node has no such file; nor is a formatter of its own class
    (its records are written in basicConfig's default format). With no handler, the root logger's level
    alone still counts: ``logging.getLogger().setLevel(INFO)``, then ``logging.info(...)`` in the loop, which
    makes basicConfig's handler in the notebook and on the worker alike, printed in the notebook only."""
    logging = sys.modules.get("logging")
    if logging is None:
        return None
    levels = {
        value.name: value.level
        for value in chosen.values()
        if isinstance(value, logging.Logger) and value.level and value is not logging.root
    }
    handler = next(
        (h for h in logging.root.handlers if type(h) is logging.StreamHandler and h.stream in (sys.stdout, sys.stderr)),
        None,
    )
    root_level = logging.root.level
    if handler is None and not levels and root_level == logging.WARNING:
        return None
    setup: dict = {"levels": levels}
    if handler is None and root_level != logging.WARNING:
        setup["root_level"] = root_level
    if handler is not None:  # then the levels the notebook set on any logger (`urllib3` quietened) count too
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger) and logger.level and not name.startswith(_OWN_LOGGERS):
                levels.setdefault(name, logger.level)
        formatter = handler.formatter or logging.Formatter()
        fmt = formatter._fmt or "%(message)s"
        style = "%" if "%(" in fmt else "{" if "{" in fmt else "$" if "$" in fmt else "%"
        try:  # a Formatter subclass (colours, JSON) may read fields the plain one cannot fill
            if type(formatter) is not logging.Formatter:
                raise ValueError(type(formatter).__name__)
            logging.Formatter(fmt, formatter.datefmt, style=style)  # type: ignore[arg-type]
        except ValueError:
            fmt, style = logging.BASIC_FORMAT, "%"
        setup.update(
            level=logging.root.level,
            handler_level=handler.level,
            format=fmt,
            datefmt=formatter.datefmt,
            style=style,
            stream="stdout" if handler.stream is sys.stdout else "stderr",
        )
    return setup


# The kernel's own packages: their warning filters (IPython's completer, the kernel's event loop) are about the
# kernel, and importing them on a worker to rebuild a filter would cost a worker hundreds of milliseconds.
_KERNEL_PACKAGES = frozenset(
    {"IPython", "ipykernel", "ipywidgets", "jupyter_client", "jupyter_core", "traitlets", "tornado", "zmq", "comm"}
    | {"debugpy", "azpar_magic"}
)
_FILTERS_SEEN: list = [None, None]  # (the kernel's warnings.filters as a tuple, their portable form)


def interpreter_settings() -> dict:
    """The kernel's settings that change what the loop's iterations do, which the sequential loop follows and
    the workers did not (they followed their own):

    - warning filters (``warnings.filterwarnings("ignore")``, ``simplefilter("error")``): a notebook that
      silenced warnings got every iteration's printed, one that made them errors got prints;
    - numpy's floating-point error handling (``np.seterr(all="ignore")``, ``divide="raise"``) and its print
      options (``np.set_printoptions(precision=3, suppress=True)``: a body printing an array printed it otherwise);
    - ``decimal``'s context (``getcontext().prec = 50``): other digits, silently;
    - the recursion limit (``sys.setrecursionlimit(10_000)``): a RecursionError on the workers only;
    - the integer string conversion limit (``sys.set_int_max_str_digits(0)``): a ValueError there only;
    - whether the notebook shows matplotlib figures inline (``figures``): ``plt.show()`` in a body printed
      ``Figure(640x480)``, and figures a body left open were never shown;
    - pandas' options, once the notebook has imported pandas (``pd.set_option("display.max_columns", None)``,
      ``pd.options.future.infer_string = False``): a body printing a frame printed it the workers' way, and
      the ``future.*``, ``mode.*`` and ``compute.*`` options change values (:func:`pandas_options`).

    Filters are given as plain data in one JSON string (each category by its module and name, rebuilt on the
    worker; the kernel's own packages' filters left out) made once per change of ``warnings.filters`` (a tuple
    comparison a cell otherwise); the others only when they differ from Python's defaults."""
    import warnings

    key = tuple(warnings.filters)
    if key != _FILTERS_SEEN[0]:
        filters = []
        for action, message, category, module, lineno in key:
            where = getattr(category, "__module__", "builtins") or "builtins"
            if where.partition(".")[0] in _KERNEL_PACKAGES:
                continue
            kind = f"{where}:{category.__qualname__}"
            filters.append([action, _portable_pattern(message), kind, _portable_pattern(module), lineno])
        # One JSON string, made once per change: a cell's envelope then carries a string (~0.5 us to write and
        # read) where the list of lists cost the kernel and every worker ~5 us each, at every job.
        _FILTERS_SEEN[:] = [key, wire.json_dumps(filters)]
    settings: dict = {"filters": _FILTERS_SEEN[1]}
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        try:
            errors = numpy.geterr()
        except Exception:  # a numpy that is half imported, or a stand-in module
            errors = wire.NUMPY_DEFAULT_ERRORS
        if errors != wire.NUMPY_DEFAULT_ERRORS:
            settings["numpy_errors"] = dict(errors)
        printing = _numpy_print_options(numpy)
        if printing:
            settings["numpy_print"] = printing
    decimal = sys.modules.get("decimal")
    if decimal is not None:
        context = decimal.getcontext()
        if _decimal_key(context) != _default_decimal_key():  # (~1 us; as two dicts it was ~4 us a cell)
            settings["decimal"] = _decimal_settings(context)
    if sys.getrecursionlimit() != _DEFAULT_RECURSION_LIMIT:
        settings["recursion_limit"] = sys.getrecursionlimit()
    digits = getattr(sys, "get_int_max_str_digits", None)  # Python 3.11+ (and 3.10.7+)
    if digits is not None and digits() != _DEFAULT_INT_DIGITS:
        settings["int_max_str_digits"] = digits()
    if _shows_figures_inline():
        settings["figures"] = True
    pandas_config = sys.modules.get("pandas._config.config")  # (never imported for this)
    if pandas_config is not None:
        options = pandas_options(pandas_config)
        if options:
            settings["pandas"] = options
    return settings


def _numpy_print_options(numpy: types.ModuleType) -> dict:
    """numpy's print options that differ from its defaults (``np.set_printoptions(precision=3, suppress=True)``),
    those that travel as JSON (a ``formatter`` or ``override_repr`` function is not followed). ~0.5 us a cell."""
    try:
        now = numpy.get_printoptions()
    except Exception:  # noqa: BLE001 - a numpy that is half imported, or a stand-in module
        return {}
    defaults = wire.NUMPY_DEFAULT_PRINT
    if now == defaults:
        return {}
    return {
        key: value
        for key, value in now.items()
        if key in defaults and value != defaults[key] and (value is None or type(value) in (bool, int, float, str))
    }


_PANDAS_SEEN: list = [None, {}]  # (a copy of pandas' option values, the options of them that differ from defaults)


def pandas_options(config: types.ModuleType) -> dict:
    """The pandas options whose values differ from the defaults a worker's pandas has, by full key: JSON
    values as they are, another (a ``display.float_format`` such as ``"{:.2f}".format``) as
    ``{"pickle": base64}`` when the C pickler takes it, else left out. Read from pandas' own registry
    (``pandas._config.config``), made once per change of its values: a cell where none changed pays one
    comparison of its nested dicts (~2 us). A pandas that keeps its options otherwise gives none."""
    try:
        values = config._global_config
        if values == _PANDAS_SEEN[0]:
            return _PANDAS_SEEN[1]
        options: dict = {}
        for key, registered in config._registered_options.items():
            value = wire.pandas_option(values, key, _NO_OPTION)
            default = _WORKERS_OWN_DEFAULTS.get(key, registered.defval)
            if value is _NO_OPTION or value is default or _equal(value, default):
                continue
            if value is None or type(value) in (bool, int, float, str):
                options[key] = value
            else:
                try:
                    options[key] = {"pickle": base64.b64encode(pickle.dumps(value)).decode()}
                except Exception:  # noqa: BLE001 - a notebook function as formatter: not followed
                    continue
        _PANDAS_SEEN[:] = [_copy_options(values), options]
        return options
    except Exception:  # noqa: BLE001 - another layout of pandas' registry: its options are not followed
        return {}


_NO_OPTION = object()
# Defaults pandas chooses by where it runs: in a Jupyter kernel display.max_columns is 20, in a plain process
# (a worker) 0, so a notebook's own default travels too.
_WORKERS_OWN_DEFAULTS = {"display.max_columns": 0}


def _equal(a: object, b: object) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - a value whose comparison raises differs
        return False


def _copy_options(values: dict) -> dict:
    return {k: _copy_options(v) if isinstance(v, dict) else v for k, v in values.items()}


_INLINE_BACKENDS = ("inline", "ipympl", "widget", "nbagg")  # matplotlib backends that draw into the notebook


def _shows_figures_inline() -> bool:
    """Whether matplotlib draws into this notebook: its backend, once imported (read without resolving an
    automatic one, which would import a GUI toolkit), else the MPLBACKEND ipykernel sets for it."""
    backend = os.environ.get("MPLBACKEND", "")
    matplotlib = sys.modules.get("matplotlib")
    if matplotlib is not None:
        params = getattr(matplotlib, "rcParams", None)
        try:
            chosen = params._get_backend_or_none() if hasattr(params, "_get_backend_or_none") else None
        except Exception:
            chosen = None
        backend = chosen or backend
    backend = backend.lower()
    return any(name in backend for name in _INLINE_BACKENDS)


_DEFAULT_RECURSION_LIMIT = 1000  # Python's, which a worker starts with
_DEFAULT_INT_DIGITS = 4300  # sys.int_info.default_max_str_digits


_DECIMAL_FIELDS = ("prec", "rounding", "Emin", "Emax", "capitals", "clamp")


def _decimal_key(context: Any) -> tuple:
    """What of a decimal context the iterations follow, comparable: its fields and which traps are on."""
    return tuple(getattr(context, name) for name in _DECIMAL_FIELDS), tuple(context.traps.values())


@functools.cache
def _default_decimal_key() -> tuple:
    import decimal

    return _decimal_key(decimal.Context())


def _decimal_settings(context: Any) -> dict:
    return {
        **{name: getattr(context, name) for name in _DECIMAL_FIELDS},
        "traps": sorted(signal.__name__ for signal, on in context.traps.items() if on),
    }


def _portable_pattern(pattern: Any) -> Any:
    """A filter's message or module as JSON: None, a string (matched whole, as Python's own default filters
    hold them), or ``{"re": ..., "flags": ...}`` for a compiled pattern (what ``filterwarnings`` makes)."""
    if pattern is None or isinstance(pattern, str):
        return pattern
    return {"re": pattern.pattern, "flags": int(pattern.flags)}


@functools.lru_cache(maxsize=64)
def _body_facts(
    tree: ast.Module, target_names: tuple[str, ...]
) -> tuple[frozenset[str], frozenset[str], bool, frozenset[str], frozenset[tuple[str, ...]]]:
    """(free names, names looked up in globals(), whether globals() is used otherwise, modules
    imported, dotted reads from free names) of a body: walks of its tree, which a cell run again need
    not repeat. parse_cell returns the same (never modified) tree for the same cell, so the tree itself
    is the key."""
    looked_up, dynamic = namespace_lookups(tree)
    free = frozenset(free_names(tree, target_names))
    chains = frozenset(c for c in attribute_chains(tree) if c[0] in free)
    return free, frozenset(looked_up), dynamic, frozenset(imported_modules(tree)), chains


@functools.lru_cache(maxsize=64)
def _function_mode_is_safe(tree: ast.Module, target_names: tuple[str, ...], global_reads: frozenset[str]) -> bool:
    return function_mode_is_safe(tree, target_names, set(global_reads))


@dataclass(frozen=True)
class _Serialized:
    """What serialising unchanged objects gave, without the bytes (a kernel keeps no copy)."""

    codec: str
    sha256: str
    size: int
    modules: frozenset[str]
    random_states: frozenset[str] = frozenset()
    inside: frozenset[str] = frozenset()  # names_inside the pickle
    inside_reads: frozenset[str] = frozenset()  # the global names that code reads (reach_inside)


_REUSE_KEPT = 8  # fingerprints remembered (a few cells alternating)
_REUSE_MIN = 1 << 16  # smaller namespaces pickle faster than their kept file is opened and mapped
_reusable: OrderedDict[bytes, _Serialized] = OrderedDict()
_reusable_lock = threading.Lock()  # api.run may capture from several threads


def _serialize_or_reuse(
    chosen: dict[str, object], stored: Callable[[str, int], bytes | None] | None, reach: _Reach
) -> tuple[str, bytes, set[str], str, frozenset[str], frozenset[str], frozenset[str]]:
    """(codec, bytes, modules, sha256, kinds of random generators, names_inside, the global names that
    code reads) of ``chosen``: the kept bytes of an earlier capture of the same content when ``stored``
    still has them, else a fresh serialisation (remembered)."""
    key = fingerprint.fingerprint(chosen) if stored is not None else None
    with _reusable_lock:
        earlier = _reusable.get(key) if key is not None else None
    if earlier is not None and stored is not None:
        data = stored(earlier.sha256, earlier.size)
        if data is not None and len(data) == earlier.size:
            return (
                earlier.codec,
                data,
                set(earlier.modules),
                earlier.sha256,
                earlier.random_states,
                earlier.inside,
                earlier.inside_reads,
            )
    codec, data, inspector = serialize_inspected(chosen)
    sha = wire.sha256(data)
    random_states = frozenset(inspector.random_states)
    found = reach_inside(inspector.notebook, reach.namespace, reach.walked) if inspector.notebook else None
    inside = frozenset(found.names) if found is not None else frozenset()
    inside_reads = frozenset(found.global_reads) if found is not None else frozenset()
    if key is not None and len(data) >= _REUSE_MIN:
        with _reusable_lock:
            _reusable[key] = _Serialized(
                codec, sha, len(data), frozenset(inspector.modules), random_states, inside, inside_reads
            )
            while len(_reusable) > _REUSE_KEPT:
                _reusable.popitem(last=False)
    return codec, data, inspector.modules, sha, random_states, inside, inside_reads


def _random_state_holders(chosen: Mapping[str, object], kinds: frozenset[str]) -> tuple[str, ...]:
    """The shipped random generators, named for a warning: the variables that are one, and the
    kinds found only inside other objects (a bit generator only when no generator holds it)."""
    if not kinds:
        return ()
    named = {name: kind for name, value in chosen.items() if (kind := random_state_kind(value))}
    inside = kinds - set(named.values())
    generators = {kind for kind in kinds if kind.endswith(("Generator", "RandomState", "Random"))}
    if generators:  # a bit generator found beside them is the one a generator holds
        inside &= generators
    return tuple(f"`{name}` (a {kind})" for name, kind in sorted(named.items())) + tuple(
        f"a {kind} inside a notebook object it uses" for kind in sorted(inside)
    )


def _shipped_iterators(chosen: Mapping[str, object]) -> tuple[str, ...]:
    """The chosen variables that are iterators (``itertools.count()``, ``iter(batches)``, ``zip(a, b)``),
    named for a warning. A generator is refused and ``itertools.repeat`` gives the same value each time;
    any other iterator that pickles travels at its current position, so each worker takes the same values
    from its copy where a loop run here takes each once."""
    found = []
    for name, value in sorted(chosen.items()):
        kind = type(value)
        if isinstance(value, Iterator) and kind is not itertools.repeat:
            found.append(
                f"`{name}` ({'' if kind.__module__ == 'builtins' else kind.__module__ + '.'}{kind.__qualname__})"
            )
    return tuple(found)


_DYNAMIC_LOOKUP_WARNING = (
    "the loop body uses globals() or vars() with names not written in the code: capture ships only the "
    "notebook names the body reads (or writes as globals()['NAME']), so a name it reaches another way is "
    "missing on the workers (a KeyError there); pass --export NAME for each such name"
)


def _history_reads(free: Iterable[str], namespace: Mapping[str, object]) -> list[str]:
    """The notebook's output and input history the body reads (``_``, ``Out``, ``_3``, ``_i``):
    never shipped (it holds every output of the session), so each such read is a NameError on the
    workers; said before the run, as a sequential loop in the notebook would have read it."""
    return sorted(n for n in free if n in namespace and is_ipython_name(n) and n not in _NOT_HISTORY)


_NOT_HISTORY = frozenset({"exit", "quit", "get_ipython", "display", "__builtins__", "__builtin__"}) | {
    n for n in IPYTHON_NAMES if n.startswith("__") and n.endswith("__")
}  # the workers have their own, or the worker's hint names them (worker._worker_process_hint)


_BUILTIN_NAMES = frozenset(vars(builtins))


def _defined_nowhere(name: str, *scopes: Mapping[str, object]) -> bool:
    """Whether reading ``name`` is a NameError on the workers: in none of ``scopes``, not a builtin, and not one
    of IPython's names (which the history warning or the worker's hint speaks of)."""
    return name not in _BUILTIN_NAMES and not any(name in scope for scope in scopes) and not is_ipython_name(name)


def _undefined_reads(cell: ParsedCell, free: Iterable[str], namespace: Mapping[str, object]) -> list[str]:
    """The names the body reads that nothing defines: not the notebook, not Python's builtins, and not the
    body itself anywhere (a name it binds in one branch or a loop only is not counted), as a misspelt name
    or a module imported in the notebook under another name (`np` for `numpy`). Each iteration reaching one
    fails with NameError: on Azure, minutes later, once nodes have started. A body that imports ``*`` or
    reaches names through ``globals()`` may bind any name, so nothing is said of it."""
    candidates = [n for n in free if _defined_nowhere(n, namespace)]
    if not candidates:
        return []
    binds, opaque, guarded = _bound_anywhere(cell.body_tree)
    return [] if opaque else sorted(n for n in candidates if n not in binds and n not in guarded)


@functools.lru_cache(maxsize=64)
def _bound_anywhere(tree: ast.Module) -> tuple[frozenset[str], bool, frozenset[str]]:
    """(every name the body binds anywhere, in any scope; whether it may bind names its code does not
    spell: ``from m import *``, ``globals()``, ``exec``; the names it reads only where a NameError is caught:
    ``try: use = maybe`` / ``except NameError: use = None`` asks whether the name exists, as a notebook may)."""
    opaque = any(
        (isinstance(node, ast.ImportFrom) and any(alias.name == "*" for alias in node.names))
        or (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _BINDING_CALLS)
        for node in ast.walk(tree)
    )
    return frozenset(_stored_names(tree.body, nested=True)), opaque, _guarded_reads(tree)


def _guarded_reads(tree: ast.AST) -> frozenset[str]:
    """The names ``tree`` reads inside a ``try`` whose handlers catch a NameError (by name, as Exception or
    BaseException, or bare)."""
    return frozenset(
        node.id
        for block in ast.walk(tree)
        if isinstance(block, _TRY_KINDS) and any(map(_catches_name_error, block.handlers))
        for statement in block.body
        for node in ast.walk(statement)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
    )


def _guarded_reads_of(fn: types.FunctionType) -> frozenset[str]:
    """:func:`_guarded_reads` of a notebook function's source (IPython keeps each cell's in linecache); none
    when the source cannot be had or parsed alone (a lambda in the middle of a longer expression)."""
    try:
        return _guarded_reads(ast.parse(textwrap.dedent(inspect.getsource(fn))))
    except (OSError, TypeError, SyntaxError, ValueError):
        return frozenset()


_BINDING_CALLS = frozenset({"globals", "vars", "locals", "exec", "eval", "setattr", "__import__"})
_TRY_KINDS = (ast.Try, *((ast.TryStar,) if hasattr(ast, "TryStar") else ()))
_CATCHES_NAME_ERROR = frozenset({"NameError", "Exception", "BaseException"})  # (and a bare except)


def _catches_name_error(handler: ast.ExceptHandler) -> bool:
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else (handler.type,)
    return any(kind is None or (isinstance(kind, ast.Name) and kind.id in _CATCHES_NAME_ERROR) for kind in kinds)


def _undefined_warning(names: list[str]) -> str:
    listed = " and ".join(f"`{n}`" for n in names) if len(names) <= 2 else ", ".join(f"`{n}`" for n in names)
    one = len(names) == 1
    return (
        f"the loop body reads {listed}, which {'is' if one else 'are'} not defined in the notebook (nor "
        f"{'a builtin' if one else 'builtins'}): each iteration that reaches {'it' if one else 'them'} fails with "
        f"NameError on the workers. Define or import {'it' if one else 'them'} in a cell first"
    )


def _undefined_in_functions(cell: ParsedCell, reach: _Reach) -> dict[str, list[str]]:
    """The globals the notebook functions the body reaches read and nothing defines ({function: names}):
    `def g(x): return np.sqrt(x)` in a notebook that imported `numpy` fails on every worker as the body's own
    misspelt name does. Not those the body or a reached function assigns as globals (a body's top-level names
    are the functions' globals on the workers), nor any when the body may bind names unseen."""
    if not reach.undefined_reads:
        return {}
    binds, opaque, _ = _bound_anywhere(cell.body_tree)
    if opaque:
        return {}
    stored = {name for code in reach.notebook_code.values() for name in _code_globals(code).global_stores}
    found = {
        function: sorted(n for n in names if n not in binds and n not in stored)
        for function, names in sorted(reach.undefined_reads.items())
    }
    return {function: names for function, names in found.items() if names}


def _undefined_in_functions_warning(found: dict[str, list[str]]) -> str:
    said = "; ".join(
        f"{'a lambda' if function.endswith('<lambda>') else f'`{function}`'} reads "
        + " and ".join(f"`{n}`" for n in names)
        for function, names in found.items()
    )
    many = sum(map(len, found.values())) > 1
    return (
        f"{said}: not defined in the notebook (nor {'builtins' if many else 'a builtin'}), so each call that reaches "
        f"{'them' if many else 'it'} fails with NameError on the workers. Define or import {'them' if many else 'it'} "
        "in a cell first"
    )


def _history_warning(names: list[str]) -> str:
    listed = ", ".join(f"`{n}`" for n in names)
    first = names[0] + ("[N]" if names[0] in ("In", "Out", "_ih", "_oh") else "")
    return (
        f"the loop body reads {listed}, the notebook's output or input history, which is not shipped (it "
        f"holds the session's outputs): an iteration that reads {'it' if len(names) == 1 else 'them'} fails "
        f"with NameError. Bind the value to a name in the notebook first (`value = {first}`) and read that"
    )


def show_made_code(cell: ParsedCell) -> None:
    """The cell's source in the kernel's linecache under the file name the workers give the code of the
    functions and classes its body makes (``worker.made_code_filename``): such a function, returned and called
    in the notebook, showed "Could not get source" in its traceback. Only for a body that defines any."""
    if _defines_code(cell):
        show_cell_source(cell.source)


def show_cell_source(source: str) -> None:
    """``source`` (a whole cell, magic line included) in this process's linecache under the file name of the
    code its body made (``show_made_code``); also for a job read back from the store (``collect``, ``attach``
    in a new kernel), whose cell this kernel never ran."""
    name = wire.made_code_filename(source)
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)


@functools.lru_cache(maxsize=64)
def _defines_code(cell: ParsedCell) -> bool:
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
    return any(isinstance(node, kinds) for node in ast.walk(cell.body_tree))


def envelope_header(
    cell: ParsedCell,
    cap: Capture,
    *,
    gather: Iterable[str] = (),
    seed: int | None = None,
    timeout: float | None = None,
) -> dict:
    """The job-level header the worker checks before it touches the namespace bytes. ``timeout``: the
    --timeout, which the worker keeps itself (worker.TaskTimer), so a task stopped there keeps what ended."""
    return {
        "format": wire.FORMAT_VERSION,
        "python": platform.python_version(),
        "dill": dill.__version__,
        "packages": cap.packages,
        "source": cell.source,
        "filename": CELL_FILENAME,
        "code": cell.code_b64,
        "mode": "function" if cap.function_mode and not gather else "module",
        "function_code": cell.function_code_b64,
        "namespace": {
            "sha256": cap.sha256,
            "size": cap.size,
            "codec": cap.codec,
            "file": wire.namespace_file_name(cap.sha256),
            "changeable": cap.changeable,
        },
        "names": list(cap.names),
        "gather": list(gather),
        "seed": seed,
        "local_modules": cap.local_modules,
        **({"local_modules_sha256": cap.local_modules_sha256} if cap.local_modules_sha256 else {}),
        **({"submodules": list(cap.submodules)} if cap.submodules else {}),
        **(
            {"import_folders": sorted({os.path.dirname(path) for path in cap.compiled_modules.values()})}
            if cap.compiled_modules
            else {}
        ),
        "sources": {**cap.sources, CELL_FILENAME: cell.source},
        **({"logging": cap.logging} if cap.logging else {}),
        **({"settings": cap.settings} if cap.settings else {}),
        **({"timeout": float(timeout)} if timeout is not None and math.isfinite(timeout) else {}),
    }


def serialize_items(
    items: list,
    shipped: Iterable[str],
    namespace: Mapping[str, object],
    first_index: int = 0,
    notebook: list[object] | None = None,
) -> tuple[str, bytes]:
    """Items of one task (the iterable's items from ``first_index`` on). Notebook functions
    and classes the job ships go by name (the worker has them); others by value. An item
    that cannot travel is named by its index in the iterable. ``notebook``, when given, gets the
    notebook's functions and classes the items hold: the caller ships the ``names_inside`` them that
    the job does not ship yet (a ``functools.partial`` of a notebook function), and serialises the
    items again."""
    plain = wire.plain_pickle(items if type(items) is list else list(items))
    if plain is not None:
        # Plain data: nothing to refuse, nothing shipped by name, and the same bytes the pickler
        # below writes, at a fraction of the cost (a one-iteration task each: issue 16, g).
        return "pickle", plain
    shipped = set(shipped)

    def by_reference(obj: object) -> bool:
        name = getattr(obj, "__qualname__", None)
        return name in shipped and namespace.get(name) is obj

    hook = _refuse_unshippable
    if notebook is not None:
        shippable, function = _SHIPPABLE_TYPES, types.FunctionType

        def hook(obj: object) -> None:  # (one call an object pickled: dill pickles a closure as ~24 of them)
            kind = type(obj)
            if kind not in shippable:
                _refuse_unshippable(obj)
            if (kind is function or issubclass(kind, type)) and getattr(obj, "__module__", None) == "__main__":
                notebook.append(obj)

    try:
        return wire.dumps(items, by_reference=by_reference, hook=hook, out_of_band=True)
    except Exception:
        pass
    for position, item in enumerate(items):
        try:
            wire.dumps(item, by_reference=by_reference, hook=_refuse_unshippable)
        except Exception as exc:
            reason = (str(exc) if isinstance(exc, CaptureError) else f"{type(exc).__name__}: {exc}").rstrip(".")
            where = culprit_path(
                "item", item, lambda part: not _ships(part, _refuse_unshippable, by_reference=by_reference)
            )
            reason += _culprit_words(where, reason)
            raise CaptureError(
                f"The iterable's item {first_index + position} ({type(item).__module__}."
                f"{type(item).__qualname__}) cannot be sent to the workers: {reason}. Iterate over something "
                "that describes the work instead (a path, an index, parameters). Nothing was submitted."
            ) from None
    raise CaptureError("The items could not be serialised (no single item is at fault). Nothing was submitted.")
