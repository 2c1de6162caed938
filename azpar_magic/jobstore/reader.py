"""Reading jobs back from the store: manifests and summaries (``%azpar jobs``), finding a job by id, name or
part of an id, filters, the items and records a job shipped, rebuilding a Job (``load_job``) and following one
another process of this machine runs, and deleting one.

Listing and logs read record headers only; values are decoded by ``load_job`` alone.
"""

from __future__ import annotations

import json
import mmap
import os
import pickle
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from .. import worker as wire
from ..errors import StoreError, did_you_mean
from ..jobs import FINAL_STATES, LOST, PENDING, RUNNING, Failure, Job, JobOptions, TaskStep
from ..jobs.cost import CostEstimate, column_text
from ..jobs.job import cell_title
from ..jobs.results import decode_list, failure_from_record
from ..jobs.states import ending_step, stored_state
from .layout import (
    FILE_MAGIC,
    MANIFEST,
    MODULES_LINK,
    NAMESPACE_LINK,
    RECORDS,
    check_name,
    items_file_name,
    items_path,
    job_folder,
    modules_path,
    namespace_path,
    store_root,
    valid_id,
)
from .owner import creator, owner_alive, reattachable
from .records import REUSED_TASK, from_runs, indices_of, iter_records, read_file, read_manifest, walk
from .writer import flush

FOLLOW_INTERVAL = 0.3  # seconds between looks at a job another process is running


def options_from_json(data: Mapping[str, Any]) -> JobOptions:
    return JobOptions(
        combine=_restore_combine(data.get("combine", "list")),
        errors=data.get("errors", "stop"),
        gather=tuple(data.get("gather") or ()),
        retries=data.get("retries", 2),
        timeout=data.get("timeout"),
        chunk_size=data.get("chunk_size"),
        seed=data.get("seed"),
        output_name=data.get("output_name"),
        inputs=tuple(data.get("inputs") or ()),
        outputs=tuple(data.get("outputs") or ()),
        outputs_to=data.get("outputs_to"),
        name=data.get("name"),
        cache=bool(data.get("cache", False)),
        max_cost=data.get("max_cost"),
    )


def _restore_combine(spec: Any) -> Any:
    if not isinstance(spec, dict):
        return spec
    name = spec.get("callable", "?:?")
    module_name, _, qualname = name.partition(":")
    try:
        if module_name == "__main__":
            obj: Any = sys.modules["__main__"]
        else:
            import importlib

            obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if callable(obj):
            return obj
    except Exception:
        pass

    message = (
        f"This job combines its values with {qualname} (from {module_name}), which is not defined "
        "here; define it, then try again."
    )

    def missing(values: list) -> Any:
        raise StoreError(message)

    missing.missing = message  # type: ignore[attr-defined]  # rerun refuses before submitting
    return missing


def item_bytes(header: dict, body: memoryview, job_id: str) -> bytes:
    """An items record's bytes: its body, or the file it names that the store keeps once per content
    and links into the job's folder, a rerun's too for the items it imported (writer._keep_items_once)."""
    digest = header.get("kept")
    if not digest:
        return bytes(body)
    with open(job_folder(job_id) / items_file_name(digest), "rb") as fh:
        return fh.read()


def _kept_items(job_id: str) -> set[str]:
    """The digests of the kept items a job's records name (those of the records a rerun imported too)."""
    try:
        data = read_file(job_folder(job_id) / RECORDS)
    except (OSError, StoreError):
        return set()
    return {h["kept"] for h, _, _, _, _ in walk(data, len(FILE_MAGIC)) if h.get("k") == "items" and h.get("kept")}


def stored_tasks(job_id: str) -> list[tuple[str, Sequence[int], str, bytes]]:
    """The tasks the job shipped, as (task id, indices, items codec, items bytes), from its
    own items records (not those an earlier run's import brought): what a backend needs to
    add tasks a dead kernel had not added yet."""
    found = []
    for header, body, _ in iter_records(read_file(job_folder(job_id) / RECORDS), len(FILE_MAGIC)):
        if header.get("k") == "items" and header.get("t") is not None:
            found.append((str(header["t"]), indices_of(header), header["codec"], item_bytes(header, body, job_id)))
    return found


def stored_envelope(job_id: str) -> tuple[dict | None, bytes | None]:
    """(envelope header, namespace bytes) the job ran with, from its own records (not an
    earlier run's that a rerun imported): (None, None) for a job stored before azpar kept
    them, bytes None when the backend staged the namespace elsewhere (``keep_envelope``)."""
    flush()
    envelope: dict | None = None
    for header, body, _ in iter_records(read_file(job_folder(job_id) / RECORDS), len(FILE_MAGIC)):
        if header.get("k") == "envelope":
            envelope = json.loads(bytes(body))
    if envelope is not None and envelope.pop("local_modules_kept", None):
        # The notebook's modules are kept once per set, linked into the job's folder (writer._keep_modules_once).
        try:
            with open(job_folder(job_id) / MODULES_LINK, "rb") as fh:
                envelope["local_modules"] = json.loads(fh.read())
        except (OSError, ValueError):  # not kept (a full disk): debug runs with the kernel's own modules
            pass
    return envelope, stored_namespace(job_id) if envelope is not None else None


def item_record(job_id: str, index: int) -> tuple[str, bytes, Sequence[int]] | str | None:
    """Where iteration ``index`` of the job was shipped from: (codec, bytes, indices) of
    the job's own task that ran it; the id of the earlier job when a rerun kept that
    iteration's result instead of running it; None when the store has no such item."""
    data = read_file(job_folder(job_id) / RECORDS)
    for header, body, _ in iter_records(data, len(FILE_MAGIC)):
        if header.get("k") == "items" and index in indices_of(header):
            return header["codec"], item_bytes(header, body, job_id), indices_of(header)
    for header, _, _ in iter_records(data, len(FILE_MAGIC)):
        if header.get("k") == "import":
            return str(header.get("from") or "")
    return None


@dataclass(frozen=True)
class JobSummary:
    """One row of ``%azpar jobs``: read from the manifest (and record headers for a job that
    did not end), never from the values."""

    id: str
    created: float
    backend: str
    state: str
    succeeded: int
    failed: int
    cancelled: int
    total: int
    first_line: str
    creator: str = ""
    rerun_of: str | None = None
    where: str = ""  # the process running it, for a job that runs elsewhere
    name: str = ""  # its --name, if it was given one
    cost: str = ""  # its estimated cost (jobs/cost.py column_text), "" where nothing is billed

    @property
    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created))

    @classmethod
    def of(cls, job: Job) -> JobSummary:
        """The row of a job this process holds: its live state and counts."""
        succeeded, failed, cancelled = job.counts()
        first = cell_title(job.source)
        return cls(
            job.id,
            job.created,
            job.backend_name,
            job.state,
            succeeded,
            failed,
            cancelled,
            len(job.items),
            first,
            creator(),
            job.rerun_of,
            job.owner,
            job.options.name or "",
            column_text(job.cost_now()),
        )


def effective_state(manifest: Mapping[str, Any]) -> tuple[str, str]:
    """(state, where): a job that did not end and whose process is gone is lost; ``where``
    names the process (or host) of one that still runs elsewhere."""
    # A manifest written before the done state existed says failed for a job that gave its result.
    state = stored_state(manifest.get("state", "?"), (manifest.get("options") or {}).get("errors"))
    if state in FINAL_STATES:
        return state, ""
    info = manifest.get("owner") or {}
    alive = owner_alive(info)
    if (manifest.get("backend_info") or {}).get("outlives_kernel"):  # never lost: it runs without its kernel
        return state, f"process {info.get('pid')}" if alive else ""
    if alive is False:
        return LOST, ""
    if alive is None:
        return state, f"on {info.get('host', '?')}"
    return state, f"process {info.get('pid')}"


def _scan_counts(folder: Path, manifest: Mapping[str, Any]) -> tuple[int, int, int]:
    """(succeeded, failed, cancelled) from the record headers: for a job that did not end
    (its manifest has no final counts). Iterations a rerun kept count as succeeded."""
    total = manifest.get("items", 0)
    ran = from_runs(manifest.get("ran")) if manifest.get("ran") is not None else None
    kept = total - len(ran) if ran is not None else 0
    seen: set[int] = set()
    succeeded, failed, cancelled = kept, 0, 0
    for header, _, _ in iter_records(read_file(folder / RECORDS), len(FILE_MAGIC)):
        kind = header.get("k")
        if kind not in ("result", "fail"):
            continue
        indices = [i for i in indices_of(header) if i not in seen]
        seen.update(indices)
        if kind == "fail":
            if header["failure"].get("kind") == "cancelled":
                cancelled += len(indices)
            else:
                failed += len(indices)
        else:
            bad = min(header.get("failed", 0), len(indices))
            failed += bad
            succeeded += len(indices) - bad
    return succeeded, failed, cancelled


def summary(job_id: str) -> JobSummary:
    manifest = read_manifest(job_id)
    state, where = effective_state(manifest)
    counts = manifest.get("counts")
    if counts and manifest.get("state") in FINAL_STATES:
        succeeded, failed, cancelled = counts["succeeded"], counts["failed"], counts["cancelled"]
    else:
        succeeded, failed, cancelled = _scan_counts(job_folder(job_id), manifest)
    source = manifest.get("source") or ""
    return JobSummary(
        job_id,
        manifest.get("created", 0.0),
        manifest.get("backend", "?"),
        state,
        succeeded,
        failed,
        cancelled,
        manifest.get("items", 0),
        cell_title(source),
        manifest.get("creator", ""),
        manifest.get("rerun_of"),
        where,
        manifest.get("name") or "",
        column_text(CostEstimate.from_record(manifest["cost"]) if isinstance(manifest.get("cost"), dict) else None),
    )


def job_ids() -> list[str]:
    """Ids of every stored job, oldest first (ids start with their creation time)."""
    flush()
    root = store_root()
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if valid_id(n) and (root / n / MANIFEST).exists())


def latest_id() -> str | None:
    """The stored job created last (ids sort by time only to the second)."""
    best: tuple[float, str] | None = None
    for job_id in job_ids():
        try:
            created = float(read_manifest(job_id).get("created", 0.0))
        except (KeyError, StoreError, OSError, ValueError):
            continue
        if best is None or (created, job_id) > best:
            best = (created, job_id)
    return best[1] if best else None


def list_jobs() -> list[JobSummary]:
    """Every stored job, oldest first; unreadable ones are skipped rather than failing the list."""
    rows = []
    for job_id in job_ids():
        try:
            rows.append(summary(job_id))
        except (KeyError, StoreError, OSError):
            continue
    return sorted(rows, key=lambda r: (r.created, r.id))


# An empty id is the start and the end of every id: it named the only job there was (so
# ``delete("")`` deleted it) or matched them all.
EMPTY_ID = "an empty job id names no job: give a job's id (or a unique start or end of it) or its --name"
# The fewest characters of an id's start or end that name a job, as git's shortest abbreviation:
# with one or two, `%azpar delete 2` deleted whichever lone job's id happened to end in 2.
MIN_ID_PART = 4


def ids_matching(part: str, ids: Iterable[str]) -> list[str]:
    """The ids that start or end with ``part``, the shortcut for a job's id (its whole id and its
    --name are looked up before). KeyError, saying why, for a part too short to be meant as one,
    and for a blank one (EMPTY_ID), the start and end of every id."""
    if not part.strip():
        raise KeyError(EMPTY_ID)
    if len(part) < MIN_ID_PART:
        raise KeyError(
            f"{part!r} is too short to name a job by the start or end of its id: give at least "
            f"{MIN_ID_PART} characters of it, its whole id, or its --name"
        )
    return [i for i in ids if i.endswith(part) or i.startswith(part)]


def resolve(job_id: str) -> str:
    """The stored id that ``job_id`` names: the whole id, a job's --name (the newest job of
    that name), or a unique start or end of an id. A name wins over an id's start or end:
    the user typed it in full, while an id's end is only a shortcut."""
    ids = job_ids()
    if job_id in ids:
        return job_id
    named = newest_named(job_id, ids)
    if named is not None:
        return named
    matches = ids_matching(job_id, ids)
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise KeyError(f"{job_id!r} matches {len(matches)} stored jobs ({', '.join(matches[:5])}); give more of the id")
    raise KeyError(job_id)


def newest_named(name: str, ids: Sequence[str] | None = None) -> str | None:
    """The id of the newest stored job called ``name``, or None. Only names that could be
    given (``check_name``) are looked for, so an id fragment costs no manifest reads."""
    try:
        check_name(name)
    except ValueError:
        return None
    best: tuple[float, str] | None = None
    for job_id in ids if ids is not None else job_ids():
        try:
            manifest = read_manifest(job_id)
        except (KeyError, StoreError, OSError):
            continue
        if manifest.get("name") == name and (best is None or (manifest.get("created", 0.0), job_id) > best):
            best = (float(manifest.get("created", 0.0)), job_id)
    return best[1] if best else None


_SINCE_UNITS = {"d": 86400, "h": 3600, "m": 60}  # --since Nd, Nh, Nm


def parse_since(text: str, now: float | None = None) -> float:
    """The time ``--since`` means, as seconds since the epoch: an ISO date or date and time
    (``2026-12-01``, ``2026-12-01T09:30``; local time unless it says its zone), ``today`` or
    ``yesterday`` (from local midnight), or ``Nd``, ``Nh``, ``Nm`` (N whole days, hours or minutes
    before now: ``1h`` was refused, though the last hour's jobs are what one looks for after a
    failed cell). ValueError with the accepted forms otherwise."""
    import datetime as dt

    now = time.time() if now is None else now
    word = text.strip().lower()
    midnight = dt.datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    if word == "today":
        return midnight.timestamp()
    if word == "yesterday":
        return (midnight - dt.timedelta(days=1)).timestamp()
    if word[-1:] in _SINCE_UNITS and word[:-1].isdigit():
        return now - int(word[:-1]) * _SINCE_UNITS[word[-1]]
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since takes a date (2026-12-01), a date and time (2026-12-01T09:30), today, yesterday "
            f"or Nd, Nh, Nm (the last N days, hours or minutes, e.g. 7d or 2h), not {text!r}"
        ) from None
    return when.timestamp()  # a naive time is local time, as the table's 'when' column shows


def filter_jobs(
    rows: Sequence[JobSummary], *, state: str | None = None, name: str | None = None, since: float | str | None = None
) -> list[JobSummary]:
    """The rows whose state is ``state`` (one or several, comma-separated), whose name
    matches the glob ``name`` (``sweep-*``; a job without a name never matches), and that
    were created at or after ``since`` (seconds since the epoch, or what ``parse_since``
    reads)."""
    import fnmatch

    states = {s.strip() for s in state.split(",") if s.strip()} if state else None
    known = (PENDING, RUNNING, *FINAL_STATES)
    unknown = sorted(states - set(known)) if states else []
    if unknown:
        raise ValueError(
            f"--state takes {', '.join(known)} (several with commas), not {', '.join(unknown)}"
            f"{did_you_mean(unknown[0], known)}"
        )
    after = parse_since(since) if isinstance(since, str) else since
    return [
        r
        for r in rows
        if (states is None or r.state in states)
        and (name is None or (bool(r.name) and fnmatch.fnmatchcase(r.name, name)))
        and (after is None or r.created >= after)
    ]


class MissingItem:
    """Stands in for an item that could not be read back (its class is not defined in this
    kernel): enough for views; ``rerun`` refuses to run it."""

    def __init__(self, index: int, reason: str):
        self.index, self.reason = index, reason

    def __repr__(self) -> str:
        return f"<item {self.index}: not loaded: {self.reason}>"


def load_items(job_id: str, total: int | None = None) -> list:
    """The job's items as it shipped them, rebuilt in this process (notebook classes and
    functions the items refer to by name are looked up in this ``__main__``)."""
    data = read_file(job_folder(job_id) / RECORDS)
    if total is None:
        total = read_manifest(job_id).get("items", 0)
    items: list = [None] * total
    loaded = bytearray(total)
    for header, body, _, _, _ in walk(data, len(FILE_MAGIC)):
        if header.get("k") != "items":
            continue
        indices = indices_of(header)
        try:
            chunk = wire.loads(header["codec"], item_bytes(header, body, job_id))
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            chunk = [MissingItem(i, reason) for i in indices]
        for index, item in zip(indices, cast(Iterable[Any], chunk)):
            if 0 <= index < total:
                items[index] = item
                loaded[index] = 1
    for index in range(total):
        if not loaded[index]:
            items[index] = MissingItem(index, "not in the job store")
    return items


def _replay(job: Job, data: bytes | memoryview | mmap.mmap, start: int, *, values: bool) -> int:
    """Replay records from ``start`` into ``job``; return the offset after the last whole one.

    Logs first (output; user failures as text), then results. Without ``values`` result
    bodies are not even read: finished iterations get None and their failures come from
    the logs, which is all ``logs`` needs, and it works whatever this kernel defines."""
    logged: dict[int, Failure] = {}
    offset = start
    for header, body, skip, base, _ in walk(data, start):
        if header.get("k") != "logs":
            continue
        record = pickle.loads(body)
        outputs = {int(i): ev for i, ev in (record.get("outputs") or {}).items() if int(i) not in skip}
        job.restore_outputs(outputs, base=base)
        for i, data_ in (record.get("failures") or {}).items():
            if int(i) not in skip:
                logged.setdefault(int(i), failure_from_record(int(i), data_, with_exception=False))
    for header, body, skip, base, offset in walk(data, start):  # noqa: B007 (returned: where the next look starts)
        kind = header.get("k")
        if kind not in ("result", "fail"):
            continue
        indices = list(indices_of(header))
        keep = [pos for pos, i in enumerate(indices) if i not in skip and 0 <= i < len(job.items)]
        kept = [indices[p] for p in keep]
        if kind == "fail":
            failure = header["failure"]
            job.restore(
                kept,
                [None] * len(kept),
                {i: failure_from_record(i, failure, with_exception=False) for i in kept},
                {},
                None,
                base=base,
            )
        elif not values:
            job.restore(kept, [None] * len(kept), {i: logged[i] for i in kept if i in logged}, {}, None, base=base)
        elif kept:
            record = pickle.loads(body)
            all_values = decode_list(record["values"])
            failed = {int(i): failure_from_record(int(i), rec) for i, rec in (record.get("failed") or {}).items()}
            gathered: dict[str, Sequence[Any]] | None = None
            if record.get("gathered") is not None and job.options.gather:
                rows = decode_list(record["gathered"])
                gathered = {name: [(rows[p] or {}).get(name) for p in keep] for name in job.options.gather}
            job.restore(
                kept,
                [all_values[p] for p in keep],
                {i: failed[i] for i in kept if i in failed},
                {},
                gathered,
                base=base,
            )
        if not base and header.get("t") not in (None, REUSED_TASK) and header["t"] not in job.tasks:
            job.restore_task(header["t"], indices, _task_step(kind, header))
    return offset


def _task_step(kind: str, header: Mapping[str, Any]) -> TaskStep:
    """How a stored task ended, as the Job that ran it recorded it (``states.TASK_RULES`` gives its state)."""
    if kind == "fail":
        return ending_step(produced=False, all_cancelled=header["failure"].get("kind") == "cancelled")
    return ending_step(produced=True, any_failed=bool(header.get("failed")))


def size_label(manifest: Mapping[str, Any]) -> str:
    """What views call the job's vm_size: the label its backend declared, recorded in the manifest;
    a manifest written before it was recorded names only its backend (the local pool's vm_size is a
    worker count, a "size"; every other was a VM size)."""
    return manifest.get("size_label") or ("size" if manifest.get("backend") == "local" else "VM size")


def load_job(job_id: str, *, values: bool = True, take_over: Callable[[Job, dict], bool] | None = None) -> Job:
    """Rebuild the Job of a stored job: its items, values, failures and output come from the
    store, so ``result()``, ``logs()`` and ``rerun`` work in a new kernel. A job still running
    in another process of this machine is followed until it ends (the returned Job updates).

    Values are decoded here, so notebook classes they are instances of must be defined in
    this kernel first (StoreError says which is missing). ``values=False`` skips them (for
    ``logs``: output and tracebacks only; the Job's values are then all None).

    ``take_over(job, manifest)``: for a followed job that runs on without its kernel (Azure
    Batch), called once if that kernel ends first; True when this process now runs the job (the
    follower stops), False to go on following the store (another kernel may take it over)."""
    flush()
    manifest = read_manifest(job_id)
    folder = job_folder(job_id)
    total = manifest.get("items", 0)
    items = load_items(job_id, total)
    job = Job(
        job_id,
        items,
        options_from_json(manifest.get("options") or {}),
        backend_name=manifest.get("backend", "?"),
        pool=manifest.get("pool", ""),
        vm_size=manifest.get("vm_size", ""),
        size_label=size_label(manifest),
        source=manifest.get("source", ""),
    )
    job.rerun_of = manifest.get("rerun_of")
    job.from_cache = manifest.get("from_cache") or 0
    job.manifest = manifest
    job.stop_reason = manifest.get("stop_reason") or ""  # its cost passed its cap (issue 19)
    state, where = effective_state(manifest)
    try:
        offset = _replay(job, read_file(folder / RECORDS), len(FILE_MAGIC), values=values)
    except Exception as exc:
        raise StoreError(
            f"the results of job {job_id} could not be read back here: {type(exc).__name__}: {exc}. "
            "Values that are instances of notebook classes need those classes defined in this "
            "kernel (run the cells that define them), then try again."
        ) from None
    job.restore_timing(manifest.get("created", time.time()), manifest.get("elapsed"))
    if state in FINAL_STATES:
        job.finish(state)
        job.stored = str(folder.parent)  # read whole from this store: the session may let go of it again
    elif values and reattachable(manifest):
        job.mark_running()
        job.reattach = True  # the caller hands it to its backend's engine (Engine.resume)
    else:
        job.mark_running()
        job.owner = where or "another process"  # job.cancel() does nothing here; the commands say why
        if values:
            _Follower(job, folder, offset, take_over).start()
    return job


class _Follower(threading.Thread):
    """Keeps a Job loaded from the store up to date while another process of this machine
    runs it: new records are replayed as they appear, and the job ends when that process
    writes its final state, or is lost when that process disappears first; a job that runs on
    without its kernel (Azure Batch) is then taken over by this process (``take_over``)."""

    def __init__(self, job: Job, folder: Path, offset: int, take_over: Callable[[Job, dict], bool] | None = None):
        super().__init__(name=f"azpar-follow-{job.id}", daemon=True)
        self.job, self.folder, self.offset = job, folder, offset
        self.take_over = take_over

    def run(self) -> None:
        job = self.job
        while True:
            time.sleep(FOLLOW_INTERVAL)
            try:
                manifest = read_manifest(job.id)
                state, _ = effective_state(manifest)
                self.offset = max(self.offset, _replay(job, read_file(self.folder / RECORDS), self.offset, values=True))
            except Exception as exc:  # deleted meanwhile, or unreadable: stop following
                job.store_error = f"{type(exc).__name__}: {exc}"
                job.finish(LOST)
                return
            job.notify()
            if state in FINAL_STATES:
                if manifest.get("elapsed") is not None:
                    job.restore_timing(manifest.get("created", job.created), manifest["elapsed"])
                job.finish(state)
                return
            if self.take_over is not None and reattachable(manifest):
                # Its kernel ended and the job runs on (Azure Batch): whoever waits here would
                # wait forever, so this process takes it over. Tried once: a process that cannot
                # follow it goes on reading the store, where a kernel that can may finish it.
                take_over, self.take_over = self.take_over, None
                if take_over(job, manifest):
                    return


def delete(job_id: str) -> None:
    """Remove the job's folder: its manifest and records (items, results, logs), and its
    namespace when no other job keeps the same one."""
    folder = job_folder(job_id)
    if not (folder / MANIFEST).exists():
        raise KeyError(job_id)
    kept = []
    for digest in _kept_items(job_id):
        try:
            kept.append(items_path(folder.parent, digest))
        except StoreError:  # not a digest (a damaged record): nothing of ours to drop
            pass
    # ... and the namespace and the set of modules it links: each dropped with its last link
    try:
        envelope = stored_envelope(job_id)[0]
        kept.append(namespace_path(folder.parent, envelope["namespace"]["sha256"]))  # type: ignore[index]
        if envelope.get("local_modules_sha256"):  # type: ignore[union-attr]
            kept.append(modules_path(folder.parent, envelope["local_modules_sha256"]))  # type: ignore[index]
    except (TypeError, KeyError, ValueError, OSError, StoreError):
        pass
    shutil.rmtree(folder)
    for shared in kept:
        _drop_unlinked(shared)


def stored_namespace(job_id: str) -> bytes | None:
    """The namespace bytes the store keeps for a job (``keep_namespace``), or None."""
    try:
        with open(job_folder(job_id) / NAMESPACE_LINK, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _drop_unlinked(shared: Path) -> None:
    """Remove a kept namespace, set of modules or items no job folder links to any more (its only link is
    its own)."""
    try:
        if shared.stat().st_nlink <= 1:
            shared.unlink()
    except FileNotFoundError:
        pass
