"""Backend-neutral orchestration: from a parsed cell to a running Job.

The engine evaluates and materialises the iterable, captures the namespace, cuts the
items into tasks, submits them, and turns the backend's task events into per-iteration
records on the Job: retrying infrastructure failures (never user exceptions), stopping
early under ``--errors stop``, and finishing the job when every task is final.
"""

from __future__ import annotations

import ast
import functools
import gc
import itertools
import logging
import mmap
import operator
import os
import pickle
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import CodeType
from typing import Any, TypeVar, cast

from .. import config, identity, jobstore, worker as wire
from ..backends.base import Backend, JobSpec, TaskEvent, TaskSpec
from ..errors import CaptureError, CombineError, ConfigError, DataError, StoreError, SubmitError
from ..jobs import TASK_FINAL, Failure, Job, JobOptions, merge, progress_bar
from ..jobs.cost import CostMeter, money
from ..jobs.results import decode_each, failure_from_record
from ..jobs.states import task_failure_kind
from . import cache as cache_mod, capture as capture_mod, data as data_mod, hints, parsing
from .parsing import ParsedCell
from .request import API_SPELLING, RunRequest

logger = logging.getLogger(__name__)


def body_warnings(request: RunRequest) -> list[str]:
    """What the cell runs but cannot give as asked (parsing.body_warnings) and the notebook variables
    its body changes in vain (parsing.notebook_change_warnings), spelled as the caller writes options:
    said by every path that runs a cell, the magic's and the API's alike."""
    cell_spelled = request.spelling.get("gather", "gather").startswith("--")
    gather = request.options.gather
    gather_flag = request.spelling.get("gather", "gather")
    return (
        parsing.body_warnings(request.cell, gather, gather_flag)
        + parsing.notebook_change_warnings(
            request.cell, request.namespace, gather, parsing.CELL_ADVICE if cell_spelled else parsing.API_ADVICE
        )
        + parsing.global_warnings(request.cell, gather, gather_flag)
    )


def unshipped_warnings(cap: capture_mod.Capture, spelling: Mapping[str, str]) -> list[str]:
    """The names ``--no-export`` kept out that the body (or a notebook function it calls) reads: each
    iteration that reads one fails with a NameError on the workers, which is said here instead, before
    the job runs. A warning, not an error: the body may read it only on a path it does not take."""
    if not cap.unshipped:
        return []
    listed = ", ".join(cap.unshipped)
    them = "it" if len(cap.unshipped) == 1 else "them"
    return [
        f"{spelling.get('no_export', 'no_export')} {listed}: the loop body (or a function it calls) reads {listed}, "
        f"which the workers will not have: an iteration that reads {them} fails with NameError"
    ]


_NAMES_FLAG = re.compile(r"\b(pass|or) --(no-export|export) (NAME|[A-Za-z_]\w*)")


def in_callers_words(text: str, spelling: Mapping[str, str]) -> str:
    """``text`` (capture's, which names the magic's flags) as the caller would write the fix: a script calling
    ``azpar_magic.map`` or ``run`` was told to "pass --no-export conn", which is no keyword it has. A caller
    whose "body" is a function (``spelling["body"]``: map's) is told of that function, not of a loop body it
    never wrote."""
    if body := spelling.get("body"):
        text = text.replace("The loop body", body[:1].upper() + body[1:]).replace("the loop body", body)
        text = text.replace("if the body does not", f"if {body} does not")
        text = text.replace("in the body instead", "inside the function instead")
    if spelling.get("no_export", "--no-export").startswith("--"):
        return text
    text = _NAMES_FLAG.sub(lambda m: f"{m[1]} {m[2].replace('-', '_')}={m[3]!r}", text)
    return text.replace("--export names ", "export names ", 1)


def own_objects_message(holders: Sequence[str], backend: str) -> str:
    """Why a loop whose namespace or items hold azpar_magic's own objects cannot run on ``backend``'s nodes."""
    return (
        f"The loop needs {' and '.join(holders)}, which hold{'s' * (len(holders) == 1 and holders[0] != 'the items')} "
        "azpar_magic's own objects or code (the errors an earlier cell kept for its failed iterations with --errors "
        f"pass, a Job, a function calling azpar_magic), and the {backend} nodes do not have azpar_magic: every task "
        "would fail there. Leave those objects out first (`[v for v in values if not isinstance(v, Exception)]`), "
        "or pass --no-export NAME if the body does not really use it. Nothing was submitted."
    )


def compiled_modules_message(compiled: Mapping[str, str], backend: str) -> str:
    """Why a cell using compiled modules of the user's own cannot run where files are remote."""
    listed = ", ".join(f"{name} ({path})" for name, path in sorted(compiled.items()))
    return (
        f"The loop uses {listed}, a module compiled on this machine (a %%cython cell, or an extension built in "
        f"place): the {backend} nodes cannot import it, so every iteration would fail with ModuleNotFoundError. "
        "Run the cell with --backend local, or build the code into a package the notebook imports from an "
        "installed distribution (the nodes install those). Nothing was submitted."
    )


def random_state_warnings(cap: capture_mod.Capture, tasks: int, spelling: Mapping[str, str]) -> list[str]:
    """A random generator made in the notebook and used by the body travels with its state: each
    worker starts from its own copy, so iterations on different workers draw the same numbers,
    where a loop run here would continue one stream. Silent otherwise, and fatal to a simulation.
    One task continues the stream as the loop would: nothing to say."""
    if not cap.random_states or tasks < 2:
        return []
    seed = spelling.get("seed", "seed")
    seed_n = f"{seed} N" if seed.startswith("--") else f"{seed}=N"
    return [
        f"the loop body uses {', '.join(cap.random_states)}: the job's {tasks} tasks run on workers that each "
        "start from their own copy of the generator's state, so iterations on different workers draw the same "
        "numbers (which ones depends on where tasks run), where a loop run here would continue one stream. "
        f"Make the generator in the body instead (np.random.default_rng(), with {seed_n} for reproducible streams "
        "per iteration), or seed it from the item (np.random.default_rng([SEED, i]))"
    ]


def shared_iterator_warnings(cap: capture_mod.Capture, tasks: int, spelling: Mapping[str, str]) -> list[str]:
    """An iterator of the notebook's the body advances (``next(ids)`` over ``ids = itertools.count()``)
    travels at its current position: each worker takes values from its own copy, so iterations on
    different workers get the same ones, where a loop run here takes each once. Silent otherwise: a
    loop handing out ids or batches that way gave duplicates. One task continues one copy as the loop
    would."""
    if not cap.iterators or tasks < 2:
        return []
    listed, one = ", ".join(cap.iterators), len(cap.iterators) == 1
    fix = (
        "Give each call its values through the iterables instead (map(f, range(len(xs)), xs) passes each its index)"
        if "body" in spelling
        else "Give each iteration its values through the loop header instead (for i, x in enumerate(xs), "
        "for batch, x in zip(batches, xs))"
    )
    return [
        f"the loop body uses {listed}, {'an iterator' if one else 'iterators'}: the job's {tasks} tasks run on "
        f"workers that each take values from their own copy of {'it' if one else 'each'}, starting where the "
        f"notebook's {'is' if one else 'are'} now, so iterations on different workers get the same values, where a "
        f"loop run here takes each once (and the notebook's {'iterator does' if one else 'iterators do'} not move). "
        + fix
    ]


SLOW_ITEMS_SECONDS = 0.25  # serialising the items took at least this long...
SLOW_ITEM_SECONDS = 20e-6  # ...and this long an item: said, with what travels faster (slow_items_warnings),
SLOW_ITEMS_BYTES_PER_SECOND = 100e6  # unless they are large and went at about the speed of memory (arrays)


def slow_items_warnings(items: list, seconds: float, size: int, iterable_source: str) -> list[str]:
    """Items that take long to serialise hold every iteration back before the first starts, and may make
    the cell slower than the loop it replaces: a row of ``df.iterrows()`` is a whole pandas Series (~40 us
    to pickle, 10,000 rows 0.4 s, against 0.1 s for the loop itself). Say what the items are and what
    travels faster.
    ``size``: the bytes they became. Eight arrays of 100 MB take as long, and are what they should be."""
    if not items or seconds < SLOW_ITEMS_SECONDS or seconds < SLOW_ITEM_SECONDS * len(items):
        return []
    if size > SLOW_ITEMS_BYTES_PER_SECOND * seconds:
        return []
    first = items[0]
    parts = first if type(first) is tuple else (first,)
    kinds = [type(part) for part in parts]
    names = ", ".join(
        dict.fromkeys(
            kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
            for kind in kinds
        )
    )
    if any(kind.__name__ == "Series" and kind.__module__.startswith("pandas") for kind in kinds):
        hint = (
            "a row of df.iterrows() is a whole pandas Series: df.itertuples() gives named tuples (row.Index, "
            "row.a) and df.to_dict('records') plain dicts, which travel 20 times faster or more"
        )
    else:
        hint = (
            "items that describe the work (an index, a path, parameters) travel faster: the body can read "
            "the rest from notebook variables, which travel once per job"
        )
    return [
        f"serialising the {len(items):,} items of `{iterable_source}` ({names}) took {seconds:.2f} s, "
        f"{seconds / len(items) * 1e6:,.0f} us each, before any iteration could start; {hint}"
    ]


def new_job_id() -> str:
    """Names its user (``identity.slug``: under JupyterHub, the hub user), sortable by time
    among that user's jobs, unguessable, and a valid Batch job id and container name stem
    (lowercase letters, digits, single '-'; at most 55 characters)."""
    return f"azpar-{identity.slug()}-" + time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(6)


MAX_ITEMS = 10_000_000  # the default of the max_items setting (config.DEFAULTS)
_TAKE = 1 << 16  # items taken per step: C-level iteration never checks for Ctrl-C, the loop between steps does


def materialize(
    cell: ParsedCell,
    namespace: Mapping[str, Any],
    max_items: int = MAX_ITEMS,
    warnings: list[str] | None = None,
    bars: list[Any] | None = None,
) -> list:
    """Evaluate the iterable once in the namespace and take all its items, at most
    ``max_items`` of them: an endless or huge iterable (``itertools.count()``) is refused
    instead of filling the kernel's memory. Items are taken in steps so that Ctrl-C gets
    through even when the iterable runs in C, where ``list(iterable)`` never lets it.

    An iterator with no items left (a generator or ``zip`` kept in a variable, which the cell's
    first run used up) adds a warning to ``warnings``: rerunning a cell is what notebooks are
    for, and its empty result otherwise looks like a loop that ran.

    An iterable wrapped in a tqdm bar (``for x in tqdm(xs)``) is listed from what the bar wraps, and
    the bar goes into ``bars``, for the job to move as iterations end (jobs.progress_bar): listed
    through the bar, it filled before anything ran."""
    try:
        scope = namespace if isinstance(namespace, dict) else dict(namespace)
        iterable = eval(_iterable_code(cell.iterable_source), scope)
    except Exception as exc:
        raise SubmitError(
            f"The iterable `{cell.iterable_source}` could not be evaluated: "
            f"{type(exc).__name__}: {exc}. Nothing was submitted."
        ) from None
    iterable, bar = progress_bar.unwrap(iterable)
    _refuse_if_too_long(cell, _known_length(iterable), max_items)
    if bar is not None and bars is not None:
        bars.append(bar)
    if type(iterable) in (list, tuple, range):  # a copy at C speed, short enough not to need Ctrl-C
        return list(iterable)
    items: list = []
    before = 0
    try:
        iterator = iter(iterable)
        while len(items) <= max_items:
            want = min(_TAKE, max_items + 1 - len(items))
            before = len(items)
            items.extend(itertools.islice(iterator, want))
            if len(items) - before < want:
                break
        if not items and iterator is iterable and warnings is not None and _kept(cell.iterable_source):
            warnings.append(used_up_warning(cell.iterable_source))
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"interrupted while taking the items of `{cell.iterable_source}` "
            f"({len(items):,} so far). Nothing was submitted."
        ) from None
    except MemoryError:
        # Let go of the items first, with a call that allocates nothing: even len(items), a
        # new int, fails at this point, and every frame above needs memory that the items
        # hold (under a capped address space the kernel otherwise spun in malloc, never
        # answering). ``before`` was counted while memory was left.
        items.clear()
        raise SubmitError(
            f"The kernel ran out of memory while taking the items of `{cell.iterable_source}` "
            f"(some {before:,} so far): they are held in the kernel's memory before anything is sent. Loop "
            "over fewer items (itertools.islice(it, n)), or lower the max_items setting (see %azpar config) "
            "so that such an iterable is refused sooner. Nothing was submitted."
        ) from None
    except Exception as exc:
        raise SubmitError(
            f"Iterating over `{cell.iterable_source}` raised {type(exc).__name__}: {exc}. Nothing was submitted."
        ) from None
    _refuse_if_too_long(cell, len(items), max_items)
    return items


def used_up_warning(source: str) -> str:
    return (
        f"`{source}` is an iterator and gave no items, so the loop ran no iteration: the first loop over "
        "an iterator uses it up (an earlier cell's, or this cell's last run). Make it again in this cell, "
        "or keep a list (`list(...)`) to loop over it more than once."
    )


def _kept(source: str) -> bool:
    """Whether the iterable is a value kept from before (a name, attribute or subscript), not one
    the header makes afresh (a call or a generator expression, empty for its own reasons)."""
    try:
        node = ast.parse(source.strip(), mode="eval").body
    except SyntaxError:
        return False
    return isinstance(node, (ast.Name, ast.Attribute, ast.Subscript))


@functools.lru_cache(maxsize=64)
def _iterable_code(source: str) -> CodeType:
    """The iterable's expression compiled once per distinct source: a cell run again evaluates
    the same code object (compiling `range(2)` takes some 30 times as long as evaluating it)."""
    return compile(source, "<azpar iterable>", "eval")


def _known_length(iterable: Any) -> int | None:
    """How many items the iterable yields, when a built-in container or range says so
    without iterating; None otherwise (``len`` of other objects need not be that count:
    a DataFrame iterates over its columns)."""
    if not isinstance(iterable, (range, list, tuple, dict, set, frozenset, str, bytes)):
        return None
    try:
        return len(iterable)
    except OverflowError:  # range(10**20): longer than any bound
        return sys.maxsize


def _refuse_if_too_long(cell: ParsedCell, count: int | None, max_items: int) -> None:
    if count is None or count <= max_items:
        return
    raise SubmitError(
        f"The iterable `{cell.iterable_source}` has more than {max_items:,} items (the max_items "
        "setting), so it was not taken; an endless iterable (itertools.count()) would fill the "
        "kernel's memory. Loop over fewer items (itertools.islice(it, n)), or raise the bound with "
        "max_items = N in a config file (see %azpar config) or the AZPAR_MAX_ITEMS environment "
        "variable. Nothing was submitted."
    )


def _max_items_setting() -> int:
    """The max_items setting, read per run: an edited config file or AZPAR_MAX_ITEMS takes effect at the next cell."""
    try:
        return config.load_settings()["max_items"] or MAX_ITEMS
    except ConfigError as exc:
        raise SubmitError(f"{exc}. Nothing was submitted.") from None


def kept_namespace(sha256: str, size: int) -> bytes | None:
    """The namespace bytes the job store keeps under ``sha256`` (for ``%azpar debug``), mapped
    read-only rather than read: a backend that has them staged already never touches them, so
    reusing a 100 MB capture moves no byte. None when the store does not hold them (any more).
    The store writes these files once and replaces, never rewrites, them: the mapping is stable."""
    try:
        path = jobstore.namespace_path(jobstore.store_root(), sha256)
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size != size:
                return None
            if not size:
                return b""
            return cast(bytes, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))  # a read-only bytes-like buffer
    except (OSError, ValueError, StoreError):
        return None


COST_INTERVAL = 2.0  # seconds between the cost watch's looks at a running job's nodes (its node time, its cap)

MAX_TIMEOUT = 7 * 24 * 3600  # seconds; far beyond any wait a pool's select() or Batch's constraints must hold
MAX_RETRIES = 100
MAX_SEED = 2**64 - 1


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_options(options: JobOptions, spelling: dict[str, str] = API_SPELLING) -> None:
    """The same rules for the magic and the Python API, checked before any work;
    ``spelling`` names each option as the caller wrote it (a flag or a keyword)."""
    combine = options.combine
    if not callable(combine) and combine not in merge.COMBINE_MODES:
        raise SubmitError(
            f"{spelling['combine']} must be one of {', '.join(merge.COMBINE_MODES)} or a callable, not {combine!r}."
        )
    if options.errors not in merge.ERROR_POLICIES:
        raise SubmitError(
            f"{spelling['errors']} must be one of {', '.join(merge.ERROR_POLICIES)}, not {options.errors!r}."
        )
    if options.chunk_size is not None and (not _whole(options.chunk_size) or options.chunk_size < 1):
        raise SubmitError(
            f"{spelling['chunk_size']} must be a positive whole number (or auto), not {options.chunk_size!r}."
        )
    timeout = options.timeout
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT
    ):  # also refuses nan and inf
        raise SubmitError(
            f"{spelling['timeout']} must be a number of seconds above 0 and at most {MAX_TIMEOUT} "
            f"(7 days; leave it out for no limit), not {timeout!r}."
        )
    if not _whole(options.retries) or not 0 <= options.retries <= MAX_RETRIES:
        raise SubmitError(
            f"{spelling['retries']} must be a whole number from 0 to {MAX_RETRIES}, not {options.retries!r}."
        )
    max_cost = options.max_cost
    if max_cost is not None and (
        isinstance(max_cost, bool) or not isinstance(max_cost, (int, float)) or not 0 < max_cost < float("inf")
    ):  # also refuses nan
        raise SubmitError(
            f"{spelling.get('max_cost', 'max_cost')} must be a positive amount (the most the job may cost), "
            f"not {max_cost!r}."
        )
    if options.seed is not None and (not _whole(options.seed) or not 0 <= options.seed <= MAX_SEED):
        raise SubmitError(f"{spelling['seed']} must be a whole number from 0 to 2**64-1, not {options.seed!r}.")
    bad = [name for name in options.gather if not (isinstance(name, str) and parsing.is_variable_name(name))]
    if bad:
        raise SubmitError(f"{spelling['gather']} takes variable names; {', '.join(map(repr, bad))} is not one.")
    if options.name is not None:
        try:
            jobstore.check_name(options.name)
        except ValueError as exc:
            raise SubmitError(f"{exc}. Nothing was submitted.") from None
    if options.output_name is not None and options.output_name in options.gather:
        raise SubmitError(
            f"{spelling['gather']} {options.output_name} would overwrite the output variable of the same name."
        )


SMALL_PARTS = 8  # items per part, on average, up to which all items are checked in one pass (_plain_parts)


def _files_seen(folder: str, remote: bool, plan: data_mod.DataPlan | None) -> hints.FilesSeen | None:
    """How a job's iterations see the kernel's files (None: in its folder, as the notebook does)."""
    if not remote and plan is None:
        return None
    given = set()
    if plan is not None:
        given.update(f.rel for f in plan.shared_files)
        given.update(f.rel for files in plan.item_files.values() for f in files)
    return hints.FilesSeen(folder, remote, frozenset(given))


def chunk_indices(n: int, size: int) -> list[range]:
    chunks = [range(start, start + size) for start in range(0, n, size)]
    if chunks and chunks[-1].stop > n:  # the last one may be short (no min() per chunk: issue 16, a')
        chunks[-1] = range(chunks[-1].start, n)
    return chunks


def _plain_parts(items: list, parts: list[list]) -> list[bytes]:
    """Each part's pickle when the items are plain data (numbers, strings, their lists and
    dicts), else [] (the capture then looks through them, part by part). Many parts are checked
    in one pass over all the items at C speed, then pickled without a check each: for 10,000
    one-iteration tasks, the checks were half of pickling them (issue 16, a'). Larger parts
    are checked as they are pickled, in the same pass: checking them all first would pickle
    everything twice."""
    if len(parts) > 1 and len(items) <= SMALL_PARTS * len(parts):
        if wire.plain_pickle(items) is None:  # some part holds an item that is not plain: no part by part again
            return []
        dumps, protocol = pickle.dumps, wire.PICKLE_PROTOCOL
        return [dumps(part, protocol=protocol) for part in parts]
    return _each_pickled(parts, wire.plain_pickle)


_Pickled = TypeVar("_Pickled")  # what a part's pickling gives: its bytes, or them with what it needs


def _each_pickled(parts: list[list], pickle_part: Callable[[list], _Pickled | None]) -> list[_Pickled]:
    """``pickle_part`` of each part, or [] as soon as one part is not its kind (it gave None)."""
    pickled: list[_Pickled] = []
    for part in parts:
        data = pickle_part(part)
        if data is None:
            return []
        pickled.append(data)
    return pickled


NUMPY_ITEMS = frozenset({"numpy"})  # where the items _numpy_parts pickles come from


def _numpy_parts(parts: list[list]) -> list[bytes]:
    """Each part's pickle when its items are numpy scalars of one type or small arrays of one shape
    (``for x in np.linspace(...)``, ``for row in matrix``, tuples of them): one array each
    (``worker.numpy_list_pickle``). They name nothing of the notebook, so the capture need not look
    through them either; they come from numpy (NUMPY_ITEMS), which the workers need to load them. Else []."""
    return _each_pickled(parts, wire.numpy_list_pickle)


def _standard_parts(parts: list[list]) -> tuple[list[bytes], frozenset[str]]:
    """Each part's pickle when its items are dates, paths, Decimals, pandas Timestamps and the like (or
    tuples of those and atoms), with the modules of their classes and time zones; else ([], {}). Such
    items name nothing of the notebook, so the capture need not look through them
    (``worker.standard_list_pickle``)."""
    found = _each_pickled(parts, wire.standard_list_pickle)
    return [data for data, _ in found], frozenset().union(*(modules for _, modules in found))


def decode_counted(encoded: Any, count: int) -> tuple[list, dict[int, str], int]:
    """``decode_each``, with the garbage collector paused, and the objects its values made (by the
    collector's own count of new objects). A loop returning 10,000 small Series or DataFrames made
    ~200,000 objects as they were loaded, and each full collection set off on the way walked every
    object the kernel holds, those of the jobs it keeps too: 6 of them, 0.4-1.5 s of a 1.4-2.4 s cell
    (issue 16). Loading makes no garbage to collect; the count lets the session bound what kept jobs
    hold (session.KEPT_VALUE_OBJECTS)."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        before = gc.get_count()[0]
        values, unloadable = decode_each(encoded, count)
        made = gc.get_count()[0] - before
    finally:
        if paused:
            gc.enable()
    return values, unloadable, max(made, 0)


def chunk_subset(indices: Sequence[int], size: int) -> list[Sequence[int]]:
    """Chunks of ``size`` of some iterations (a rerun's): a range where a chunk is
    contiguous (the job's fast path), else the list of its indices."""
    ordered = sorted(indices)
    chunks: list[Sequence[int]] = []
    for start in range(0, len(ordered), size):
        part = ordered[start : start + size]
        contiguous = part[-1] - part[0] == len(part) - 1
        chunks.append(range(part[0], part[-1] + 1) if contiguous else part)
    return chunks


class _Run:
    """Routes one job's task events to its Job; owns retries and early stop."""

    def __init__(
        self,
        engine: Engine,
        job: Job,
        tasks: dict[str, TaskSpec],
        recorder: jobstore.JobRecorder,
        files: hints.FilesSeen | None = None,
        installs: bool = False,
    ):
        self.engine, self.job, self.tasks = engine, job, tasks
        self.recorder = recorder  # the job store's copy: fed here, written on its own thread
        # How the workers see the kernel's files, when they do not see its folder: failures naming one say so.
        self.files = files
        self.installs = installs  # the workers install packages: a missing module says which to pass
        self.lock = threading.Lock()
        self.stopped: set[str] = set()  # tasks cancelled by _stop_early

    def __call__(self, event: TaskEvent) -> None:
        """The backend's event sink (``backends.base.EventSink``)."""
        self._take(event)
        self._maybe_finish()

    def many(self, events: Sequence[TaskEvent]) -> None:
        """Several events at once (``backends.base.deliver``): the job's waiters and views are
        told once, and whether the job ended is looked at once, after all of them."""
        with self.job.changes():
            for event in events:
                self._take(event)
        self._maybe_finish()

    def _take(self, event: TaskEvent) -> None:
        self._meter_task(event)
        try:
            self._handle(event)
        except Exception as exc:  # never let a decoding bug kill the backend's thread
            message = f"could not read the task's result: {type(exc).__name__}: {exc}"
            self.job.record_task_failed(
                event.task_id, lambda i: Failure(i, "azpar_magic.InternalError", message, kind="infrastructure")
            )
            self.recorder.task_failed(
                event.task_id, self.tasks[event.task_id].indices, "azpar_magic.InternalError", message, "infrastructure"
            )

    def _handle(self, event: TaskEvent) -> None:
        job = self.job
        if event.kind == "started":
            job.record_task_started(event.task_id, event.node)
            return
        if event.kind == "finished":
            self._record_result(event)
            return
        task = job.task(event.task_id)
        if event.retryable and task.attempts <= job.options.retries and event.task_id not in self.stopped:
            job.record_task_requeued(event.task_id, event.error)
            logger.info("job %s: task %s retried (attempt %d): %s", job.id, event.task_id, task.attempts, event.error)
            self.engine.backend.resubmit(job.id, self.tasks[event.task_id])
            return
        kind, etype = task_failure_kind(event.failure_kind)
        attempts = f" (after {task.attempts} attempts)" if task.attempts > 1 else ""
        if event.iteration is not None and event.iteration in task.indices and len(task.indices) > 1:
            self._fail_timed_out(event, etype, event.error + attempts)
        else:
            job.record_task_failed(event.task_id, lambda i: Failure(i, etype, event.error + attempts, kind=kind))
            self.recorder.task_failed(
                event.task_id, self.tasks[event.task_id].indices, etype, event.error + attempts, kind
            )
        if kind != "cancelled":
            self._stop_early()

    def _meter_task(self, event: TaskEvent) -> None:
        """An attempt of a task ended: its run time counts in the job's core time (the service's timing when
        the backend has one, else from when this run saw it start)."""
        meter, task = self.job.meter, self.job.tasks.get(event.task_id)
        if meter is None or event.kind == "started" or task is None or task.state in TASK_FINAL:
            return
        if event.ran is not None:
            meter.task_ran(event.ran)
        elif task.started is not None:
            meter.task_ran(time.monotonic() - task.started)

    def _fail_timed_out(self, event: TaskEvent, etype: str, message: str) -> None:
        """A task of several iterations killed by --timeout: the iteration that was running
        is the one that failed (and the one --errors stop reports); the task's others were
        lost with it, not failed, so they are recorded as stopped, saying why."""
        running = event.iteration
        lost = f"not kept: iteration {running} of the same task ran past --timeout and the whole task was killed"
        self.job.record_task_failed(
            event.task_id,
            lambda i: (
                Failure(i, etype, message, kind="infrastructure")
                if i == running
                else Failure(i, "azpar_magic.JobCancelled", lost, kind="cancelled")
            ),
        )
        others = [i for i in self.tasks[event.task_id].indices if i != running]
        self.recorder.task_failed(event.task_id, [running], etype, message, "infrastructure")
        self.recorder.task_failed(event.task_id, others, "azpar_magic.JobCancelled", lost, "cancelled")

    def _record_result(self, event: TaskEvent) -> None:
        result = event.result or {}
        if event.node and result.get("worker"):
            self.job.worker_stats[event.node] = result["worker"]
        indices = self.tasks[event.task_id].indices
        answered = result["indices"]
        if len(answered) != len(indices) or (answered and (answered[0], answered[-1]) != (indices[0], indices[-1])):
            raise ValueError(f"task {event.task_id} answered for other iterations than it was given")
        encoded = result["values"]
        values, unloadable, made = decode_counted(encoded, len(indices))
        self.job.value_objects += made
        self.job.value_bytes += (
            len(encoded[2]) if encoded[0] == "all" else sum(len(blob[1]) for blob in encoded[1] if blob)
        )
        gathered = None
        if result.get("gathered") is not None:
            rows, bad_rows, made = decode_counted(result["gathered"], len(indices))
            self.job.value_objects += made
            gathered = {name: [(row or {}).get(name) for row in rows] for name in self.job.options.gather}
            for pos, why in bad_rows.items():
                unloadable.setdefault(pos, f"a --gather variable: {why}")
        failed = result.get("failed")
        failures = {i: failure_from_record(i, rec) for i, rec in failed.items()} if failed else {}
        if failures:
            failures = {i: hints.explain(f, self.files, self.installs) for i, f in failures.items()}
        for pos, why in unloadable.items():  # computed on the worker, but not loadable in this kernel
            index = indices[pos]
            failures.setdefault(
                index,
                Failure(
                    index,
                    "azpar_magic.UnloadableValue",
                    f"its value was computed on the worker but could not be loaded here, in the kernel: {why}. "
                    "Return plain data (numbers, strings, lists, dicts, arrays) or objects of classes this kernel "
                    "can import.",
                    kind="user",
                ),
            )
        if getattr(self.job, "files", None) is not None:  # --inputs/--outputs: what came back
            self.job.files.add(result.get("files"))
        if result.get("left_files"):  # written on a node without --outputs: they stay there
            self.job.left_on_nodes.update(result["left_files"])
        self.job.record_values(event.task_id, indices, values, failures, result.get("outputs", {}), gathered)
        self.recorder.task_result(event.task_id, indices, result)
        if failures:
            self._stop_early()

    def _stop_early(self) -> None:
        """``--errors stop``: the result will be an error, so stop spending compute on
        iterations after the first failure. Tasks with earlier iterations still run: one of
        them may fail too, and the error reported must be the one a sequential loop meets
        first, whatever finished first here."""
        if self.job.options.errors != "stop":
            return
        first = self.job.first_failure()
        if first is None:
            return
        with self.lock:
            doomed = [
                t.task_id
                for t in self.job.tasks.values()
                if t.state not in TASK_FINAL and t.indices[0] > first.index and t.task_id not in self.stopped
            ]
            self.stopped.update(doomed)
        if doomed:
            threading.Thread(target=self.engine.backend.cancel, args=(self.job.id, doomed), daemon=True).start()

    def _maybe_finish(self) -> None:
        job = self.job
        if job.done or job.tasks_final < len(job.tasks):
            return
        job.finish(job.final_state(cancelled=self.engine.cancelled(job.id)), wake=False)
        try:
            self.recorder.finish()
            # The backend lets go of the job (its state final, its end record queued: Azure's clean-up copies
            # the final manifest) before the waiters wake: the local pool removes the job's working folder under
            # the outputs folder (--inputs/--outputs) here, which a script clearing azpar_outputs as the cell
            # returned met half removed. (Job.wait waits for the wake; only a poll of job.done sees the end first.)
            self.engine.forget(job.id)
        finally:
            job.wake()


class Engine:
    """Submits runs to one backend and tracks their jobs."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._runs: dict[str, _Run] = {}
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self.jobs: dict[str, Job] = {}

    def prepare(self, request: RunRequest, bars: list[Any] | None = None) -> list:
        """The checks that can fail on bad input, before anything is submitted (``bars``: see
        materialize)."""
        validate_options(request.options, request.spelling)
        notes: list[str] = []
        items = (
            request.items
            if request.items is not None
            else materialize(request.cell, request.namespace, request.max_items or _max_items_setting(), notes, bars)
        )
        for text in notes:
            print(f"azpar: warning: {text}", file=sys.stderr)
        if request.indices is not None and any(not 0 <= i < len(items) for i in request.indices):
            raise SubmitError(f"iterations to run must be between 0 and {len(items) - 1}. Nothing was submitted.")
        if request.options.combine == "dict":
            try:
                merge.check_dict_keys(items)
            except CombineError as exc:
                raise SubmitError(f"{exc} Nothing was submitted.") from None
        return items

    def submit(self, request: RunRequest) -> Job:
        """Check, capture and cut everything first; only then create and start the job, so
        bad input leaves nothing behind."""
        options = request.options
        bars: list[Any] = []  # a tqdm bar the iterable came in: moved by the job (jobs.progress_bar)
        items = self.prepare(request, bars)
        jobstore.wait_for_room()  # the store far behind with earlier jobs' large items: wait for it first
        if request.base is None:  # a fresh run (a cell, run, map); a rerun's cell was warned of when it first ran
            for text in body_warnings(request):
                print(f"azpar: warning: {text}", file=sys.stderr)
        folder = request.folder or os.getcwd()  # read once: a system call of ~10 us a cell here (issue 16, c)
        job_id = new_job_id()
        tasks: dict[str, TaskSpec] = {}
        cap = None
        todo = list(request.indices) if request.indices is not None else None  # None: every iteration
        cached = None  # --cache: reused values come in as a rerun's base does (cache.py)
        whole_plan = None  # --cache --inputs: the data plan of every iteration, built once to key the inputs
        if options.cache and todo is None and request.base is None and items:
            files = None
            if options.inputs:
                whole_plan = self._data_plan(request, items, job_id, None)
                files = self._input_signatures(whole_plan, len(items))
            cached = cache_mod.plan(request, items, files)
            todo = cached.todo if cached.holder is not None else None
        base = request.base if cached is None else cached.holder
        # When nothing is reused, the plan built for the keys is this run's: globbing, a stat per file
        # and an az:// listing are not done twice.
        data_plan = (
            whole_plan if whole_plan is not None and todo is None else self._data_plan(request, items, job_id, todo)
        )
        if items and todo != []:
            try:
                size = options.chunk_size or self.backend.default_chunk_size(len(items) if todo is None else len(todo))
                chunks = chunk_indices(len(items), size) if todo is None else chunk_subset(todo, size)
                parts = [
                    items[indices.start : indices.stop] if isinstance(indices, range) else [items[i] for i in indices]
                    for indices in chunks
                ]
                pickled = _plain_parts(items, parts)
                items_from: frozenset[str] = frozenset()  # the modules of the items' classes, when known
                if not pickled and parts:
                    pickled = _numpy_parts(parts)
                    items_from = NUMPY_ITEMS if pickled else items_from
                if not pickled and parts:
                    pickled, items_from = _standard_parts(parts)
                slow_items: list[str] = []  # items that are not plain data, and took long to serialise

                def captured(
                    inside_items: Sequence[str] = (), read: frozenset[str] = frozenset()
                ) -> capture_mod.Capture:
                    return capture_mod.capture(
                        request.cell,
                        request.namespace,
                        export=[*request.export, *inside_items],
                        no_export=request.no_export,
                        folder=folder,
                        items=items,
                        # The job store keeps the namespaces of jobs that do not outlive the kernel: an
                        # unchanged capture reuses those bytes instead of serialising them again.
                        stored=None if self.backend.outlives_kernel else kept_namespace,
                        plain=bool(pickled) or not parts,
                        items_from=items_from,
                        also_read=read,
                    )

                cap = captured()
                numbers = list(map(str, range(1, len(chunks) + 1)))
                if pickled:  # (one comprehension: a job may have 10,000 one-iteration tasks, issue 16, a')
                    tasks = {
                        n: TaskSpec(n, indices, "pickle", data) for n, indices, data in zip(numbers, chunks, pickled)
                    }
                else:

                    def serialised(shipped: Sequence[str], met: list[object] | None = None) -> dict[str, TaskSpec]:
                        return {
                            number: TaskSpec(
                                number,
                                indices,
                                *capture_mod.serialize_items(part, shipped, request.namespace, indices[0], met),
                            )
                            for number, indices, part in zip(numbers, chunks, parts)
                        }

                    began = time.perf_counter()
                    met: list[object] = []  # the notebook's functions and classes the items hold
                    tasks = serialised(cap.names, met)
                    found = capture_mod.reach_inside({id(obj): obj for obj in met}.values(), request.namespace)
                    inside = found.names - set(cap.names) - set(request.no_export)
                    read = frozenset(found.global_reads)
                    if inside or (  # notebook code among the items: what it reads, and whether the body binds it
                        cap.function_mode
                        and read
                        and not capture_mod.function_mode_is_safe(
                            request.cell.body_tree, request.cell.target_names, set(read)
                        )
                    ):
                        cap = captured(sorted(inside), read)
                    if inside:  # (a partial of a notebook function): shipped with what it reads, the items again
                        tasks = serialised(cap.names)
                    slow_items = slow_items_warnings(
                        items,
                        time.perf_counter() - began,
                        sum(len(task.items) for task in tasks.values()),
                        request.cell.iterable_source,
                    )
            except CaptureError as exc:
                raise SubmitError(in_callers_words(str(exc), request.spelling)) from None
            if cap.compiled_modules and self.backend.files_are_remote:
                raise SubmitError(compiled_modules_message(cap.compiled_modules, self.backend.name))
            if cap.own_objects and self.backend.files_are_remote:
                raise SubmitError(
                    in_callers_words(own_objects_message(cap.own_objects, self.backend.name), request.spelling)
                )
            for text in (
                *cap.warnings,
                *unshipped_warnings(cap, request.spelling),
                *random_state_warnings(cap, len(tasks), request.spelling),
                *shared_iterator_warnings(cap, len(tasks), request.spelling),
                *slow_items,
            ):  # said before anything is submitted
                print(f"azpar: warning: {in_callers_words(text, request.spelling)}", file=sys.stderr)
        pool, vm_size = self.backend.pool_info()
        job = Job(
            job_id,
            items,
            options,
            backend_name=self.backend.name,
            pool=pool,
            vm_size=vm_size,
            size_label=self.backend.size_label,
            source=request.cell.source,
            nodes=self.backend.nodes,
            cancel=lambda: self.cancel(job_id),
        )
        job.health = lambda: self._unanswered(job_id)  # a service not answering: the views say so
        for bar in bars:
            progress_bar.follow(job, bar)
        self._meter(job)
        self.jobs[job_id] = job
        job.files = data_mod.FilesReport(data_plan) if data_plan is not None else None
        if base is not None:
            computed = set(todo if todo is not None else range(len(items)))
            kept = [i for i in range(len(items)) if i not in computed]
            job.adopt(base, kept)
            job.rerun_of = request.base.id if request.base is not None else None
            if job.files is not None and job.rerun_of is not None:  # the kept iterations' outputs: where they are
                job.files.adopt(base.files, job.rerun_of, kept)
            if job.files is not None and cached is not None:  # the reused iterations' outputs, linked in
                job.files.reuse(cached.outputs_from)
        job.from_cache = cached.count if cached is not None else 0
        recorder = jobstore.start_recording(
            job,
            items=list(map(operator.attrgetter("task_id", "indices", "items_codec", "items"), tasks.values())),
            tasks=len(tasks),
            backend_info=self.backend.manifest_info(job_id, dict(request.backend_options)),
            export=request.export,
            no_export=request.no_export,
            cwd=folder,
            ran=todo if cached is None else None,  # reused values: a record
            base_id=request.base.id if request.base else None,
        )
        if cached is not None:
            cached.record(job, recorder)
        capture_mod.show_made_code(request.cell)  # the kernel's tracebacks through functions the body returns
        if not tasks:
            job.finish(job.final_state())
            recorder.finish()
            return job
        job.add_tasks(zip(tasks, map(operator.attrgetter("indices"), tasks.values())))
        envelope = capture_mod.envelope_header(
            request.cell, cap, gather=options.gather, seed=options.seed, timeout=options.timeout
        )
        # %azpar debug runs an iteration again with this envelope and namespace (debugging.py):
        # the store keeps the bytes unless the backend staged them where they outlive the kernel.
        outlives = (recorder.manifest.get("backend_info") or {}).get("outlives_kernel")
        recorder.keep_envelope(envelope, None if outlives else cap.data)
        spec = JobSpec(
            job_id,
            envelope,
            cap.data,
            timeout=options.timeout,
            cwd=folder,
            retries=options.retries,
            backend_options={**request.backend_options, **({"data": data_plan} if data_plan else {})},
            manifest=recorder.manifest,
        )
        run = _Run(
            self,
            job,
            tasks,
            recorder,
            _files_seen(folder, self.backend.files_are_remote, data_plan),
            installs=self.backend.installs_packages,
        )
        with self._lock:
            self._runs[job_id] = run
        job.capture = cap.without_data()  # the bytes are staged by the backend, never kept (see without_data)
        del cap
        job.mark_running()
        logger.info("job %s submitted to %s: %d tasks, %d items", job_id, self.backend.name, len(tasks), len(items))
        self.backend.submit(spec, list(tasks.values()), run)
        self._watch_cost(job)
        return job

    def resume(self, job: Job) -> Job:
        """Take over a stored job that ran on without its kernel (Azure Batch): its tasks
        that had not ended are followed from this process (and those the dead kernel had
        not yet added are added), and their results are appended to the job's store folder.
        The job then ends, and cleans up, as if this process had started it."""
        if not self.backend.outlives_kernel:
            raise StoreError(f"the {self.backend.name} backend cannot take over job {job.id}")
        remaining = {
            task_id: TaskSpec(task_id, indices, codec, data)
            for task_id, indices, codec, data in jobstore.stored_tasks(job.id)
            if task_id not in job.tasks
        }
        for task in remaining.values():
            job.add_task(task.task_id, task.indices)
        job.bind(self.backend.nodes, lambda: self.cancel(job.id))
        job.health = lambda: self._unanswered(job.id)
        job.reattach = False
        recorder = jobstore.resume_recording(job)
        run = _Run(self, job, remaining, recorder)
        self.jobs[job.id] = job
        with self._lock:
            self._runs[job.id] = run
        try:
            # Also with nothing remaining (every task had a record; only the final state was
            # never written): the backend then cleans up after the job like after any other.
            self.backend.reattach(
                job.id, job.manifest or {}, list(remaining.values()), run, failed_before=bool(job.failures)
            )
        except BaseException:
            recorder.abandon()
            with self._lock:
                self._runs.pop(job.id, None)
            self.jobs.pop(job.id, None)
            raise
        recorder.claim()
        self._meter(job)  # from now: the time before this process took the job over is not known here
        self._watch_cost(job)
        run._maybe_finish()
        return job

    def _data_plan(
        self, request: RunRequest, items: list, job_id: str, todo: list[int] | None
    ) -> data_mod.DataPlan | None:
        """--inputs/--outputs resolved for these items (data.py), or None without them;
        every path is checked here, before anything is submitted."""
        options = request.options
        if not (options.inputs or options.outputs or options.outputs_to):
            return None
        try:
            found = data_mod.plan(
                options.inputs,
                options.outputs,
                options.outputs_to,
                target_source=request.cell.target_source,
                target_names=request.cell.target_names,
                items=items,
                folder=request.folder or os.getcwd(),
                indices=todo,
                blobs_ok=self.backend.blob_inputs,
                backend=self.backend.name,
            )
            if found.has_blobs:  # a backend's own checks (az:// blobs exist)
                self.backend.check_data(found)
        except DataError as exc:
            raise SubmitError(str(exc)) from None
        found.job_id = job_id
        return found

    @staticmethod
    def _input_signatures(found: data_mod.DataPlan | None, count: int) -> list[bytes | None]:
        """Each of the ``count`` iterations' ``--inputs`` in the plan ``found``, as ``--cache`` keys them
        (``data.input_signatures``); those reading ``az://`` inputs cannot be keyed, and run every
        time: said once."""
        signatures = data_mod.input_signatures(found, count) if found is not None else [b""] * count
        unkeyed = signatures.count(None)
        if unkeyed:
            print(
                f"azpar: warning: --cache does not reuse the {unkeyed} iteration{'s' * (unkeyed != 1)} that read "
                "az:// inputs (a blob's content is not known before it is downloaded): they run every time",
                file=sys.stderr,
            )
        return signatures

    def _meter(self, job: Job) -> None:
        """Meter the job's node and task time (jobs/cost.py) at the backend's prices (none: nothing billed)."""
        price = self.backend.node_prices()
        job.meter = CostMeter(price, billed=price is not None, cores_per_task=self.backend.cores_per_task())

    def _watch_cost(self, job: Job) -> None:
        """While a billed job runs, look at its nodes every COST_INTERVAL (its node time does not depend on a
        view being shown) and cancel it once its estimated cost passes its cap (``--max-cost``, else the
        profile's ``max_cost_per_job``): adding tasks stops, finished results stay, result() says why."""
        meter = job.meter
        if meter is None or not meter.billed or job.done:
            return
        cap = job.options.max_cost if job.options.max_cost is not None else self.backend.cost_cap()
        if cap is not None and (meter.price is None or not meter.price.known):
            print(
                f"azpar: warning: job {job.id} has a cost cap of {money(cap)} but the price of a node hour is "
                "unknown, so the cap cannot apply; set price_per_node_hour (and spot_price_per_node_hour) in "
                "the profile.",
                file=sys.stderr,
            )
            cap = None
        threading.Thread(target=self._cost_watch, args=(job, cap), daemon=True, name=f"azpar-cost-{job.id}").start()

    def _cost_watch(self, job: Job, cap: float | None) -> None:
        while not job.wait(COST_INTERVAL):
            estimate = job.cost()
            amount = estimate.amount if estimate is not None else None
            if cap is not None and amount is not None and amount > cap:
                currency = estimate.price.currency if estimate is not None and estimate.price else "USD"
                job.stop_reason = (
                    f"its estimated cost {money(amount, currency)} passed its cap of {money(cap, currency)} "
                    "(--max-cost / max_cost_per_job)"
                )
                self.cancel(job.id)
                return

    def _unanswered(self, job_id: str) -> str:
        """The backend's sentence about a service that stopped answering (Azure), else ""."""
        return self.backend.unanswered(job_id)

    def cancel(self, job_id: str) -> None:
        with self._lock:
            if job_id not in self._runs:
                return
            self._cancelled.add(job_id)
        self.backend.cancel(job_id)

    def running(self) -> list[Job]:
        """This engine's jobs that have not ended (read from a copy: other threads add jobs meanwhile)."""
        return [job for job in list(self.jobs.values()) if not job.done]

    def cancelled(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._cancelled

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._runs.pop(job_id, None)
        self.backend.finish(job_id)
