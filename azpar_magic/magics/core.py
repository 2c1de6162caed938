"""The IPython surface of azpar: argument parsing, UsageError, display and injection.

Everything that decides *what* happens lives in the engine; this module only translates a
cell into a RunRequest, waits in a way Ctrl-C can interrupt, shows what the iterations
printed, and binds the result into the user's namespace.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections import OrderedDict

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.utils.process import arg_split
from IPython.display import display, publish_display_data

from ..jobs import merge
from .. import api, session, worker
from ..config import ConfigError
from ..run.engine import FLAG_SPELLING, RunRequest, SubmitError, validate_options
from ..errors import IterationError
from ..jobs.job import LOST, Job, JobOptions
from ..run.parsing import CellError, body_warnings, is_requirement, is_variable_name, parse_cell, split_requirements
from ..ui.text import format_failures, format_pool_text, format_snapshot

DEFAULT_OUTPUT = "azpar_result"
PROGRESS_DELAY = 1.0  # seconds before the progress line appears (quick cells stay quiet)
PROGRESS_INTERVAL = 0.5
SHOWN_OUTPUT_LIMIT = 20_000  # characters of captured output shown after a run
DISPLAY_ENV = "AZPAR_DISPLAY"  # auto (default), widget or text
PANELS_KEPT = 50  # live job panels kept for re-display (collect, the --no-wait handle)


def _lost_message(job: Job) -> str:
    succeeded, failed, _ = job.counts()
    return (f"job {job.id} was lost: the kernel running it ended first. {succeeded} of {len(job.items)} iterations "
            f"had finished and are kept; `%azpar rerun {job.id} --failed` runs the other "
            f"{len(job.items) - succeeded} and binds the whole result in order.")


def _names(value: str | None, flag: str) -> tuple[str, ...]:
    if not value:
        return ()
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    bad = [n for n in names if not is_variable_name(n)]
    if bad:
        raise UsageError(f"{flag} takes comma-separated variable names; {', '.join(map(repr, bad))} "
                         f"{'is' if len(bad) == 1 else 'are'} not (a Python keyword cannot be a variable). "
                         "Nothing was submitted.")
    return names


def _variable(name: str, after: str = "") -> str:
    """The -o name a result is bound to; ``class`` or ``None`` would pass ``str.isidentifier``."""
    if not is_variable_name(name):
        raise UsageError(f"-o needs a variable name, got {name!r}"
                         + (" (a Python keyword)" if name.isidentifier() else "") + "." + after)
    return name


def _unquote(text: str) -> str:
    """IPython's option splitter keeps the quotes around a value (``'data/{i}.csv'``),
    which are needed to protect globs, braces, spaces and commas; the value is what is
    inside them."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _number(flag: str, text: str | None, kind: type):
    """An option's number, or None when it is not given; a UsageError naming the flag."""
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        whole = "a whole number" if kind is int else "a number"
        raise UsageError(f"{flag} must be {whole}, got {text!r}. Nothing was submitted.") from None


def _unsatisfied(requirements: list[str]) -> list[str]:
    """The --packages requirements this kernel's environment does not meet, each with what
    it has: local iterations import from here, so a cell written for Azure that runs locally
    should say when it runs against other versions. Specifiers are checked with
    ``packaging`` when it is installed, else only ``==``."""
    from importlib import metadata

    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pragma: no cover - packaging comes with ipykernel and pip
        Requirement = None  # noqa: N806
    problems = []
    for text in requirements:
        name = text.split("[", 1)[0]
        for operator in ("===", "==", ">=", "<=", "~=", "!=", "<", ">"):
            name = name.split(operator, 1)[0]
        name = name.strip()
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{text} (not installed)")
            continue
        if Requirement is not None:
            try:
                ok = Requirement(text).specifier.contains(have, prereleases=True)
            except InvalidRequirement:
                ok = True  # the Azure side reports it; here only versions are compared
        else:
            ok = "==" not in text or text.split("==", 1)[1].strip() == have
        if not ok:
            problems.append(f"{text} ({have} installed)")
    return problems


def _iterations_text(indices: list[int]) -> str:
    return (f"iteration{'s' * (len(indices) != 1)} " + ", ".join(map(str, indices[:10]))
            + (f" and {len(indices) - 10} more" if len(indices) > 10 else ""))


def _truncation_note(job_id: str, shown: int, hidden: int, displays: int, indices: list[int],
                     capped: list[int]) -> str:
    """The note after a cell's replayed output was cut: how much, whose, where the rest is;
    ``capped``: iterations the worker had cut already (their text past its cap is gone)."""
    parts = [f"{hidden:,} more character{'s' * (hidden != 1)}"] * bool(hidden)
    parts += [f"{displays} display{'s' * (displays != 1)}"] * bool(displays)
    note = (f"\n[azpar: output truncated after {shown:,} characters: {' and '.join(parts)} not shown "
            f"({_iterations_text(indices)}). The whole text of iteration i: "
            f"azpar_magic.attach('{job_id}').output(i) or %azpar logs {job_id} i")
    if capped:
        note += (f"; {_iterations_text(capped)} printed more than a worker keeps ({worker.OUTPUT_LIMIT:,} "
                 "characters each), and the rest of that was not kept")
    return note + "]"


def _size_text(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


class _TransferProgress:
    """One refreshing line for %azpar storage transfers of files over a few MB."""

    MIN_SIZE = 8_000_000

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.last = 0.0
        self.shown = False

    def __call__(self, name: str, done: int, total: int) -> None:
        if total < self.MIN_SIZE or self.quiet:
            return
        now = time.monotonic()
        if done < total and now - self.last < 0.5:
            return
        self.last, self.shown = now, True
        percent = 100 * done // total if total else 100
        sys.stdout.write(f"\razpar: {name}  {_size_text(done)} of {_size_text(total)} ({percent}%)   ")
        sys.stdout.flush()

    def close(self) -> None:
        if self.shown:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.shown = False


class _Progress:
    """The one refreshing text line, drawn from the main thread only (a background print
    would land in whichever cell runs next).

    In a kernel it is one display updated in place by its display id: frontends redraw it,
    and nbclient, papermill and nbconvert keep a single output holding the last picture
    (a ``\r`` stream line would be a new saved output at every refresh). Terminal IPython
    cannot update a display in place, so there it is a stdout line rewritten with ``\r``."""

    def __init__(self, job: Job, quiet: bool, in_place: bool = False):
        self.job, self.quiet, self.in_place = job, quiet, in_place
        self.shown = False
        self.last = 0.0
        self.width = 0
        self.handle = None  # the display updated in place (in_place only)

    def tick(self, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        snap = self.job.snapshot()
        if not self.shown and snap.elapsed < PROGRESS_DELAY and not force:
            return
        if not force and now - self.last < PROGRESS_INTERVAL:
            return
        self.last, self.shown = now, True
        line = format_snapshot(snap)
        if self.in_place:
            self._draw(line)
            return
        pad = " " * max(0, self.width - len(line))
        self.width = len(line)
        sys.stdout.write("\r" + line + pad)
        sys.stdout.flush()

    def _draw(self, text: str) -> None:
        bundle = {"text/plain": text}
        if self.handle is None:
            self.handle = display(bundle, raw=True, display_id=True)
        else:
            self.handle.update(bundle, raw=True)

    def close(self) -> None:
        if self.shown and self.in_place:  # the last picture replaces the live one, failures included
            snap = self.job.snapshot()
            failures = format_failures(snap) if snap.failures and snap.errors != "stop" else ""
            self._draw(format_snapshot(snap) + ("\n" + failures if failures else ""))
        elif self.shown:
            self.tick(force=True)
            sys.stdout.write("\n")
            snap = self.job.snapshot()
            if snap.failures and snap.errors != "stop":  # under stop, the raised error says it all
                sys.stdout.write(format_failures(snap) + "\n")
            sys.stdout.flush()


class _PanelProgress:
    """The widget panel in the text line's place: a background thread draws it, so the
    waiting loop has nothing to do; ``close`` draws the final state before the cell ends.

    The display's own ``text/plain`` (what nbval, plain frontends and a saved notebook
    without widget state show) was taken at submission; once the job has ended, ``close``
    replaces it by display id with the final text and the panel as static HTML."""

    def __init__(self, panel, handle, job: Job):
        self.panel, self.handle, self.job = panel, handle, job

    def tick(self, force: bool = False) -> None:
        pass

    def close(self) -> None:
        self.panel.settle()
        self.panel.when_final(self._show_final)  # now, or when a cancelling job has ended

    def _show_final(self) -> None:
        snap = self.job.snapshot()
        failures = format_failures(snap) if snap.failures else ""
        text = repr(self.job) + ("\n" + failures if failures else "")
        self.handle.update(self.panel.mimebundle(text, self.job._repr_html_()), raw=True)


def _display_mode(shell) -> str:
    """"widget" or "text" for the current cell.

    Widgets need a kernel with a comm manager (not terminal IPython), ipywidgets, and a
    frontend that draws them. The kernel cannot ask the frontend, but interactive notebook
    frontends (JupyterLab, Notebook 7, VS Code) send the cell's id with each execute request
    while nbclient, nbconvert, papermill, nbval and jupyter_client scripts do not: those
    runs get the text line, which their saved outputs keep readable. AZPAR_DISPLAY=text
    forces the text line; AZPAR_DISPLAY=widget forces widgets wherever a kernel can send
    them (a frontend that sends no cell id but draws widgets, e.g. classic Notebook 6).
    """
    forced = os.environ.get(DISPLAY_ENV, "auto").strip().lower()
    if forced == "text":
        return "text"
    kernel = getattr(shell, "kernel", None)
    if kernel is None or getattr(kernel, "comm_manager", None) is None:
        return "text"
    try:
        from ..ui import panel  # noqa: F401  (imports ipywidgets)
    except ImportError:
        return "text"
    if forced == "widget":
        return "widget"
    info = getattr(getattr(shell.displayhook, "exec_result", None), "info", None)
    return "widget" if getattr(info, "cell_id", None) else "text"


_PANELS: OrderedDict[str, object] = OrderedDict()


def _panel_for(job: Job):
    """The job's live panel (one per job, so every view of it is the same widget),
    following the job from a background thread until it ends."""
    from ..ui.panel import JobPanel

    panel = _PANELS.get(job.id)
    if panel is None:
        panel = _PANELS[job.id] = JobPanel(job)
        while len(_PANELS) > PANELS_KEPT:
            _PANELS.popitem(last=False)
    panel.start()
    return panel


def _job_mimebundle(job: Job):
    """A job handle with a live panel displays as that panel (``--no-wait`` cells, the
    job shown again later); the others fall back to their text and HTML reprs."""
    panel = _PANELS.get(job.id)
    return panel.mimebundle(repr(job)) if panel is not None else None


def _pool_views() -> list[dict]:
    """One pool view per engine of this kernel (what ``%azpar status`` draws)."""
    from ..ui.state import pool_view

    views = []
    for engine in session.engines() or [session.engine()]:
        backend = engine.backend
        pool, size = backend.pool_info()
        active = [job.snapshot() for job in list(engine.jobs.values()) if not job.done]
        views.append(pool_view(backend.name, backend.describe(), pool, size, backend.nodes(), active))
    return views


def _take_option(words: list[str], flag: str, usage: str) -> tuple[str | None, list[str]]:
    """(value of ``flag VALUE`` in a command's words, the words without it); UsageError
    showing ``usage`` when the value is missing."""
    if flag not in words:
        return None, words
    at = words.index(flag)
    if at + 1 >= len(words):
        raise UsageError(usage)
    return words[at + 1], words[:at] + words[at + 2:]


@magics_class
class AzparMagics(Magics):
    """``%%azpar`` runs loop iterations in parallel; ``%azpar`` manages jobs."""

    def __init__(self, shell=None):
        super().__init__(shell)
        self._pending_outputs: dict[str, tuple[str, tuple[str, ...], bool]] = {}

    # ------------------------------------------------------------------ %%azpar

    @magic_arguments(name="%azpar")  # usage then reads "%%azpar [-o NAME] ..."
    @argument("-o", "--output", metavar="NAME",
              help=f"variable that receives the combined result (default: {DEFAULT_OUTPUT})")
    @argument("--combine", default="list", metavar="HOW",
              help="list (default: values in iteration order), dict (item -> value), sum, concat "
                   "(lists, strings, numpy arrays, pandas frames), or an expression naming a callable "
                   "that receives the list of values")
    @argument("--gather", metavar="A,B", help="also bind A, B, ... to lists of those body variables' "
                                             "final values, one per iteration")
    @argument("--errors", default="stop", choices=merge.ERROR_POLICIES,
              help="stop: raise the first failure (index, item, remote traceback); remove: drop failed "
                   "iterations; pass: the exception object stands in for the value")
    @argument("--retries", default="2", metavar="N",
              help="attempts after an infrastructure failure (lost worker, killed process); user "
                   "exceptions are never retried (default: 2, at most 100)")
    @argument("--chunk-size", default="auto", metavar="N|auto",
              help="iterations per task; auto balances overhead and load (default)")
    @argument("--seed", metavar="N", help="give each iteration its own reproducible random "
                                         "stream (random and numpy.random), whatever the scheduling; 0 to 2**64-1")
    @argument("--timeout", metavar="SECONDS", help="kill a task running longer than this (more than 0, at most "
                                                  "604800: 7 days)")
    @argument("--export", metavar="A,B", help="ship these variables even if the body does not name them")
    @argument("--no-export", metavar="A,B", help="never ship these variables")
    @argument("--name", metavar="NAME", help="a short label for the job (letters, digits, '-', '_', '.'; at most 64): "
                                             "%%azpar commands take it instead of the id (the newest job of that "
                                             "name), and %%azpar jobs --name filters by it")
    @argument("--no-wait", action="store_true", help="return a job handle at once; "
                                                    "%%azpar collect binds the result later")
    @argument("-q", "--quiet", action="store_true", help="no progress line")
    @argument("--backend", metavar="NAME", help="backend for this cell (default from configuration: local)")
    @argument("--workers", metavar="N", help="size of the local pool (default: one per CPU this kernel may use; "
                                            "at most 4 per usable CPU, or 32 on smaller machines)")
    @argument("--profile", metavar="NAME", help="run with this profile (an Azure pool, see %%azpar config); "
                                                "default: %%azpar use, then the config files")
    @argument("--packages", action="append", metavar="REQ,REQ",
              help="Azure: pip requirements installed on each node for this job besides the kernel's versions of "
                   "what the cell uses, replacing those of the same name (cached by their hash across jobs); "
                   "repeatable; a comma before a version operator continues a range ('x>=0.1,<0.2'). "
                   "Local pool: installs nothing, checks this environment has them")
    @argument("--no-auto-packages", action="store_true",
              help="Azure: do not install the kernel's versions of the distributions the cell uses (the image "
                   "has them; they are only checked); the profile's auto_packages = false does this for every cell")
    @argument("--merge", default="client", choices=("client", "cloud"),
              help="Azure: client (default) downloads results as tasks finish; cloud adds a merge task that "
                   "writes one merged blob, downloaded once")
    @argument("--keep", action="store_true", help="Azure: keep the Batch job and its containers after success")
    @argument("--inputs", action="append", metavar="SPEC",
              help="files every iteration reads, under inputs/ in its working directory: a local file, folder or "
                   "glob, or az://container/path; with {target} placeholders, each iteration gets its own "
                   "(e.g. 'data/part-{i}.csv'); repeatable")
    @argument("--outputs", action="append", metavar="GLOB",
              help="files an iteration writes in its working directory that come back to "
                   "azpar_outputs/<job id>/<iteration>/; repeatable")
    @argument("--outputs-to", metavar="DEST", help="where --outputs go instead of azpar_outputs: a folder or "
                                                   "az://container/prefix (Azure)")
    @cell_magic("azpar")
    @no_var_expand  # the line is code and paths: IPython must not fill in {name} and $name from the namespace
    def azpar_cell(self, line: str, cell: str):
        """Run the iterations of a for loop in parallel.

            %%azpar [options] for TARGET in ITERABLE[:]
            BODY

        ITERABLE is evaluated once here and its items are materialised. BODY runs once per item
        with TARGET bound, on a worker; the value of an iteration is the value of the body's last
        expression statement (None otherwise; ``continue`` ends the iteration with None). The values
        are combined in iteration order, exactly as a sequential loop collecting them would, and bound
        to the -o variable. ``break``, ``return`` and ``yield`` are refused before anything runs.

        Only the names the body needs are sent (functions and classes defined in the notebook by
        value, modules by reference). What iterations print or display is shown after the run. Ctrl-C
        cancels the job; finished iterations stay available from the job handle.

        Files: with --inputs or --outputs each iteration runs in its own empty working directory.
        Inputs appear under inputs/ there with the layout given (data/a.csv -> inputs/data/a.csv,
        az://c/p -> inputs/c/p); {name} placeholders naming loop targets make a spec per iteration
        ('parts/part-{i}.csv'). Files matching --outputs come back to
        azpar_outputs/<job id>/<iteration>/ (or --outputs-to DEST) as each task ends.

        The line is taken as typed: IPython does not fill in {name} or $name from the notebook here.
        Quote a value with spaces, commas or braces ('lambda rows: sum(rows)'); quotes are removed alike
        for every option.
        """
        try:
            parsed = parse_cell(line, cell)
        except CellError as exc:
            raise UsageError(str(exc)) from None
        args = self._parse_options(parsed.options)
        options = self._job_options(args)
        export, no_export = _names(args.export, "--export"), _names(args.no_export, "--no-export")
        engine = self._engine(args)
        notes: list[str] = []
        request = RunRequest(parsed, self.shell.user_ns, options, export, no_export,
                             backend_options=self._backend_options(args, engine.backend.name, notes),
                             spelling=FLAG_SPELLING)
        for note in notes + [f"azpar: warning: {text}" for text in body_warnings(parsed, options.gather)]:
            print(note, file=sys.stderr)
        uploads = request.backend_options["transfer_progress"] = _TransferProgress(quiet=args.quiet)  # --inputs
        before = set(engine.jobs)
        try:
            job = engine.submit(request)
        except SubmitError as exc:
            raise UsageError(str(exc)) from None
        except (ValueError, RuntimeError) as exc:
            raise UsageError(f"The job could not be started: {exc}. Nothing was submitted.") from None
        except KeyboardInterrupt as exc:
            self._interrupted(engine, before, str(exc))
        finally:
            uploads.close()
        session.remember(job)
        if args.no_wait:
            self._pending_outputs[job.id] = (options.output_name, options.gather, args.quiet)
            self._follow(job, args.quiet)
            return job
        self._wait(job, args.quiet)
        self._show_outputs(job)
        self._show_files(job, args.quiet)
        self._inject(job, options.output_name, options.gather)
        return None

    @staticmethod
    def _engine(args):
        try:
            return session.engine(args.backend, args.workers, args.profile)
        except (ConfigError, ValueError) as exc:
            raise UsageError(f"{exc}. Nothing was submitted.") from None

    @staticmethod
    def _interrupted(engine, before: set[str], said: str = ""):
        """Ctrl-C while the iterable was evaluated, the namespace captured or the job handed
        to the backend: one line saying so (the traceback would be from inside pickling).
        ``said``: the engine's own account of where it was interrupted, if it gave one."""
        started = [job for job_id, job in list(engine.jobs.items()) if job_id not in before]
        if not started:
            where = said.rstrip(". ").removesuffix("Nothing was submitted").rstrip(". ") if said else (
                "while preparing the run (evaluating the iterable, capturing or staging the namespace)")
            raise UsageError(f"Interrupted (Ctrl-C) {where.removeprefix('interrupted ')}: nothing was submitted.") \
                from None
        for job in started:
            job.cancel()
        raise UsageError(f"Interrupted (Ctrl-C) while submitting job {started[0].id}: it was cancelled, and no "
                         "result is bound.") from None

    @staticmethod
    def _backend_options(args, backend: str, notes: list[str]) -> dict:
        """Options only the Azure backend acts on. Elsewhere they are accepted (so a cell
        written for Azure can be debugged locally unchanged) with one line saying what they
        do not do here, and --packages is checked against this kernel's environment, which
        local iterations use."""
        packages = split_requirements(args.packages or ())
        bad = [p for p in packages if not is_requirement(p)]
        if bad:
            raise UsageError(f"--packages takes pip requirements like numpy==1.26.4 or 'scipy>=1.11,<1.14' "
                             f"(repeatable, or separated by commas); {', '.join(map(repr, bad))} "
                             f"{'is' if len(bad) == 1 else 'are'} not. Nothing was submitted.")
        if backend != "azure":
            ignored = [text for text, on in (
                ("--packages installs nothing (iterations use this kernel's environment)", packages),
                ("--merge cloud merges in the kernel as usual", args.merge == "cloud"),
                ("--keep has no Batch job to keep", args.keep)) if on]
            if ignored:
                notes.append(f"azpar: on the {backend} pool, {'; '.join(ignored)}; they act on Azure only.")
            missing = _unsatisfied(packages)
            if missing:
                notes.append("azpar: warning: --packages not satisfied in this kernel's environment: "
                             f"{', '.join(missing)}; local iterations may fail or differ from Azure.")
        options = {"packages": packages, "merge": args.merge, "keep": args.keep}
        if args.no_auto_packages:
            options["auto_packages"] = False
        return options

    def _parse_options(self, text: str):
        """Every value is taken as typed, without its quotes (IPython's splitter keeps them):
        quoting protects spaces, commas, braces and globs the same way for every option."""
        try:
            words = [_unquote(word) for word in arg_split(text, strict=True)]
        except ValueError as exc:
            raise UsageError(f"the %%azpar options could not be read: {exc} (a quote is not closed?): {text!r}. "
                             "Nothing was submitted.") from None
        try:
            return self.azpar_cell.parser.parse_args(words)
        except UsageError as exc:
            if "unrecognized arguments" not in str(exc):
                raise
            raise UsageError(f"{exc}. A value with spaces must be quoted, e.g. --combine 'lambda rows: sum(rows)'. "
                             "Nothing was submitted.") from None
        except SystemExit:  # argparse's own exit on a bad value
            raise UsageError(f"invalid %%azpar options: {text!r}; see %%azpar?") from None

    def _job_options(self, args) -> JobOptions:
        output = _variable(args.output or DEFAULT_OUTPUT, " Nothing was submitted.")
        combine = args.combine
        if combine not in merge.COMBINE_MODES:
            try:
                combine = eval(combine, self.shell.user_ns)
            except Exception as exc:
                raise UsageError(f"--combine {args.combine!r} is neither one of {', '.join(merge.COMBINE_MODES)} "
                                 f"nor an expression that evaluates here ({type(exc).__name__}: {exc}).") from None
            if not callable(combine):
                raise UsageError(f"--combine {args.combine!r} must name a callable; it is a "
                                 f"{type(combine).__name__}.")
        chunk = args.chunk_size
        if chunk == "auto":
            chunk_size = None
        else:
            try:
                chunk_size = int(chunk)
            except ValueError:
                raise UsageError(f"--chunk-size must be a positive whole number or auto, got {chunk!r}") from None
        workers = _number("--workers", args.workers, int)
        if workers is not None and not 1 <= workers <= session.workers_limit():
            raise UsageError(f"--workers must be between 1 and {session.workers_limit()} ({session.WORKERS_PER_CPU} "
                             f"per CPU this kernel may use, at least {session.WORKERS_FLOOR}), got {workers}. Nothing "
                             "was submitted.")
        args.workers = workers
        options = JobOptions(combine=combine, errors=args.errors, gather=_names(args.gather, "--gather"),
                             retries=_number("--retries", args.retries, int),
                             timeout=_number("--timeout", args.timeout, float), chunk_size=chunk_size,
                             seed=_number("--seed", args.seed, int), output_name=output,
                             inputs=tuple(args.inputs or ()), outputs=tuple(args.outputs or ()),
                             outputs_to=args.outputs_to or None, name=args.name)
        try:
            validate_options(options, FLAG_SPELLING)
        except SubmitError as exc:
            raise UsageError(f"{exc} Nothing was submitted.") from None
        return options

    def _live_view(self, job: Job, quiet: bool):
        """The widget panel where the frontend draws widgets, else the text line."""
        if not quiet and _display_mode(self.shell) == "widget":
            panel = _panel_for(job)
            handle = display(panel.mimebundle(repr(job)), raw=True, display_id=True)
            return _PanelProgress(panel, handle, job)
        return _Progress(job, quiet, in_place=getattr(self.shell, "kernel", None) is not None)

    def _follow(self, job: Job, quiet: bool) -> None:
        """``--no-wait``: in widget mode the returned handle shows as the live panel, which
        its thread keeps updating after the cell has returned."""
        if quiet or _display_mode(self.shell) != "widget":
            return
        _panel_for(job)
        self.shell.display_formatter.mimebundle_formatter.for_type(Job, _job_mimebundle)

    def _wait(self, job: Job, quiet: bool) -> None:
        progress = self._live_view(job, quiet)
        try:
            while not job.wait(0.1):
                progress.tick()
        except KeyboardInterrupt:
            if job.owner:  # followed from the store: another process runs it; stop waiting only
                progress.close()
                print(f"azpar: stopped waiting for job {job.id}; it still runs in {job.owner} "
                      f"(%azpar collect {job.id} waits again).", file=sys.stderr)
                raise
            job.cancel()
            job.wait(10)
            progress.close()
            self._show_outputs(job)  # what the finished iterations printed is not lost either
            snap = job.snapshot()
            print(f"azpar: job {job.id} cancelled; {snap.items_succeeded} of {snap.items_total} "
                  f"iterations had finished: their values are in azpar_magic.jobs()[-1].partial_results().",
                  file=sys.stderr)
            raise
        progress.close()

    def _show_outputs(self, job: Job) -> None:
        """Replay what iterations printed or displayed, in iteration order, up to
        SHOWN_OUTPUT_LIMIT characters (a display counts 100); past it, one note says how
        much was not shown, of which iterations, and where the whole text is."""
        shown = hidden = hidden_displays = 0
        cut: list[int] = []  # iterations with something not shown
        capped: list[int] = []  # ... and among them those the worker had cut already
        outputs = job.outputs
        for index in sorted(outputs):
            for kind, data in outputs[index]:
                room = SHOWN_OUTPUT_LIMIT - shown
                if kind == "display":
                    if room <= 0:
                        hidden_displays += 1
                        cut.append(index)
                        continue
                    publish_display_data(data)
                    shown += 100
                    continue
                text = data[:max(room, 0)]
                if len(text) < len(data):
                    hidden += len(data) - len(text)
                    cut.append(index)
                    if worker.TRUNCATED_MARK in data[len(text):]:
                        capped.append(index)
                if text:
                    shown += len(text)
                    (sys.stdout if kind == "stdout" else sys.stderr).write(text)
        sys.stdout.flush()
        if hidden or hidden_displays:
            print(_truncation_note(job.id, shown, hidden, hidden_displays, sorted(set(cut)), capped), file=sys.stderr)
        sys.stderr.flush()

    @staticmethod
    def _show_files(job: Job, quiet: bool) -> None:
        """--outputs: where they went, and each pattern that matched nothing (once)."""
        report = getattr(job, "files", None)
        if report is None or not report.plan.outputs:
            return
        for line in report.warnings():
            print(f"azpar: warning: {line}", file=sys.stderr)
        if not quiet:
            count = len(report.produced)
            print(f"azpar: outputs of {count} iteration{'s' if count != 1 else ''} in {report.location}")

    def _inject(self, job: Job, output: str, gather: tuple[str, ...]) -> None:
        try:
            value = job.result()
        except IterationError:
            raise
        except Exception as exc:
            raise UsageError(f"The results of job {job.id} could not be combined: {exc}. The per-iteration "
                             "values stay in azpar_magic.jobs()[-1].partial_results().") from None
        self.shell.user_ns[output] = value
        if gather:
            self.shell.user_ns.update(job.gathered())

    # ------------------------------------------------------------------ %azpar

    @line_magic("azpar")
    @no_var_expand  # job ids, paths and FIELD=VALUE as typed (see azpar_cell)
    def azpar_line(self, line: str):
        """Manage azpar jobs and pools: ``%azpar COMMAND [ARGS]``.

        JOB is a job id (or its last characters) or a job's --name (the newest job of that name);
        the latest job when omitted. Each command
        says more with ``%azpar help COMMAND``.
        """
        words = line.split()
        if not words:
            raise UsageError("usage: %azpar COMMAND [ARGS], with COMMAND one of "
                             f"{', '.join(self._commands())}; %azpar help lists what each does")
        if words[0] in ("help", "-h", "--help"):
            topic = words[1] if len(words) > 1 else None
            print(self._help(topic))
            return None
        command, rest = words[0], words[1:]
        handler = self._commands().get(command)
        if handler is None:
            raise UsageError(f"unknown %azpar command {command!r}; expected one of "
                             f"{', '.join(sorted(self._commands()))} (see %azpar help)")
        return handler(rest)

    def _commands(self) -> dict:
        """Sub-command name -> handler taking the remaining words (one entry per command, so
        each feature adds its command without touching the others)."""
        return {
            "collect": self._collect,
            "jobs": self._cmd_jobs,
            "attach": self._cmd_attach,
            "logs": self._cmd_logs,
            "cancel": self._cmd_cancel,
            "rerun": self._cmd_rerun,
            "debug": self._cmd_debug,
            "delete": self._cmd_delete,
            "pool": self._cmd_pool,
            "backend": self._cmd_backend,
            "use": self._cmd_use,
            "status": self._cmd_status,
            "config": self._cmd_config,
            "storage": self._cmd_storage,
            "doctor": self._cmd_doctor,
            "env": self._cmd_env,
        }

    _COMMAND_HELP = {
        "collect": "%azpar collect [JOB] [-o NAME]   wait for a job (this kernel's or a stored one) and bind its "
                   "result",
        "jobs": "%azpar jobs [--all] [--state S] [--name PATTERN] [--since DATE]   the job store's jobs, every "
                "kernel's: id, name, when, backend, state, done/failed/total, cell (the latest 30 unless --all); "
                "S: running, succeeded, done, failed, cancelled, lost (several with commas); PATTERN: a glob "
                "('sweep-*'); DATE: 2026-12-01, today, yesterday or Nd (the last N days)",
        "attach": "%azpar attach JOB [-o NAME]      show a job's panel, also after a kernel restart; its result is "
                  "bound now if it ended, else when it ends",
        "logs": "%azpar logs JOB [ITERATION]      what an iteration printed and its traceback (all that printed or "
                "failed without ITERATION), also after the job ended or the kernel restarted",
        "cancel": "%azpar cancel [JOB]              cancel a job (default: the latest)",
        "rerun": "%azpar rerun JOB [--failed|--all] [-o NAME] [--no-wait] [-q]   run the failed or missing "
                 "iterations again with the notebook's current definitions, merged in order with the earlier "
                 "results (--all: every iteration)",
        "debug": "%azpar debug JOB ITERATION [--no-pdb]   run one iteration again in this kernel with the job's own "
                 "namespace and item, and open the debugger where it fails (--no-pdb: raise its exception here, "
                 "with the cell's line numbers); also after a kernel restart, for local and Azure jobs",
        "delete": "%azpar delete JOB [JOB ...]      remove jobs' results, items and logs from the job store (an "
                  "Azure job's Batch job and containers too)",
        "pool": "%azpar pool [status|create|delete|resize D S] [--profile NAME]   the pool's nodes, or manage "
                "an Azure pool",
        "backend": "%azpar backend                   say which backend cells run on",
        "use": "%azpar use PROFILE|local         run later cells with this profile (local: the local pool)",
        "status": "%azpar status                    the pools of this kernel: nodes, states, running tasks, "
                  "queue (live in a notebook)",
        "config": "%azpar config [PROFILE] [FIELD=VALUE ...]   edit a profile: a form in a notebook; with "
                  "FIELD=VALUE, set and save those fields",
        "storage": "%azpar storage ls [az://C/PATH] | get az://C/PATH LOCAL | put LOCAL az://C/PATH | "
                   "rm [-r] [-y] az://C/PATH  [--profile NAME]   the profile's Blob storage (rm lists what it would "
                   "delete unless -y)",
        "doctor": "%azpar doctor [PROFILE] [--run]   pre-flight check of a profile (default: the active one): what "
                  "its identity can and cannot do, each line with its fix (--run: also one iteration end to end)",
        "env": "%azpar env [PROFILE] [JOB]       what a job installs on the nodes (default: the latest job, with its "
               "profile): each distribution, its version, where it comes from, and whether the pool's image has it",
    }

    def _cmd_env(self, words: list[str]) -> None:
        """``%azpar env [PROFILE] [JOB]`` (envreport.py): a word naming a profile is the profile,
        the other the job; without a profile, the job's own (its manifest), else the active one."""
        from . import envreport

        usage = "usage: %azpar env [PROFILE] [JOB]"
        if len(words) > 2:
            raise UsageError(usage)
        from ..config import profile_names

        names = set(profile_names())
        profiles = [w for w in words if w in names]
        jobs = [w for w in words if w not in names]
        if len(profiles) > 1 or len(jobs) > 1:
            raise UsageError(f"{usage}; {' and '.join(words)} are both profile names")
        job = self._find(jobs[0] if jobs else None)
        manifest = job.manifest or {}
        profile = profiles[0] if profiles else (manifest.get("backend_info") or {}).get("profile")
        try:
            engine = (session.engine(profile=profile) if profile or job.backend_name == "azure"
                      else session.engine(backend=job.backend_name))
        except (ConfigError, ValueError) as exc:
            raise UsageError(f"{exc}") from None
        sys.stdout.write(envreport.report(job, engine.backend))

    def _help(self, topic: str | None) -> str:
        if topic is not None and topic in self._COMMAND_HELP:
            return self._COMMAND_HELP[topic]
        return "\n".join(self._COMMAND_HELP[name] for name in self._commands() if name in self._COMMAND_HELP)

    JOBS_SHOWN = 30  # rows of %azpar jobs without --all

    def _cmd_jobs(self, words: list[str]) -> None:
        from ..jobstore.store import store_root

        usage = "usage: %azpar jobs [--all] [--state S] [--name PATTERN] [--since DATE]"
        filters = {}
        for flag in ("--state", "--name", "--since"):
            value, words = _take_option(words, flag, usage)
            filters[flag[2:]] = _unquote(value) if value is not None else None  # a quoted glob: 'sweep-*'
        if words not in ([], ["--all"]):
            raise UsageError(usage)
        try:
            rows = api.jobs(stored=True, **filters)
        except ValueError as exc:
            raise UsageError(f"{exc}; {usage}") from None
        if not rows:
            given = " ".join(f"--{k} {v}" for k, v in filters.items() if v is not None)
            print(f"azpar: no jobs {'match ' + given if given else 'yet'} (job store: {store_root()})")
            return
        shown = rows if words else rows[-self.JOBS_SHOWN:]
        named = any(r.name for r in shown)
        table = [("id",) + ("name",) * named + ("when", "backend", "state", "done/failed/total", "cell")]
        for r in shown:
            state = r.state + (f" ({r.where})" if r.where and r.state not in ("lost",) else "")
            cell = r.first_line if len(r.first_line) <= 60 else r.first_line[:59] + "…"
            table.append((r.id,) + (r.name,) * named + (r.when, r.backend, state,
                                                        f"{r.succeeded}/{r.failed}/{r.total}", cell))
        widths = [max(len(row[c]) for row in table) for c in range(len(table[0]) - 1)]
        for row in table:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
        if len(shown) < len(rows):
            print(f"({len(rows) - len(shown)} older jobs: %azpar jobs --all)")

    def _cmd_cancel(self, words: list[str]) -> None:
        if len(words) > 1:
            raise UsageError("usage: %azpar cancel [JOB]")
        job = self._find(words[0] if words else None)
        if job.owner:
            raise UsageError(f"job {job.id} runs in {job.owner}, not in this kernel: cancel it there")
        job.cancel()
        job.wait(10)
        print(format_snapshot(job.snapshot()))

    @staticmethod
    def _job_and_output(words: list[str], usage: str, *, flags: tuple[str, ...] = ()) -> tuple[list[str], str | None,
                                                                                               set[str]]:
        """Split ``[JOB] [-o NAME] [flags]``: (the other words, NAME, the flags given)."""
        output, given, rest = None, set(), []
        i = 0
        while i < len(words):
            word = words[i]
            if word == "-o":
                if i + 1 >= len(words) or not is_variable_name(words[i + 1]):
                    raise UsageError(f"-o needs a variable name (not a keyword); {usage}")
                output = words[i + 1]
                i += 2
                continue
            if word.startswith("-"):
                if word not in flags:
                    raise UsageError(f"unknown option {word!r}; {usage}")
                given.add(word)
            else:
                rest.append(word)
            i += 1
        return rest, output, given

    def _cmd_attach(self, words: list[str]):
        usage = "usage: %azpar attach JOB [-o NAME]"
        rest, output, _ = self._job_and_output(words, usage)
        if len(rest) > 1:
            raise UsageError(usage)
        job = self._find(rest[0] if rest else None)
        name = output or job.options.output_name or DEFAULT_OUTPUT
        self._follow(job, quiet=False)
        if job.state == LOST:
            display(job)
            raise UsageError(_lost_message(job))
        if job.done:
            self._show_outputs(job)
            self._inject(job, name, job.options.gather)
            return job
        self._inject_when_done(job, name, job.options.gather)
        print(f"azpar: job {job.id} is {job.state}; {name} will be bound when it ends "
              f"(%azpar collect {job.id} waits for it)")
        return job

    def _inject_when_done(self, job: Job, output: str, gather: tuple[str, ...]) -> None:
        """Bind the result from whichever thread sees the job end (the panel stays live and
        the kernel free meanwhile). A result that is an error binds nothing: %azpar collect
        shows the error."""
        import threading

        lock, fired = threading.Lock(), []

        def listener(j: Job) -> None:
            if not j.done:
                return
            with lock:
                if fired:
                    return
                fired.append(True)
            try:
                value = j.result()
                gathered = j.gathered() if gather else {}
            except Exception:
                return
            self.shell.user_ns[output] = value
            self.shell.user_ns.update(gathered)

        job.listeners.append(listener)
        listener(job)  # it may have ended meanwhile

    def _cmd_logs(self, words: list[str]) -> None:
        from ..jobstore.store import StoreError

        usage = "usage: %azpar logs JOB [ITERATION]"
        if not 1 <= len(words) <= 2:
            raise UsageError(usage)
        index = None
        if len(words) == 2:
            try:
                index = int(words[1])
            except ValueError:
                raise UsageError(f"ITERATION is an iteration number (0, 1, ...), not {words[1]!r}; {usage}") from None
        try:
            text = api.logs(words[0], index)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
        except (IndexError, StoreError) as exc:
            raise UsageError(str(exc)) from None
        sys.stdout.write(text)

    def _cmd_rerun(self, words: list[str]):
        from ..jobstore.store import StoreError

        usage = "usage: %azpar rerun JOB [--failed|--all] [-o NAME] [--no-wait] [-q]"
        rest, output, given = self._job_and_output(words, usage, flags=("--failed", "--all", "--no-wait", "-q",
                                                                         "--quiet"))
        if len(rest) > 1 or {"--failed", "--all"} <= given:
            raise UsageError(usage)
        quiet = bool(given & {"-q", "--quiet"})
        try:
            job = api.rerun_with(rest[0] if rest else None, "--all" not in given, self.shell.user_ns, output,
                                     FLAG_SPELLING)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
        except (ValueError, StoreError) as exc:
            raise UsageError(str(exc)) from None
        except RuntimeError as exc:
            raise UsageError(f"The rerun could not be started: {exc}. Nothing was submitted.") from None
        session.remember(job)
        count = sum(len(t.indices) for t in job.tasks.values())
        if not quiet:
            what = "failed or missing " if "--all" not in given else ""
            kept = f" and keeps its {len(job.items) - count} finished ones" if "--all" not in given else ""
            print(f"azpar: job {job.id} runs the {count} {what}iteration{'s' if count != 1 else ''} of job "
                  f"{job.rerun_of} again{kept}")
        name = job.options.output_name or DEFAULT_OUTPUT
        if "--no-wait" in given:
            self._pending_outputs[job.id] = (name, job.options.gather, quiet)
            self._follow(job, quiet)
            return job
        self._wait(job, quiet)
        self._show_outputs(job)
        self._inject(job, name, job.options.gather)
        return None

    def _cmd_debug(self, words: list[str]):
        """``%azpar debug JOB I [--no-pdb]``: debugging.py loads and runs the iteration; here
        its exception is raised (--no-pdb) or shown and opened in IPython's post-mortem
        debugger, the one ``%debug`` opens (``shell.debugger``)."""
        from .. import debugging

        usage = "usage: %azpar debug JOB ITERATION [--no-pdb]"
        flags = [w for w in words if w.startswith("--")]
        rest = [w for w in words if not w.startswith("--")]
        if set(flags) - {"--no-pdb"} or len(rest) != 2:
            raise UsageError(usage)
        try:
            index = int(rest[1])
        except ValueError:
            raise UsageError(f"ITERATION is an iteration number (0, 1, ...), not {rest[1]!r}; {usage}") from None
        try:
            reproduction = debugging.prepare(rest[0], index)
        except debugging.DebugError as exc:
            raise UsageError(str(exc)) from None
        for note in reproduction.notes:
            print(note, file=sys.stderr)
        outcome = debugging.run(reproduction)
        exc = outcome.exception
        if exc is None:
            print(f"azpar: iteration {index} of job {reproduction.job_id} ran here without an exception; its value is "
                  f"returned")
            return outcome.value
        if "--no-pdb" in flags:
            __tracebackhide__ = True  # noqa: F841 - IPython leaves this frame out of the traceback
            raise exc
        self.shell.showtraceback((type(exc), exc, exc.__traceback__))
        self.shell.debugger(force=True)
        return None

    def _cmd_delete(self, words: list[str]) -> None:
        from ..jobstore.store import StoreError

        if not words:
            raise UsageError("usage: %azpar delete JOB [JOB ...]")
        found = []
        for word in words:  # every id checked before anything is deleted
            try:
                found.append(api.deletable_id(word))
            except KeyError as exc:
                raise UsageError(f"{exc.args[0]}. Nothing was deleted.") from None
            except (ValueError, StoreError) as exc:
                raise UsageError(f"{exc}. Nothing was deleted.") from None
        for job_id in dict.fromkeys(found):
            try:
                api.delete(job_id)
            except (RuntimeError, ConfigError) as exc:
                raise UsageError(f"job {job_id} was not deleted: {exc}. Its local copy is kept; try again.") from None
            print(f"azpar: deleted job {job_id} (its results, items and logs)")

    def _cmd_status(self, words: list[str]) -> None:
        if words:
            raise UsageError("usage: %azpar status")
        try:
            views = _pool_views()
        except (ConfigError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        if _display_mode(self.shell) == "widget":
            from ..ui.panel import PoolPanel

            panel = PoolPanel(_pool_views, first=views)
            display(panel.widget)
            panel.start()
            return
        print("\n".join(format_pool_text(view) for view in views))

    _DOCTOR_USAGE = "usage: %azpar doctor [PROFILE] [--run]"

    def _cmd_doctor(self, words: list[str]):
        """The doctor's table (azpar_magic.doctor): HTML in a notebook, text elsewhere."""
        from .. import doctor

        flags = [w for w in words if w.startswith("-")]
        names = [w for w in words if not w.startswith("-")]
        if set(flags) - {"--run"} or len(names) > 1:
            raise UsageError(self._DOCTOR_USAGE)
        display(doctor.diagnose(names[0] if names else None, run="--run" in flags))

    def _cmd_config(self, words: list[str]) -> None:
        from ..config import save_profile, user_config_path, validate_profile
        from ..ui import profile as prof

        try:
            words = shlex.split(" ".join(words))
        except ValueError as exc:
            raise UsageError(f"%azpar config: {exc}") from None
        names = [w for w in words if "=" not in w]
        assignments = [w for w in words if "=" in w]
        if len(names) > 1:
            raise UsageError("usage: %azpar config [PROFILE] [FIELD=VALUE ...]")
        try:
            name = names[0] if names else (session.active_profile() or "default")
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        if not prof.valid_name(name):
            shown = "this (not shown: it looks like a secret)" if prof.looks_like_secret(name) else repr(name)
            raise UsageError(f"a profile name is letters, digits, '-' or '_', not {shown}")
        values, sources, problem = prof.load(name)
        if problem:
            raise UsageError(problem)
        if assignments:
            loaded = dict(values)
            locks = prof.locked(name)
            for text in assignments:
                field, _, raw = text.partition("=")
                if field.strip() in locks:
                    raise UsageError(f"%azpar config: {field.strip()} of profile {name!r} is locked by the administrator "
                                     f"in {locks[field.strip()]}; ask them to change it. Nothing was saved.")
                try:
                    values[field.strip()] = prof.parse_value(field.strip(), raw)
                except ValueError as exc:
                    raise UsageError(f"%azpar config: {exc}. Nothing was saved.") from None
            # Fields set here must be valid; others may still be missing (set them later).
            problems = validate_profile(values)
            set_here = {text.partition("=")[0].strip() for text in assignments}
            bad = {k: m for k, m in problems.items() if k in set_here}
            if bad:
                raise UsageError(f"profile {name!r} not saved: " + "; ".join(f"{k} {m}" for k, m in bad.items()))
            path = user_config_path()
            try:
                save_profile(name, prof.to_save(values, loaded, sources, path), path)
            except ConfigError as exc:
                raise UsageError(str(exc)) from None
            print(f"azpar: saved profile {name} to {path}")
            for key, message in problems.items():
                print(f"  still to fix: {key} {message}")
            return
        if _display_mode(self.shell) == "widget":
            from ..ui.form import ConfigForm

            form = ConfigForm(name, test_connection=getattr(session, "test_connection", None),
                              pool_action=getattr(session, "pool_action", None))
            display(form.widget)
            return
        print(prof.profile_text(name, values, sources, validate_profile(values)))
        print(f"(file: {user_config_path()}; set fields with %azpar config {name} FIELD=VALUE ...)")

    _STORAGE_USAGE = ("usage: %azpar storage ls [az://CONTAINER/PATH] | get az://CONTAINER/PATH LOCAL | "
                      "put LOCAL az://CONTAINER/PATH | rm [-r] [-y] az://CONTAINER/PATH  [--profile NAME]")

    def _cmd_storage(self, words: list[str]) -> None:
        """The profile's Blob storage (azpar_magic.storage): transfers show one progress line."""
        from .. import storage

        try:
            words = shlex.split(" ".join(words))
        except ValueError as exc:
            raise UsageError(f"%azpar storage: {exc}") from None
        profile, words = _take_option(words, "--profile", self._STORAGE_USAGE)
        flags = {w for w in words if w.startswith("-")}
        args = [w for w in words if not w.startswith("-")]
        if not args or args[0] not in ("ls", "get", "put", "rm") or flags - ({"-r", "-y"} if args[0] == "rm" else set()):
            raise UsageError(self._STORAGE_USAGE)
        action, args = args[0], args[1:]
        wanted = {"ls": (0, 1), "get": (2, 2), "put": (2, 2), "rm": (1, 1)}[action]
        if not wanted[0] <= len(args) <= wanted[1]:
            raise UsageError(self._STORAGE_USAGE)
        progress = _TransferProgress()
        try:
            if action == "ls":
                entries = storage.ls(args[0] if args else "", profile=profile)
                for entry in entries:
                    size = "" if entry.size is None else _size_text(entry.size)
                    print(f"{size:>10}  {entry.path}")
                if not entries:
                    print("azpar: nothing there")
            elif action == "get":
                written = storage.get(args[0], args[1], profile=profile, progress=progress)
                progress.close()
                print(f"azpar: downloaded {len(written)} file{'s' if len(written) != 1 else ''} to {args[1]}")
            elif action == "put":
                written = storage.put(args[0], args[1], profile=profile, progress=progress)
                progress.close()
                print(f"azpar: uploaded {len(written)} file{'s' if len(written) != 1 else ''} to {args[1]}")
            else:
                doomed = storage.rm(args[0], recursive="-r" in flags, dry_run="-y" not in flags, profile=profile)
                if "-y" in flags:
                    print(f"azpar: deleted {len(doomed)} blob{'s' if len(doomed) != 1 else ''}")
                else:
                    print("\n".join(doomed))
                    print(f"azpar: {len(doomed)} blob{'s' if len(doomed) != 1 else ''} would be deleted; nothing was: "
                          "add -y to delete")
        except (storage.StorageError, FileNotFoundError, ValueError, ConfigError) as exc:
            progress.close()
            raise UsageError(f"%azpar storage {action}: {exc}") from None
        except RuntimeError as exc:  # a transfer that failed every attempt
            progress.close()
            raise UsageError(f"%azpar storage {action} failed: {exc}") from None

    def _cmd_use(self, words: list[str]) -> None:
        if len(words) != 1:
            raise UsageError("usage: %azpar use PROFILE (or %azpar use local)")
        try:
            if words[0] == "local":
                session.use(session.LOCAL)
                print("azpar: later cells run on the local pool")
                return
            profile = session.use(words[0])
        except (ConfigError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        print(f"azpar: later cells use profile {profile.name} ({profile['backend']} backend)")

    _POOL_USAGE = "usage: %azpar pool [status|create|delete|resize DEDICATED SPOT] [--profile NAME]"

    def _cmd_pool(self, words: list[str]) -> None:
        profile, words = _take_option(words, "--profile", self._POOL_USAGE)
        if words and words[0] in ("status", "create", "delete", "resize"):
            action, counts = words[0], words[1:]
            sizes: list[int] = []
            if action == "resize":
                try:
                    sizes = [int(c) for c in counts]
                except ValueError:
                    sizes = []
                if len(sizes) != 2 or min(sizes) < 0:
                    raise UsageError("usage: %azpar pool resize DEDICATED SPOT (two whole numbers, 0 or more)")
            elif counts:
                raise UsageError(self._POOL_USAGE)
            try:
                print(session.pool_action(profile, action, *sizes))
            except (ConfigError, ValueError, RuntimeError) as exc:
                raise UsageError(str(exc)) from None
            except Exception as exc:  # the service's answer, in one line
                raise UsageError(f"%azpar pool {action} failed: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
            return
        if words:
            raise UsageError(self._POOL_USAGE)
        for engine in session.engines() or [session.engine()]:
            nodes = engine.backend.nodes()
            print(f"{engine.backend.describe()}: "
                  + (", ".join(f"{n.id} {n.state}" for n in nodes) or "not started"))

    def _cmd_backend(self, words: list[str]) -> None:
        print(session.describe())

    def _find(self, job_id: str | None) -> Job:
        from ..jobstore.store import StoreError

        try:
            return session.find_job(job_id)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
        except StoreError as exc:
            raise UsageError(str(exc)) from None

    def _collect(self, words: list[str]) -> None:
        output = None
        if "-o" in words:
            at = words.index("-o")
            if at + 1 >= len(words):
                raise UsageError("-o needs a variable name")
            output = _variable(words[at + 1])
            words = words[:at] + words[at + 2 :]
        job = self._find(words[0] if words else None)
        default_output, gather, quiet = self._pending_outputs.get(
            job.id, (job.options.output_name or DEFAULT_OUTPUT, job.options.gather, False))
        if job.state == LOST:
            raise UsageError(_lost_message(job))
        self._wait(job, quiet=quiet)
        self._show_outputs(job)
        self._show_files(job, quiet)
        self._inject(job, output or default_output or DEFAULT_OUTPUT, gather)
