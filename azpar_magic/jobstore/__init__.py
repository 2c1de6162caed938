"""The job store: each job's manifest, items, results and logs on local disk, so a job
outlives the cell, and the kernel, that started it. Callers use this package's names
(``from .. import jobstore`` then ``jobstore.load_job(...)``); its modules are ``layout``
(where and what names), ``records`` (file formats), ``owner`` (who runs a job), ``writer``
(the writing thread) and ``reader`` (everything read back).

Layout, one folder per job named by its id::

    $AZPAR_JOB_STORE, else $XDG_DATA_HOME/azpar/jobs, else ~/.local/share/azpar/jobs   (0700)
      azpar-20261125-101112-0123456789ab/                                              (0700)
        manifest.json   what the job is and where it stands (JSON)                    (0600)
        records.azs     append-only: the items as shipped, then one record per finished
                        task (encoded values, failures) and per task that printed or failed
                        (its output and tracebacks); the envelope header it ran with  (0600)
        namespace.bin   a local job's captured namespace: a hard link to the file below
        modules.json    the notebook's own modules the job shipped: a hard link to the file below
      namespaces/ns-<sha256>.bin   each distinct namespace once, for %azpar debug     (0600)
      namespaces/mods-<sha256>.json   each distinct set of the notebook's modules once (0600)

Why this shape:

- The root and every job folder are 0700 and every file 0600 (the modes are given at
  creation, and a umask can only remove bits), and a root owned by another user, or an
  existing one open to group or others, is refused (never chmod-ed: it may be the user's own
  folder, open on purpose):
  one user's results and cell sources are never readable by another OS user (under
  JupyterHub, users are usually separate OS users). Job ids carry 48 random bits
  (``engine.new_job_id``), so they cannot be guessed either.
- ``records.azs`` is a sequence of length-prefixed records, each a small JSON header (kind,
  task, indices, counts) then a body. Headers let listing jobs and reading logs skip the
  values without unpickling them (the file is memory-mapped, so skipped bodies are never
  read from disk); only ``load_job`` (attach, collect, rerun) decodes values. A process
  killed mid-write leaves at most a torn last record, which readers ignore.
- One file, not one per kind, because creating files is what a job pays for: on this
  project's machine each file creation costs about 0.2 ms, as much as a whole trivial
  10,000-iteration job spends per worker task (bench/local.py, workload a).
- All writing happens on one background thread per process. The engine's event path only
  formats a finished task's records, whose values are still the bytes the worker sent (no
  re-serialisation of a value, ever), and queues their bytes (not the result dict: thousands
  of those waiting for the writer set off full garbage collections). The thread writes what
  is queued every ``COALESCE`` seconds while there is any (see ``writer._Writer`` for why it
  is never woken per event), so a job shorter than that is written once, in three file
  creations (folder, records, final manifest) and, for a local job, one hard link to its
  namespace (the namespace file itself is created only the first time those bytes are
  captured), and every finished task is on disk within ``COALESCE`` seconds. A kernel killed
  while a job runs therefore loses at most the tasks of its last ``COALESCE`` seconds, which
  ``rerun --failed`` computes again. Nothing calls fsync: records survive a killed process
  (they are in the OS's page cache), a power cut may lose the last seconds.
- The manifest is written once when the job's folder is created and replaced atomically
  (write a temporary file, rename) when the job ends, so a reader never sees half of a
  final manifest; a reader that meets a manifest being created retries once.
- A rerun's records start with a copy of the earlier job's records in one ``import`` record
  naming the iterations the rerun computes again: the rerun's folder is complete on its
  own (deleting the earlier job loses nothing) and the copy decodes nothing.

A job whose manifest says it is running, but whose owning process (pid plus that process's
start time, on the same host and boot) is gone, is reported ``lost``: it died with its kernel.
Its finished iterations are intact and ``rerun --failed`` completes it.

Backends add their own location information through ``backend_info`` (kept under that key
in the manifest); a backend whose jobs outlive the kernel (Azure) says so with
``outlives_kernel: true`` there, and such jobs are never reported lost because their kernel ended.
"""

from __future__ import annotations

from ..errors import StoreError
from .layout import (
    FILE_MAGIC,
    FORMAT,
    MANIFEST,
    MODULES_LINK,
    NAME_MAX,
    NAMESPACE_LINK,
    NAMESPACES,
    RECORDS,
    STORE_ENV,
    check_name,
    checked_roots,
    ensure_root,
    job_folder,
    modules_path,
    namespace_path,
    store_root,
    valid_id,
)
from .owner import claim_takeover, creator, owner, owner_alive, reattachable, release_takeover
from .reader import (
    EMPTY_ID,
    FOLLOW_INTERVAL,
    MIN_ID_PART,
    JobSummary,
    MissingItem,
    delete,
    effective_state,
    filter_jobs,
    ids_matching,
    item_record,
    job_ids,
    latest_id,
    list_jobs,
    load_items,
    load_job,
    newest_named,
    options_from_json,
    parse_since,
    resolve,
    stored_envelope,
    stored_namespace,
    stored_tasks,
    summary,
)
from .records import (
    RECORD,
    REUSED_TASK,
    create_private,
    from_runs,
    indices_header,
    indices_of,
    iter_records,
    manifest_bytes,
    read_file,
    read_manifest,
    record,
    runs,
    walk,
    write_all,
    write_manifest,
)
from .writer import (
    COALESCE,
    JobRecorder,
    flush,
    keep_namespace,
    options_to_json,
    resume_recording,
    start_recording,
    wait_for_room,
    warned_roots,
)

__all__ = [
    "REUSED_TASK",
    "StoreError",
    # layout
    "FILE_MAGIC",
    "FORMAT",
    "MANIFEST",
    "NAME_MAX",
    "MODULES_LINK",
    "NAMESPACE_LINK",
    "NAMESPACES",
    "RECORDS",
    "STORE_ENV",
    "check_name",
    "checked_roots",
    "ensure_root",
    "job_folder",
    "modules_path",
    "namespace_path",
    "store_root",
    "valid_id",
    # owner
    "claim_takeover",
    "creator",
    "owner",
    "owner_alive",
    "reattachable",
    "release_takeover",
    # records
    "RECORD",
    "create_private",
    "from_runs",
    "indices_header",
    "indices_of",
    "iter_records",
    "manifest_bytes",
    "read_file",
    "read_manifest",
    "record",
    "runs",
    "walk",
    "write_all",
    "write_manifest",
    # writer
    "COALESCE",
    "JobRecorder",
    "flush",
    "wait_for_room",
    "keep_namespace",
    "options_to_json",
    "resume_recording",
    "start_recording",
    "warned_roots",
    # reader
    "EMPTY_ID",
    "FOLLOW_INTERVAL",
    "MIN_ID_PART",
    "JobSummary",
    "MissingItem",
    "delete",
    "effective_state",
    "filter_jobs",
    "ids_matching",
    "item_record",
    "job_ids",
    "latest_id",
    "list_jobs",
    "load_items",
    "load_job",
    "newest_named",
    "options_from_json",
    "parse_since",
    "resolve",
    "stored_envelope",
    "stored_namespace",
    "stored_tasks",
    "summary",
]
