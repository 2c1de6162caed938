"""Exceptions a user can meet, each able to render itself without a local traceback.

IPython shows ``_render_traceback_()`` instead of the client-side stack when an exception
defines it: a failed iteration is shown as the remote traceback pointing into the cell.
"""

from __future__ import annotations


class AzparError(Exception):
    """Base class of the errors this package raises on purpose."""


class RemoteTraceback(str):
    """The text of a traceback formatted on a worker."""


class IterationError(AzparError):
    """One iteration failed (with ``--errors stop``): index, item and remote traceback."""

    def __init__(self, index: int, item_repr: str, error_type: str, message: str, traceback: str,
                 line: int | None, job_id: str, failed_count: int = 1, infrastructure: bool = False):
        self.index, self.item_repr = index, item_repr
        self.error_type, self.error_message = error_type, message
        self.remote_traceback = RemoteTraceback(traceback)
        self.line, self.job_id = line, job_id
        self.failed_count, self.infrastructure = failed_count, infrastructure
        super().__init__(self._summary())

    def _summary(self) -> str:
        where = f" (cell line {self.line})" if self.line else ""
        kind = "could not run" if self.infrastructure else "raised"
        short = self.error_type.rsplit(".", 1)[-1]
        others = f"; {self.failed_count - 1} other iteration(s) failed too" if self.failed_count > 1 else ""
        return (f"iteration {self.index} (item {self.item_repr}) {kind} {short}: {self.error_message}"
                f"{where}{others}. Finished results stay in the job handle: %azpar collect {self.job_id} "
                "or azpar_magic.jobs()[-1].partial_results()")

    def _render_traceback_(self) -> list[str]:
        lines = [f"azpar: {self._summary()}", ""]
        if self.remote_traceback:
            lines.append("Remote traceback:")
            lines.extend(self.remote_traceback.rstrip("\n").splitlines())
        return lines


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


class RequirementError(AzparError):
    """What the nodes need cannot be made ready on this machine: a local or editable package
    whose wheel does not build, or a ``--packages`` value that is not a requirement or names a
    missing file. Raised before anything is submitted; the message names the distribution, its
    path and pip's own last lines, with the ways out (a pin pip can fetch, or an image)."""
