"""The commands about jobs: list them, wait for one and bind its result (collect, attach), read its logs, cancel,
rerun, debug one iteration here, and delete them from the job store."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from typing import Any

from IPython.core.error import UsageError
from IPython.display import display

from ... import api, session
from ...errors import ConfigError, DebugError, StoreError
from ...jobs import LOST, Job
from ...jobs.merge import RESULT_POLICIES
from ...run.request import FLAG_SPELLING
from ...ui.text import format_snapshot
from ..context import DEFAULT_OUTPUT, MagicContext, Pending, find_job
from ..display import follow, show_outputs
from ..finish import finish_run, inject, inject_when_done, lost_message
from ..options import shadow_warnings
from ..usage import LOOKUP, usage_errors
from ..words import read_words, unquote

JOBS_SHOWN = 30  # rows of %azpar jobs without --all


def collect(context: MagicContext, words: list[str], usage: str) -> None:
    """Wait for a job of this kernel or of the store and bind its result (a --no-wait cell's name by default).
    ``--errors remove|pass`` binds it under that policy whatever the job's: what a failed, cancelled or lost job
    finished, which its own policy (stop) raised for instead."""
    read = read_words(words, usage, output=True, options=("--errors",))
    if len(read.rest) > 1:
        raise UsageError(usage)
    errors = read.option("--errors")
    if errors is not None and unquote(errors) not in RESULT_POLICIES:
        raise UsageError(f"--errors takes {' or '.join(RESULT_POLICIES)} here, not {errors!r}; {usage}")
    errors = None if errors is None else unquote(errors)
    output = read.output
    job = find_job(read.rest[0] if read.rest else None)
    pending = context.pending.get(job.id, Pending(job.options.output_name or DEFAULT_OUTPUT, job.options.gather, False))
    if job.state == LOST and errors is None:
        raise UsageError(lost_message(job))
    name = output or pending.output or DEFAULT_OUTPUT
    _warn_shadowing(context, name, pending.gather)
    finish_run(context.shell, job, name, pending.gather, pending.quiet, errors=errors)


def _warn_shadowing(context: MagicContext, name: str, gather: tuple[str, ...]) -> None:
    """The cell's warning for a result bound over a builtin's name (``-o sum``), for the commands that bind one."""
    for note in shadow_warnings(name, gather, context.shell.user_ns):
        print(note, file=sys.stderr)


def jobs(context: MagicContext, words: list[str], usage: str) -> None:
    """The job store's jobs as a table, newest last."""
    from ...jobstore import store_root

    read = read_words(words, usage, options=("--state", "--name", "--since"), flags=("--all",))
    if read.rest:
        raise UsageError(usage)
    filters = {flag[2:]: read.option(flag) for flag in ("--state", "--name", "--since")}
    filters = {key: None if value is None else unquote(value) for key, value in filters.items()}  # 'sweep-*'
    with usage_errors(ValueError, "{}; " + usage):
        rows = api.jobs(stored=True, **filters)
    if not rows:
        given = " ".join(f"--{k} {v}" for k, v in filters.items() if v is not None)
        print(f"azpar: no jobs {'match ' + given if given else 'yet'} (job store: {store_root()})")
        return
    shown = rows if read.flags else rows[-JOBS_SHOWN:]
    named = any(r.name for r in shown)
    costed = any(r.cost for r in shown)  # a cost column once a billed (Azure) job is listed
    table = [("id",) + ("name",) * named + ("when", "backend", "state", "done/failed/total") + ("cost",) * costed]
    table[0] += ("cell",)
    for r in shown:
        state = r.state + (f" ({r.where})" if r.where and r.state not in ("lost",) else "")
        cell = r.first_line if len(r.first_line) <= 60 else r.first_line[:59] + "…"
        table.append(
            (r.id,)
            + (r.name,) * named
            # Iterations a cancel or --errors stop kept from running: "0/2/4" left two unaccounted for.
            + (
                r.when,
                r.backend,
                state,
                f"{r.succeeded}/{r.failed}/{r.total}" + (f" ({r.cancelled} cancelled)" if r.cancelled else ""),
            )
            + (r.cost,) * costed
            + (cell,)
        )
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    if len(shown) < len(rows):
        print(f"({len(rows) - len(shown)} older jobs: %azpar jobs --all)")


def attach(context: MagicContext, words: list[str], usage: str) -> Any:
    """Show a job's panel; bind its result now if it ended, else when it ends."""
    read = read_words(words, usage, output=True)
    if len(read.rest) > 1:
        raise UsageError(usage)
    job = find_job(read.rest[0] if read.rest else None)
    name = read.output or job.options.output_name or DEFAULT_OUTPUT
    _warn_shadowing(context, name, job.options.gather)
    follow(context.shell, job, quiet=False)
    if job.state == LOST:
        display(job)
        raise UsageError(lost_message(job))
    if job.done:
        show_outputs(job)
        inject(context.shell, job, name, job.options.gather)
        return job
    inject_when_done(context.shell, job, name, job.options.gather)
    print(
        f"azpar: job {job.id} is {job.state}; {name} will be bound when it ends (%azpar collect {job.id} waits for it)"
    )
    return job


def logs(context: MagicContext, words: list[str], usage: str) -> None:
    """What one iteration (or every one that printed or failed) printed, with its traceback."""
    words = read_words(words, usage).rest
    if len(words) > 2:
        raise UsageError(usage)
    index = None
    if len(words) == 2:
        index = _iteration(words[1], usage)
    with usage_errors(LOOKUP + (IndexError,)), _iteration_given_alone(words, "logs", KeyError):
        text = api.logs(words[0] if words else None, index)  # no JOB: the latest, as cancel and collect
    sys.stdout.write(text)


@contextlib.contextmanager
def _iteration_given_alone(words: list[str], command: str, error: type[Exception]) -> Iterator[None]:
    """``%azpar logs 3`` or ``%azpar debug -1`` meant an iteration, and was read as a job: the ``error``
    saying no job has that name also says how to name the iteration (the job first)."""
    try:
        yield
    except error as exc:
        if len(words) != 1 or not re.fullmatch(r"-?\d+", words[0]):
            raise
        said = exc.args[0] if exc.args else str(exc)
        hint = f"for iteration {words[0]} of the latest job, give the job first: %azpar {command} JOB {words[0]}"
        raise error(f"{said}; {hint}") from None


def cancel(context: MagicContext, words: list[str], usage: str) -> None:
    """Cancel a job this kernel runs and show where it stopped."""
    words = read_words(words, usage).rest
    if len(words) > 1:
        raise UsageError(usage)
    job = find_job(words[0] if words else None)
    if job.owner:
        raise UsageError(f"job {job.id} runs in {job.owner}, not in this kernel: cancel it there")
    if job.done:  # its line alone read as if this had stopped it
        print(f"azpar: job {job.id} had already ended ({job.state}): nothing was cancelled")
    else:
        job.cancel()
        job.wait(10)
    print(format_snapshot(job.snapshot()))


def rerun(context: MagicContext, words: list[str], usage: str) -> Any:
    """Run a job's failed or missing iterations (or all of them) again and bind the merged result."""
    read = read_words(words, usage, output=True, flags=("--failed", "--all", "--no-wait", "-q", "--quiet"))
    given = read.flags
    if len(read.rest) > 1 or {"--failed", "--all"} <= given:
        raise UsageError(usage)
    quiet = bool(given & {"-q", "--quiet"}) or context.quiet
    with (
        usage_errors(RuntimeError, "The rerun could not be started: {}. Nothing was submitted."),
        usage_errors(LOOKUP + (ValueError,)),
    ):
        base = find_job(read.rest[0] if read.rest else None)
        whole = "--all" not in given and base.done and not base.missing_indices()
        if not whole:
            job = api.rerun_with(base, "--all" not in given, context.shell.user_ns, read.output, FLAG_SPELLING)
    if whole:  # (binding is outside the block above: a merge's own ValueError is no usage error)
        _bind_whole(context, base, read.output, quiet)
        return base if "--no-wait" in given else None  # (--no-wait hands back the job the values are in)
    session.remember(job)
    count = sum(len(t.indices) for t in job.tasks.values())
    if not quiet:
        what = "failed or missing " if "--all" not in given else ""
        kept = f" and keeps its {len(job.items) - count} finished ones" if "--all" not in given else ""
        print(
            f"azpar: job {job.id} runs the {count} {what}iteration{'s' if count != 1 else ''} of job "
            f"{job.rerun_of} again{kept}"
        )
    name = job.options.output_name or DEFAULT_OUTPUT
    _warn_shadowing(context, name, job.options.gather)
    if "--no-wait" in given:
        context.pending[job.id] = Pending(name, job.options.gather, quiet)
        follow(context.shell, job, quiet)
        return job
    finish_run(context.shell, job, name, job.options.gather, quiet)
    return None


def _bind_whole(context: MagicContext, base: Job, output: str | None, quiet: bool) -> None:
    """``%azpar rerun`` of a job that has every value: nothing runs, its result is bound as a rerun's would be.
    A new job holding the same values was made instead, one more in `%azpar jobs` for each such rerun (a
    rerun of the latest job met it every time)."""
    name = output or base.options.output_name or DEFAULT_OUTPUT
    if not quiet:
        print(
            f"azpar: job {base.id} has no failed or missing iterations, so nothing runs again: its "
            f"{len(base.items)} values are bound to {name} (%azpar rerun {base.id} --all runs every iteration again)"
        )
    _warn_shadowing(context, name, base.options.gather)
    finish_run(context.shell, base, name, base.options.gather, quiet)


def debug(context: MagicContext, words: list[str], usage: str) -> Any:
    """``%azpar debug [JOB [I]] [--no-pdb]``: debugging.py loads and runs the iteration (without I, the
    job's first failure; without JOB, the latest job's); here
    its exception is raised (--no-pdb) or shown and opened in IPython's post-mortem
    debugger, the one ``%debug`` opens (``shell.debugger``)."""
    from ... import debugging

    read = read_words(words, usage, flags=("--no-pdb",))
    flags, rest = read.flags, read.rest
    if len(rest) > 2:
        raise UsageError(usage)
    with usage_errors(DebugError):
        if len(rest) == 2:
            job, index = rest[0], _iteration(rest[1], usage)
        else:  # the job's first failure (the latest job's without JOB), as %debug takes the last exception
            with _iteration_given_alone(rest, "debug", DebugError):
                job, index = debugging.first_failure(rest[0] if rest else None)
            print(f"azpar: iteration {index} of job {job}, its first failure", file=sys.stderr)
        reproduction = debugging.prepare(job, index)
    for note in reproduction.notes:
        print(note, file=sys.stderr)
    outcome = debugging.run(reproduction)
    exc = outcome.exception
    if exc is None:
        print(
            f"azpar: iteration {index} of job {reproduction.job_id} ran here without an exception; its value is "
            f"returned"
        )
        return outcome.value
    if "--no-pdb" in flags:
        __tracebackhide__ = True  # noqa: F841 - IPython leaves this frame out of the traceback
        raise exc
    context.shell.showtraceback((type(exc), exc, exc.__traceback__))
    context.shell.debugger(force=True)
    return None


def delete(context: MagicContext, words: list[str], usage: str) -> None:
    """Delete jobs from the store (and their Azure job and containers); every id is checked first."""
    words = read_words(words, usage).rest
    if not words:
        raise UsageError(usage)
    found = []
    for word in words:  # every id checked before anything is deleted
        with usage_errors((KeyError, ValueError, StoreError), "{}. Nothing was deleted."):
            found.append(api.deletable_id(word))
    for job_id in dict.fromkeys(found):
        not_deleted = f"job {job_id} was not deleted: {{}}. Its local copy is kept; try again."  # ids have no braces
        with usage_errors((RuntimeError, ConfigError), not_deleted):
            api.delete(job_id)
        print(f"azpar: deleted job {job_id} (its results, items and logs)")


def _iteration(word: str, usage: str) -> int:
    try:
        return int(word)
    except ValueError:
        raise UsageError(
            f"ITERATION is an iteration number (0, 1, ..., or -1 for the last), not {word!r}; {usage}"
        ) from None
