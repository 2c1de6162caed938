"""What every handler of the two magics works with: the shell, and the results still to be bound."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import session
from ..jobs import Job
from .usage import LOOKUP, usage_errors

DEFAULT_OUTPUT = "azpar_result"


@dataclass(frozen=True)
class Pending:
    """How a ``--no-wait`` job's result is bound when ``%azpar collect`` waits for it."""

    output: str
    gather: tuple[str, ...]
    quiet: bool


@dataclass
class MagicContext:
    """One per registered ``AzparMagics``: the IPython shell and, by job id, the ``--no-wait`` jobs of this kernel
    whose result has not been collected yet."""

    shell: Any
    pending: dict[str, Pending] = field(default_factory=dict)
    quiet: bool = False  # %config AzparMagics.quiet: every cell and rerun as with -q


def find_job(job_id: str | None) -> Job:
    """The job a command names (the latest when None), or a UsageError saying why there is none."""
    with usage_errors(LOOKUP):
        return session.find_job(job_id)
