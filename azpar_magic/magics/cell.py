"""The ``%%azpar`` cell magic: its options (the ``magic_arguments`` that ``%%azpar?`` shows), and the run of one
cell from its text to the bound result."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.magic import no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments

from .. import session
from ..errors import CellError, SubmitError
from ..jobs import merge
from ..run.parsing import future_flags, parse_cell, parse_one_line
from ..run.request import FLAG_SPELLING, RunRequest
from .context import DEFAULT_OUTPUT, MagicContext, Pending
from .display import follow
from .finish import finish_run
from .options import backend_options, job_options, names, parse_options, shadow_warnings
from .progress import TransferProgress
from .usage import SETTINGS, usage_errors


@magic_arguments(name="%azpar")  # usage then reads "%%azpar [-o NAME] ..."
@argument(
    "-o", "--output", metavar="NAME", help=f"variable that receives the combined result (default: {DEFAULT_OUTPUT})"
)
@argument(
    "--combine",
    default="list",
    metavar="HOW",
    help="list (default: values in iteration order), dict (item -> value), sum, concat "
    "(lists, tuples, strings, numpy arrays, pandas frames; dicts merged in order, sets joined), or an "
    "expression naming a callable "
    "that receives the list of values",
)
@argument(
    "--gather",
    metavar="A,B",
    help="also bind A, B, ... to lists of those body variables' final values, one per iteration",
)
@argument(
    "--errors",
    default="stop",
    choices=merge.ERROR_POLICIES,
    help="stop: raise the first failure (index, item, remote traceback); remove: drop failed "
    "iterations; pass: the exception object stands in for the value",
)
@argument(
    "--retries",
    default="2",
    metavar="N",
    help="attempts after an infrastructure failure (lost worker, killed process); user "
    "exceptions are never retried (default: 2, at most 100)",
)
@argument(
    "--chunk-size",
    default="auto",
    metavar="N|auto",
    help="iterations per task; auto balances overhead and load (default)",
)
@argument(
    "--seed",
    metavar="N",
    help="give each iteration its own reproducible random "
    "stream (random and numpy.random), whatever the scheduling; 0 to 2**64-1",
)
@argument(
    "--timeout",
    metavar="DURATION",
    help="kill a task running longer than this: seconds, or with a unit (90s, 10m, 1.5h, 2d); more than 0, "
    "at most 7 days",
)
@argument("--export", metavar="A,B", help="ship these variables even if the body does not name them")
@argument("--no-export", metavar="A,B", help="never ship these variables")
@argument(
    "--name",
    metavar="NAME",
    help="a short label for the job (letters, digits, '-', '_', '.'; at most 64): "
    "%%azpar commands take it instead of the id (the newest job of that "
    "name), and %%azpar jobs --name filters by it",
)
@argument(
    "--cache",
    action="store_true",
    help="reuse the stored value of an iteration whose body, captured "
    "names (by content) and item are unchanged since an earlier "
    "--cache run; only the others run (%%azpar cache clear forgets)",
)
@argument("--no-wait", action="store_true", help="return a job handle at once; %%azpar collect binds the result later")
@argument("-q", "--quiet", action="store_true", help="no progress line")
@argument("--backend", metavar="NAME", help="backend for this cell (default from configuration: local)")
@argument(
    "--workers",
    metavar="N",
    help="size of the local pool (default: one per CPU this kernel may use; "
    "at most 4 per usable CPU, or 32 on smaller machines)",
)
@argument(
    "--profile",
    metavar="NAME",
    help="run with this profile (an Azure pool, see %%azpar config); default: %%azpar use, then the config files",
)
@argument(
    "--packages",
    action="append",
    metavar="REQ,REQ",
    help="Azure: pip requirements installed on each node for this job besides the kernel's versions of "
    "what the cell uses, replacing those of the same name (cached by their hash across jobs); "
    "repeatable; a comma before a version operator continues a range ('x>=0.1,<0.2'). "
    "Local pool: installs nothing, checks this environment has them",
)
@argument(
    "--no-auto-packages",
    action="store_true",
    help="Azure: do not install the kernel's versions of the distributions the cell uses (the image "
    "has them; they are only checked); the profile's auto_packages = false does this for every cell",
)
@argument(
    "--merge",
    default="client",
    choices=("client", "cloud"),
    help="Azure: client (default) downloads results as tasks finish; cloud adds a merge task that "
    "writes one merged blob, downloaded once",
)
@argument("--keep", action="store_true", help="Azure: keep the Batch job and its containers after success")
@argument(
    "--max-cost",
    default=None,
    metavar="AMOUNT",
    help="Azure: cancel the job once its estimated cost passes AMOUNT (the price's currency, USD for the "
    "list price), keeping finished results; default: the profile's max_cost_per_job",
)
@argument(
    "--inputs",
    action="append",
    metavar="SPEC",
    help="files every iteration reads, under inputs/ in its working directory: a local file, folder or "
    "glob, or az://container/path; with {target} placeholders, each iteration gets its own "
    "(e.g. 'data/part-{i}.csv'); repeatable",
)
@argument(
    "--outputs",
    action="append",
    metavar="GLOB",
    help="files an iteration writes in its working directory that come back to "
    "azpar_outputs/<job id>/<iteration>/; repeatable",
)
@argument(
    "--outputs-to",
    metavar="DEST",
    help="where --outputs go instead of azpar_outputs: a folder or az://container/prefix (Azure)",
)
@no_var_expand  # the line is code and paths: IPython must not fill in {name} and $name from the namespace
def azpar_cell(self: Any, line: str, cell: str) -> Any:
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
    return run_cell(self.context, line, cell)


def run_cell(context: MagicContext, line: str, cell: str | None) -> Any:
    """Parse the cell, submit its job and, unless --no-wait, finish it (returns None); with --no-wait, the job.
    ``cell`` None: the line magic's one-line loop (``%azpar -o r for x in xs: f(x)``), which binds as a cell does
    (a ``for`` statement has no value, and a line of ``[None, None, ...]`` for ``print(x)`` would be noise)."""
    shell = context.shell
    with usage_errors(CellError):
        future = future_flags(shell.user_ns)
        parsed = parse_one_line(line, future) if cell is None else parse_cell(line, cell, future)
    args = parse_options(azpar_cell.parser, parsed.options)
    args.quiet = args.quiet or context.quiet  # %config AzparMagics.quiet
    options = job_options(args, shell.user_ns)
    export, no_export = names(args.export, "--export"), names(args.no_export, "--no-export")
    with usage_errors(SETTINGS, "{}. Nothing was submitted."):
        engine, settings = session.engine_and_settings(args.backend, args.workers, args.profile)
    notes: list[str] = shadow_warnings(options.output_name or DEFAULT_OUTPUT, options.gather, shell.user_ns)
    request = RunRequest(
        parsed,
        shell.user_ns,
        options,
        export,
        no_export,
        backend_options=backend_options(args, engine.backend, notes),
        spelling=FLAG_SPELLING,
        max_items=settings["max_items"],
    )
    for note in notes:  # then the engine warns of the body (engine.body_warnings), as for run()
        print(note, file=sys.stderr)
    uploads = request.backend_options["transfer_progress"] = TransferProgress(quiet=args.quiet)  # --inputs
    # The newest job so far, not a copy of them all: the engine keeps every job of the session,
    # and a set of their ids made per cell grew with the session (issue 16, c).
    before = next(reversed(engine.jobs), None)
    try:
        # SubmitError (a ValueError) says itself; other ValueErrors and RuntimeErrors are framed
        with (
            usage_errors((ValueError, RuntimeError), "The job could not be started: {}. Nothing was submitted."),
            usage_errors(SubmitError),
        ):
            job = engine.submit(request)
    except KeyboardInterrupt as exc:
        _interrupted(engine, before, str(exc))
    finally:
        uploads.close()
    session.remember(job)
    output = options.output_name or DEFAULT_OUTPUT  # always set by job_options
    if args.no_wait:
        context.pending[job.id] = Pending(output, options.gather, args.quiet)
        follow(shell, job, args.quiet)
        return job
    finish_run(shell, job, output, options.gather, args.quiet)
    return None


def _interrupted(engine: Any, before: str | None, said: str = "") -> NoReturn:
    """Ctrl-C while the iterable was evaluated, the namespace captured or the job handed
    to the backend: one line saying so (the traceback would be from inside pickling).
    ``before``: the engine's newest job id when the cell began (jobs are kept in the order
    they were made). ``said``: the engine's own account of where it was interrupted, if it gave one."""
    ids = list(engine.jobs)
    if before is None:
        newer = ids
    elif before in ids:
        newer = ids[ids.index(before) + 1 :]
    else:  # that job was deleted meanwhile (from another thread): which jobs are new is not known
        newer = []
    started = [engine.jobs[job_id] for job_id in newer]
    if not started:
        where = (
            said.rstrip(". ").removesuffix("Nothing was submitted").rstrip(". ")
            if said
            else ("while preparing the run (evaluating the iterable, capturing or staging the namespace)")
        )
        raise UsageError(f"Interrupted (Ctrl-C) {where.removeprefix('interrupted ')}: nothing was submitted.") from None
    for job in started:
        job.cancel()
    raise UsageError(
        f"Interrupted (Ctrl-C) while submitting job {started[0].id}: it was cancelled, and no result is bound."
    ) from None
