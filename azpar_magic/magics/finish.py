"""The end of every run the magic waits for (a cell, ``%azpar rerun``, ``%azpar collect``): wait with the live
view, show what the iterations printed and where their files went, and bind the result to its name."""

from __future__ import annotations

import sys
import threading
import warnings
from typing import Any

from ..errors import CombineWarning
from ..jobs import Job
from .display import live_view, show_files, show_outputs
from .usage import usage_errors


def finish_run(
    shell: Any,
    job: Job,
    output: str,
    gather: tuple[str, ...],
    quiet: bool,
    *,
    errors: str | None = None,
) -> None:
    """Wait for ``job`` (Ctrl-C cancels it), replay its output, report its --outputs and bind its result to
    ``output`` (and the ``gather`` names) in the shell's namespace (under the ``errors`` policy when given:
    ``Job.result``)."""
    wait(shell, job, quiet)
    show_outputs(job)
    show_files(job, quiet)
    inject(shell, job, output, gather, errors)


def wait(shell: Any, job: Job, quiet: bool) -> None:
    """Wait for ``job`` while its live view moves. Ctrl-C cancels a job of this kernel and shows what its finished
    iterations printed; a job another process runs is only no longer waited for."""
    progress = live_view(shell, job, quiet)
    try:
        while not job.wait(0.1):
            progress.tick()
    except KeyboardInterrupt:
        if job.owner:  # followed from the store: another process runs it; stop waiting only
            progress.close()
            print(
                f"azpar: stopped waiting for job {job.id}; it still runs in {job.owner} "
                f"(%azpar collect {job.id} waits again).",
                file=sys.stderr,
            )
            raise
        job.cancel()
        job.wait(10)
        progress.close()
        show_outputs(job)  # what the finished iterations printed is not lost either
        snap = job.snapshot()
        print(
            f"azpar: job {job.id} cancelled; {snap.items_succeeded} of {snap.items_total} "
            f"iterations had finished: `%azpar collect {job.id} --errors remove` binds their values.",
            file=sys.stderr,
        )
        raise
    progress.close()


def inject(shell: Any, job: Job, output: str, gather: tuple[str, ...], errors: str | None = None) -> None:
    """Bind the ended job's result (and gathered names), under ``errors`` when given; a failed iteration raises
    as itself. What the combining warns of (keys overwritten) is one ``azpar: warning:`` line, as the magic's
    other warnings."""
    with (
        usage_errors(
            Exception,
            lambda exc: (
                f"The results of job {job.id} could not be combined: {exc}. The "
                f'per-iteration values stay in azpar_magic.attach("{job.id}").partial_results().'
            ),
        ),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always", CombineWarning)
        value = job.result(errors=errors)
    for warning in caught:
        if issubclass(warning.category, CombineWarning):
            print(f"azpar: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    shell.user_ns[output] = value
    if gather:
        shell.user_ns.update(job.gathered(errors))


def inject_when_done(shell: Any, job: Job, output: str, gather: tuple[str, ...]) -> None:
    """Bind the result from whichever thread sees the job end (the panel stays live and
    the kernel free meanwhile). A result that is an error binds nothing: %azpar collect
    shows the error."""
    lock, fired = threading.Lock(), list[bool]()

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
        shell.user_ns[output] = value
        shell.user_ns.update(gathered)

    job.listeners.append(listener)
    listener(job)  # it may have ended meanwhile


def lost_message(job: Job) -> str:
    succeeded, failed, _ = job.counts()
    return (
        f"job {job.id} was lost: the kernel running it ended first. {succeeded} of {len(job.items)} iterations "
        f"had finished and are kept; `%azpar rerun {job.id} --failed` runs the other "
        f"{len(job.items) - succeeded} and binds the whole result in order, `%azpar collect {job.id} --errors "
        "remove` binds the finished ones."
    )
