"""Every exception of the package, in one module that imports nothing of the package.

Each class keeps the builtin base it always had (a ``ValueError`` stays a ``ValueError``), so
``except`` clauses written against the builtins still catch it. Two marker bases say what kind
of problem it is, which is all a caller needs to decide how to show it:

- ``UsageProblem``: what the user asked for cannot be done as given (the cell, an option, a
  setting, a path); the magic shows these as IPython ``UsageError`` with the message alone.
- ``ServiceError``: a service (Azure, the job store on disk) failed or refused; the request
  itself may be fine, and trying again later may help.

IPython shows ``_render_traceback_()`` instead of the client-side stack when an exception
defines it: a failed iteration is shown as the remote traceback pointing into the cell.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterable

# ---------------------------------------------------------------------------------------
# Kinds: marker bases, so one mapping (the magic's) can treat a whole kind alike
# ---------------------------------------------------------------------------------------


class UsageProblem(Exception):
    """The user's input is wrong or cannot be served as given; the message says what to change.

    Not an ``AzparError``: most of its subclasses never were one, and ``except AzparError``
    keeps catching exactly what it caught before."""


class ServiceError(Exception):
    """A service (Azure, the job store) failed or refused; the message names it and what it said."""


# ---------------------------------------------------------------------------------------
# Raised on purpose while a job runs or is waited for
# ---------------------------------------------------------------------------------------


class AzparError(Exception):
    """Base class of the errors this package raises on purpose."""


class RemoteTraceback(str):
    """The text of a traceback formatted on a worker."""


class IterationError(AzparError):
    """One iteration failed (with ``--errors stop``): index, item and remote traceback.

    Raised through ``iteration_error``: when the iteration's exception was rebuilt here, the error
    is also an instance of that exception's class, with its ``args`` and attributes, and
    ``exception`` is the exception itself. So ``except KeyError`` or ``except MyError`` around
    ``azpar_magic.map(...)``, ``job.result()`` or a line magic catches it, as it catches what
    concurrent.futures, joblib and dask raise again. Test it with ``isinstance``: the class is
    made for each failure."""

    exception: BaseException | None = None

    def __init__(
        self,
        index: int,
        item_repr: str,
        error_type: str,
        message: str,
        traceback: str,
        line: int | None,
        job_id: str,
        failed_count: int = 1,
        infrastructure: bool = False,
        finished_count: int | None = None,
        not_run_count: int | None = None,
    ):
        self.index, self.item_repr = index, item_repr
        self.error_type, self.error_message = error_type, message
        self.remote_traceback = RemoteTraceback(traceback)
        self.line, self.job_id = line, job_id
        self.failed_count, self.infrastructure = failed_count, infrastructure
        self.finished_count = finished_count  # iterations with a value (None: not known)
        self.not_run_count = not_run_count  # iterations the job's stop left unrun (None: not known yet)
        # Not super(): in a class made with the iteration's exception class, that would call its
        # __init__, whose arguments are its own.
        Exception.__init__(self, self._summary())

    def __str__(self) -> str:
        return self._summary()  # (``args`` are the iteration's exception's, when it is one of its class)

    def __repr__(self) -> str:
        return f"IterationError({self._summary()!r})"

    def __reduce__(self) -> tuple:
        # Pickles as a plain IterationError (the class made for a failure is not importable).
        fields = (self.error_type, self.error_message, str(self.remote_traceback), self.line, self.job_id)
        return IterationError, (
            self.index,
            self.item_repr,
            *fields,
            self.failed_count,
            self.infrastructure,
            self.finished_count,
            self.not_run_count,
        )

    def _summary(self) -> str:
        where = f" (cell line {self.line})" if self.line else ""
        short = self.error_type.rsplit(".", 1)[-1]
        # "raised ValueError: ...", but "could not run (InfrastructureError): ...": the iteration raised
        # nothing, its worker died or timed out around it.
        what = f"could not run ({short})" if self.infrastructure else f"raised {short}"
        others = f"; {self.failed_count - 1} other iteration(s) failed too" if self.failed_count > 1 else ""
        if self.not_run_count:  # (else "did the rest run?" had no answer but the job's counts)
            others += f"; {self.not_run_count} did not run: the job stopped at the first failure"
        kept = (
            f" The finished results are kept: `%azpar collect {self.job_id} --errors remove` binds them "
            f"(azpar_magic.collect('{self.job_id}', errors='remove') returns them)"
            if self.finished_count != 0  # (no iteration finished: nothing to point at)
            else ""
        )
        said = f": {self.error_message}" if self.error_message else ""  # (`raise KeyboardInterrupt` says nothing)
        return f"iteration {self.index} (item {self.item_repr}) {what}{said}{where}{others}.{kept}"

    def _render_traceback_(self) -> list[str]:
        lines = [f"azpar: {self._summary()}", ""]
        if self.remote_traceback:
            lines.append("Remote traceback:")
            lines.extend(self.remote_traceback.rstrip("\n").splitlines())
        return lines


class WorkerTraceback(Exception):
    """The traceback a worker formatted for a failed iteration, as the ``__cause__`` of its
    IterationError: a plain Python traceback (a script's, a test runner's) prints it above the
    error, as concurrent.futures does for a process pool's failures. IPython shows the error's
    ``_render_traceback_`` instead, which holds the same text."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0]).rstrip("\n") if self.args else ""


# Exceptions that the error raised for them must not also be. Ours say something else. A StopIteration
# raised out of a generator's frame turns into a RuntimeError. A TimeoutError is what ``result(timeout)``
# raises for a job still running: a loop waiting on it would wait forever on a failed one. IPython shows a
# SyntaxError from its own fields (file, line, offset), not ``_render_traceback_``.
_NOT_MIXED = (AzparError, UsageProblem, ServiceError, StopIteration, StopAsyncIteration, TimeoutError, SyntaxError)
_FIELDS = (types.MemberDescriptorType, types.GetSetDescriptorType)  # a C type's fields, or __slots__


def iteration_error(exception: BaseException | None = None, **fields) -> IterationError:
    """The IterationError for a failed iteration (``fields`` as IterationError takes them).

    ``exception``, the iteration's exception rebuilt here (None when it could not be, or when the
    iteration raised nothing: its worker died): for an ``Exception`` of the user's or the standard
    library's, the error is made of a class deriving from both IterationError and its class, and
    carries its ``args`` and attributes. The kinds ``_NOT_MIXED`` names, and a class that cannot be
    derived from or built that way (a C type that forbids it, a ``__new__`` or ``__init_subclass__``
    of its own that refuses), give a plain IterationError: the same message and traceback,
    ``except IterationError`` only."""
    error: IterationError | None = None
    if isinstance(exception, Exception) and not isinstance(exception, _NOT_MIXED) and not _quits_a_debugger(exception):
        try:
            both: type[IterationError] = type(
                "IterationError",
                (IterationError, type(exception)),
                {"__module__": __name__, "__qualname__": "IterationError", "__doc__": IterationError.__doc__},
            )
            error = both.__new__(both)  # (no __init__ of its class: see IterationError.__init__)
            IterationError.__init__(error, **fields)
            error.args = exception.args
            for name, value in vars(exception).items():
                error.__dict__.setdefault(name, value)
            _copy_fields(exception, error)
        except Exception:
            error = None
    if error is None:
        error = IterationError(**fields)
    error.exception = exception
    if fields.get("traceback"):
        error.__cause__ = WorkerTraceback(fields["traceback"])
    return error


def _quits_a_debugger(exception: BaseException) -> bool:
    """A debugger's BdbQuit (a body's breakpoint() on a worker): IPython runs a cell that raises one
    as a debugger quit by the user, and shows nothing, so an error of its class would fail the cell
    in silence. bdb is looked up, not imported: an exception of its class was rebuilt only if it is loaded."""
    bdb = sys.modules.get("bdb")
    return bdb is not None and isinstance(exception, bdb.BdbQuit)


def _copy_fields(source: BaseException, target: BaseException) -> None:
    """The fields that are not in ``__dict__``: an OSError's ``errno`` and ``filename``, a KeyError's
    none, an AttributeError's ``name``, a UnicodeDecodeError's ``start``, a class's ``__slots__``."""
    for cls in type(source).__mro__:
        if cls in (BaseException, object):
            continue
        for name, field in vars(cls).items():
            if name.startswith("__") or not isinstance(field, _FIELDS):
                continue
            try:
                setattr(target, name, getattr(source, name))
            except (AttributeError, TypeError, ValueError):  # read-only, or unset in the source
                pass


class RemoteException(AzparError):
    """Stands in (with ``--errors pass``) for a remote exception that cannot be rebuilt here."""

    def __init__(self, error_type: str, message: str, traceback: str = ""):
        self.error_type, self.error_message = error_type, message
        self.remote_traceback = RemoteTraceback(traceback)
        super().__init__(f"{error_type}: {message}")


class InfrastructureError(AzparError):
    """The iteration never produced a result: its worker died, timed out or was lost."""


class TaskTimeoutError(InfrastructureError, TimeoutError):
    """The iteration was running when its task reached ``--timeout`` and was killed; the
    same type (and message, naming that iteration) under every ``--errors`` mode."""


class EnvironmentMismatchError(AzparError):
    """The node's Python, dill or packages differ from the notebook's; never retried."""


class JobCancelled(AzparError):
    """The job was cancelled before this result existed."""


class JobLost(AzparError):
    """The job's process ended before the job did: its finished iterations are kept, the
    others never ran. ``rerun(job_id)`` runs only the missing ones and merges them in order."""


class RequirementError(AzparError, UsageProblem):
    """What the nodes need cannot be made ready on this machine: a local or editable package
    whose wheel does not build, or a ``--packages`` value that is not a requirement or names a
    missing file. Raised before anything is submitted; the message names the distribution, its
    path and pip's own last lines, with the ways out (a pin pip can fetch, or an image)."""


# ---------------------------------------------------------------------------------------
# The user's input (each keeps its builtin base)
# ---------------------------------------------------------------------------------------


class CellError(UsageProblem, ValueError):
    """The cell cannot run: its message is one paragraph meant for the user."""


class SubmitError(UsageProblem, ValueError):
    """Nothing was submitted; the message says why, in one paragraph."""


class ConfigError(UsageProblem, ValueError):
    """A setting is malformed; the message names the file or variable and the key."""


class DataError(UsageProblem, ValueError):
    """A spec cannot be used; the message is one paragraph for the user."""


class CaptureError(UsageProblem, ValueError):
    """A needed object cannot be shipped; the message names it, its type and why."""


class CombineError(UsageProblem, ValueError):
    """The values cannot be combined as asked (the raw values stay in the job handle)."""


class CombineWarning(UserWarning):
    """The values were combined, but some were overwritten on the way (dicts whose keys repeat
    under ``--combine concat``); the magic prints it as an ``azpar: warning:`` line."""


class StorageError(UsageProblem, ValueError):
    """The helpers cannot run as asked (no Azure profile, a malformed az:// path)."""


class DebugError(UsageProblem, ValueError):
    """The iteration cannot be run again here; the message says why and what to do."""


class InstallError(UsageProblem, RuntimeError):
    """The install command cannot do what was asked (an unknown scope, a file in the way or not
    writable); the message says why. No service is involved: only local files."""


# ---------------------------------------------------------------------------------------
# A service failed or refused
# ---------------------------------------------------------------------------------------


class AzureExtraMissing(UsageProblem, ImportError):
    """An Azure profile, ``az://`` storage or the doctor's Azure checks were asked for in an environment without
    the Azure SDKs (``pip install azpar-magic`` alone is the local pool): the message names the extra."""


class StoreError(ServiceError, RuntimeError):
    """The job store cannot give what was asked; the message says why and what to do."""


class TransferError(ServiceError, RuntimeError):
    """A transfer to or from Blob storage failed after every attempt; the message names the
    file and the blob. Raised by the Azure backend and by ``azpar_magic.storage``."""


class AzureServiceError(ServiceError, RuntimeError):
    """An Azure service answered with an error (the SDK's exception, translated at the
    backend's boundary); ``RuntimeError`` because callers have always caught that."""

    # What the service said, when it said it (backends/azure/errors.translate sets them):
    code: str | None = None  # Batch's or Storage's error code ("PoolNotFound", "AuthorizationFailed")
    status: int | None = None  # the HTTP status (None: no answer, e.g. the connection failed)
    property_name: str | None = None  # Batch's PropertyName detail: which field of the request was refused
    reason: str | None = None  # Batch's Reason detail: why


# ---------------------------------------------------------------------------------------
# A contract not met
# ---------------------------------------------------------------------------------------


class NotSupported(NotImplementedError):
    """A backend was asked for a capability it does not declare (backends/base.py); a
    ``RuntimeError``, so callers' ``except RuntimeError`` clauses still catch it."""


def did_you_mean(word: str, choices: Iterable[str], *, quoted: bool = False) -> str:
    """`` (did you mean X?)`` for the choice closest to a misspelt ``word``, or "" when none is close
    (difflib's ratio of at least 0.6): what every refusal of an unknown name appends, so that a typo is
    answered with the word meant rather than only a list."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1)
    if not close:
        return ""
    return f" (did you mean {close[0]!r}?)" if quoted else f" (did you mean {close[0]}?)"
