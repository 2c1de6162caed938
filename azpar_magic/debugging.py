"""Run one iteration of a job again in this process, with that job's own captured namespace
and item: what ``%azpar debug JOB I`` does (issue 20).

Why the job's namespace and not the notebook's as it is now: a failure is reproduced only
when the body sees what the workers saw. A name the notebook has rebound since (a fixed
function, a changed array) would otherwise change the outcome. So the envelope header and
the namespace bytes the workers loaded are read back, and loaded with the worker's own
loader (``worker.LoadedNamespace``/``LoadedJob``) into a private ``__main__`` module;
the item is decoded against that module as a worker decodes it (``worker.load_items``),
and the iteration runs as the worker runs it (``worker.run_here``).

Where the pieces come from:

- the envelope header (cell code, file name, mode, seed, packages): the job store's records
  (``jobstore.keep_envelope``), for every backend;
- the namespace bytes: the job store for a local job (its staging folder lives only as long
  as the kernel's pool); the staged blob for an Azure job (``ns/ns-<sha256>.bin`` in the cache
  container), which ``staged_namespace`` of the backend reads, checked against the sha256;
- the item: the job store's items record of the task that ran the iteration.

This module imports nothing of IPython: ``magics.py`` shows the traceback and opens the
debugger (IPython's own post-mortem, as ``%debug`` does) on what ``run`` returns.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

from . import jobstore, session, worker as wire
from .errors import DebugError, NotSupported


@dataclass
class Reproduction:
    """One iteration, ready to run here: the job loaded as a worker loads it, and its item."""

    job_id: str
    index: int
    item: Any
    loaded: wire.LoadedJob
    notes: list[str] = field(default_factory=list)  # said before it runs (a changed environment)
    kernel_imports: _KernelImports | None = None  # put back after the run (the job's own .py modules)


@dataclass
class Outcome:
    """What the iteration did here: its value, or the exception with its traceback (from
    the frame that ran it, so a caller that shows it skips one frame, as IPython does)."""

    value: Any = None
    exception: BaseException | None = None


def job_id_for(text: str | None) -> str:
    """The stored id ``text`` names: an id (or a unique start or end of one) or a --name,
    of a job of this kernel or of the job store; the latest job when None."""
    try:
        return session.find_job(text, stored=False).id
    except KeyError:
        pass
    jobstore.flush()
    if text is None:
        latest = jobstore.latest_id()
        if latest is None:
            raise DebugError(f"no azpar job to debug: the job store {jobstore.store_root()} holds none")
        return latest
    try:
        return jobstore.resolve(text)
    except KeyError as exc:
        if exc.args and exc.args[0] != text:
            raise DebugError(str(exc.args[0])) from None
        raise DebugError(
            f"no job {text!r} (an id, the end of one, or a --name) in this session or in the job store "
            f"{jobstore.store_root()}; %azpar jobs lists them"
        ) from None


def first_failure(job: str | None) -> tuple[str, int]:
    """(job id, its first failed iteration) for ``%azpar debug`` without an iteration: the one the
    cell reported (the first a loop run here would meet), as IPython's ``%debug`` takes the last
    exception. The job's records are read without its values, so its classes need not be defined.
    DebugError when nothing of the job failed."""
    job_id = job_id_for(job)
    try:
        loaded = session.find_job(job_id, stored=False)
    except KeyError:
        try:
            loaded = jobstore.load_job(job_id, values=False)
        except (KeyError, jobstore.StoreError) as exc:
            raise DebugError(f"job {job_id} cannot be read back from the job store: {exc}") from None
    failed = loaded.first_failure()
    if failed is None or failed.kind == "cancelled":
        raise DebugError(
            f"job {job_id} has no failed iteration to debug; %azpar debug {job_id} ITERATION runs any of its "
            f"{len(loaded.items)} iterations here"
        )
    return job_id, failed.index


def prepare(job: str | None, index: int) -> Reproduction:
    """Load iteration ``index`` of ``job`` (id, end of an id, or name) for a run here:
    DebugError when the job, the iteration, its item or its namespace is not available."""
    job_id = job_id_for(job)
    jobstore.flush()  # a job of this kernel: its records may still be queued
    try:
        manifest = jobstore.read_manifest(job_id)
    except KeyError:
        raise DebugError(
            f"job {job_id} is not in the job store {jobstore.store_root()} (its writes failed, or it was "
            "deleted), so its namespace and items cannot be read back"
        ) from None
    total = int(manifest.get("items", 0))
    if isinstance(index, bool) or not isinstance(index, int) or not -total <= index < total:
        raise DebugError(
            f"job {job_id} has {total} iteration{'s' * (total != 1)}"
            + (f" (0 to {total - 1}, -1 the last)" if total else "")
            + f"; there is no iteration {index}"
        )
    index %= total  # counted from the end when negative, as a list's
    envelope, namespace = jobstore.stored_envelope(job_id)
    if envelope is None:
        raise DebugError(
            f"job {job_id} was stored without its envelope (run by an azpar before debugging existed, "
            "or it ran no task); `%azpar rerun` it, then debug the new job"
        )
    place = jobstore.item_record(job_id, index)
    if isinstance(place, str):
        raise DebugError(
            f"iteration {index} of job {job_id} was not run by this job: it kept the result of "
            f"{place or 'an earlier job'} (a rerun runs only the failed iterations); debug it there: "
            f"%azpar debug {place or 'EARLIER_JOB'} {index}"
        )
    if place is None:
        raise DebugError(f"the job store has no item for iteration {index} of job {job_id}")
    if namespace is None:
        namespace = _staged_namespace(job_id, manifest, envelope)
    info = envelope["namespace"]
    if wire.sha256(namespace) != info["sha256"]:
        raise DebugError(
            f"the namespace of job {job_id} does not match its envelope (sha256 differs): it was "
            "changed or replaced since the job ran, so the job cannot be reproduced from it"
        )
    notes = _environment_notes(envelope)
    if manifest.get("options", {}).get("inputs") or manifest.get("options", {}).get("outputs"):
        notes.append(
            f"azpar: job {job_id} used --inputs/--outputs; here the iteration runs in this kernel's "
            "folder, without its inputs/ folder, so file paths may differ from the workers'"
        )
    kernel_imports = _KernelImports(envelope.get("local_modules") or {})
    try:
        loaded = _load(job_id, envelope, namespace)
        codec, data, indices = place
        try:
            items = wire.load_items(codec, data, loaded)
        except wire.EnvironmentMismatch as exc:
            raise DebugError(f"iteration {index} of job {job_id}: {exc}") from None
    except BaseException:
        kernel_imports.restore()
        raise
    return Reproduction(job_id, index, items[list(indices).index(index)], loaded, notes, kernel_imports)


class _KernelImports:
    """The kernel's ``sys.path`` and its imports of the modules a job shipped from the
    notebook's folder, saved before the worker's loader puts the job's copies first, and put
    back after the run: the notebook's own ``import helpers`` must find today's file again,
    not the job's copy (the debugged frames keep the job's modules they used)."""

    def __init__(self, local_modules: dict) -> None:
        self.tops = {rel.split("/")[0].removesuffix(".py") for rel in local_modules}
        self.path = list(sys.path)
        self.modules = {name: module for name, module in sys.modules.items() if self._ours(name)}

    def _ours(self, name: str) -> bool:
        return any(name == top or name.startswith(top + ".") for top in self.tops)

    def restore(self) -> None:
        if not self.tops:
            return
        sys.path[:] = self.path
        for name in [n for n in sys.modules if self._ours(n)]:
            del sys.modules[name]
        sys.modules.update(self.modules)


def _staged_namespace(job_id: str, manifest: dict, envelope: dict) -> bytes:
    """The namespace bytes from where the job's backend staged them (Azure: a blob)."""
    file_name = envelope["namespace"]["file"]
    try:
        backend = session.engine_for_stored(manifest).backend
    except Exception as exc:  # the profile is gone, or cannot be read
        raise DebugError(
            f"job {job_id} ran on {manifest.get('backend', '?')} (profile {manifest.get('profile')!r}), "
            f"whose namespace cannot be read from this kernel: {exc}"
        ) from None
    try:
        data = backend.staged_namespace(manifest, file_name)
    except NotSupported:
        raise DebugError(
            f"the job store has no namespace for job {job_id}, and its {backend.name} backend keeps "
            "none; `%azpar rerun` it, then debug the new job"
        ) from None
    except RuntimeError as exc:
        raise DebugError(f"the namespace of job {job_id} could not be read: {exc}") from None
    if data is None:
        container = ((manifest.get("backend_info") or {}).get("containers") or {}).get("cache", "the cache container")
        raise DebugError(
            f"the namespace of job {job_id} is no longer available: the blob {container}/ns/{file_name} "
            "was removed (by %azpar storage rm, a lifecycle rule or by hand). The job cannot be "
            f"reproduced with its own namespace; `%azpar rerun {job_id} --all` runs it again with the "
            "notebook's current one, then debug the new job"
        )
    return data


def _environment_notes(envelope: dict) -> list[str]:
    """What differs between the job's environment and this kernel's: said, not refused (the
    kernel is where the user can look), since the outcome may differ from the worker's."""
    try:
        wire.check_environment(envelope)
    except wire.EnvironmentMismatch as exc:
        return [f"azpar: warning: {exc} This run may not behave as the job's did."]
    return []


def _load(job_id: str, envelope: dict, namespace: bytes) -> wire.LoadedJob:
    """The job as a worker loads it, into a private ``__main__`` module of its own."""
    folder = os.path.join(tempfile.gettempdir(), f"azpar-debug-{os.getuid() if hasattr(os, 'getuid') else 0}")
    os.makedirs(folder, mode=0o700, exist_ok=True)  # the job's local .py modules, if it shipped any
    try:
        loaded = wire.LoadedNamespace(envelope, namespace, folder)
    except wire.EnvironmentMismatch as exc:
        raise DebugError(
            f"job {job_id}: {exc}. Define or install what it names in this kernel, then try again"
        ) from None
    return wire.LoadedJob(envelope, loaded)


def run(reproduction: Reproduction) -> Outcome:
    """Run the iteration here; its exception is returned, not raised, with the traceback
    from this frame on (the caller decides: raise it, or open the debugger on it).

    The kernel's Ctrl-C handler is put back afterwards: a ``breakpoint()`` in the body, left with ``c``,
    leaves pdb's own handler installed (pdb restores it only when it stops again), and the kernel's next
    interrupt then opened a debugger prompt where the user expected a KeyboardInterrupt."""
    sigint = _sigint_handler()
    try:
        value = wire.run_here(reproduction.loaded, reproduction.index, reproduction.item)
    except BaseException as exc:  # noqa: BLE001 - the body's own exception, whatever it is
        if isinstance(exc, KeyboardInterrupt):
            raise
        return Outcome(exception=exc.with_traceback(_from_the_body(exc.__traceback__)))
    finally:
        if reproduction.kernel_imports is not None:
            reproduction.kernel_imports.restore()
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
    return Outcome(value=value)


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _from_the_body(tb: Any) -> Any:
    """``tb`` from the first frame that is not azpar's (the body's, or the mapped function's call): the traceback
    shown, and the frames the debugger's `up` walks, began with this module's and the worker's, which say nothing
    of the user's code. Kept whole when every frame is azpar's."""
    first = tb
    while first is not None and first.tb_frame.f_code.co_filename.startswith(_PACKAGE):
        first = first.tb_next
    return first if first is not None else tb


def _sigint_handler() -> Any:
    """The SIGINT handler to put back, or None where it cannot be (not the main thread, or not Python's)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.getsignal(signal.SIGINT)  # (None: installed from C, which Python cannot put back)
