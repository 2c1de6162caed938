"""azpar_magic: run the iterations of a notebook ``for`` loop in parallel.

    %load_ext azpar_magic
    %%azpar -o results for x in xs:
    expensive(x)

The same machinery is available without IPython through :func:`run`, and for a function
through :func:`map` / :func:`starmap`; ``job.as_completed()`` and ``await job`` give results
as they arrive.
"""

from __future__ import annotations

# The subpackages azpar_magic.run and azpar_magic.jobs share their names with the public functions
# run() and jobs(). Importing a subpackage for the first time binds it as an attribute of this package,
# so both subpackages are loaded here first (api imports them) and the functions are bound after them.
from . import api, config, session, storage, verbosity  # storage: ls/get/put/rm on the profile's Blob storage
from .errors import (
    AzparError,
    EnvironmentMismatchError,
    InfrastructureError,
    IterationError,
    JobCancelled,
    RemoteException,
    TaskTimeoutError,
)
from .jobs import FINAL_STATES, AsCompleted, Job, JobOptions, JobSnapshot
from .errors import JobLost
from .jobstore import JobSummary
from .ui import text as _views  # noqa: F401  (registers how a Job shows itself; no ipywidgets)
from .mapping import map, starmap  # noqa: A004 (azpar_magic.map, as multiprocessing.Pool.map)
from .api import attach, cache_clear, cancel, collect, delete, jobs, logs, rerun, run  # last: see above

__version__ = "0.1.0"
verbosity.from_environment()  # AZPAR_LOG=debug|info|http: the log on stderr from the import on (else nothing)
__all__ = [
    "run",
    "map",
    "starmap",
    "storage",
    "jobs",
    "attach",
    "collect",
    "logs",
    "cancel",
    "rerun",
    "delete",
    "cache_clear",
    "Job",
    "JobSnapshot",
    "AsCompleted",
    "JobSummary",
    "AzparError",
    "IterationError",
    "RemoteException",
    "InfrastructureError",
    "TaskTimeoutError",
    "EnvironmentMismatchError",
    "JobCancelled",
    "JobLost",
    "load_ipython_extension",
    "unload_ipython_extension",
]


def load_ipython_extension(ipython) -> None:
    from .magics import AzparMagics

    verbosity.from_environment()
    ipython.register_magics(AzparMagics)
    print(f"azpar_magic {__version__}: %%azpar runs loops on the {session.describe()}.")


def unload_ipython_extension(ipython) -> None:
    from .magics.display import choose_mode

    import sys

    running = session.close_idle()
    if running:
        one = len(running) == 1
        print(
            f"azpar: unloading the extension does not stop job{'' if one else 's'} {', '.join(running)}: "
            f"{'it keeps' if one else 'they keep'} running on {'its' if one else 'their'} pool. Once the extension "
            "is loaded again, %azpar collect binds a result; azpar_magic.cancel(JOB) stops a job.",
            file=sys.stderr,
        )
    config.set_ipython_settings({})  # the unloaded magics' traits no longer count
    choose_mode(None)
