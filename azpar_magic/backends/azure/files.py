"""A job's ``--inputs`` and ``--outputs`` on Azure Batch (the plan comes from data.py).

Inputs:
- Local files are uploaded once, content-addressed (``azpar-cache/data/<sha256>``), streamed
  from disk; a later run, cell or kernel with the same bytes uploads nothing (one existence
  check per file, and none at all for files this process already checked).
- ``az://container/path`` inputs are listed here (the path must select at least one blob)
  and read by the nodes through a read-only SAS on their container (no list, no write).
- Inputs every iteration reads are resource files of the job preparation task (fetched once
  per node per job, under ``azpar-in/`` of its folder); an iteration's own inputs are resource
  files of its task (under ``azpar-in/`` of the task folder). The worker links them into each
  iteration's ``inputs/``.

Outputs: the worker moves each iteration's matches to ``azpar-out/<iteration>/`` of the task
folder, as regular files and only from inside the iteration's working directory (links
leading out of it are never followed: worker.find_outputs). Batch's pattern covers that
folder alone, so nothing a body's link reaches elsewhere on the node is uploaded. One Batch
output file uploads that tree when the task ends (whatever its outcome) to
``outputs/<iteration>/...`` of the job's files container (``J-files``), or straight to an ``az://``
``--outputs-to`` destination. As each task's result arrives, its iterations' files are
downloaded to ``azpar_outputs/<job id>/<iteration>/`` (retried; when the blob is missing, e.g.
a failed upload, read from the node instead) before the iterations count as done; a file
that cannot be fetched fails its iteration, with its index and why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from azure.batch import models
from azure.core.exceptions import AzureError, ResourceNotFoundError

from ...errors import DataError
from ...run.data import INPUTS_DIR, DataPlan, has_dot_dot, outputs_plan, path_below
from ..base import JobSpec, TaskSpec
from . import blobs, commands, storage
from .context import AzureContext
from .threads import ThreadPool

logger = logging.getLogger(__name__)
IN_DIR = "azpar-in"  # resource files land here (prep task folder: shared; task folder: per iteration)
OUT_DIR = "azpar-out"  # the worker gathers outputs here, per iteration
WORK_DIR = "azpar-work"  # iterations' working folders, in the task folder
OUTPUT_PREFIX = "outputs"  # in the job's files container (run.files_container)
PLAN_BLOB = "data-plan.json"  # in the job's input container: each iteration's own inputs (no SAS)
# The shared inputs are one resource file each in the create-job body, whose size Batch limits:
# "a maximum size for the list of resource files", past which create-job fails with
# RequestEntityTooLarge (REST spec, JobPreparationTask.resourceFiles; no number given). Past
# INLINE_PREP_BYTES of such entries (half of the 1 MB the spec states for a task collection), or
# when Batch answers RequestEntityTooLarge all the same, they are copied (server side, no bytes
# through this machine) into the job's inputs container under IN_DIR/ and reach the nodes as ONE
# container resource file (storageContainerUrl + blobPrefix keep the blob names below the job
# preparation task's folder): the job preparation command does not change.
INLINE_PREP_BYTES = 512 * 1024
MAX_SHARED_INPUTS = 20_000  # past this, copying them one by one takes too long: refused up front
COPY_TIMEOUT = 600.0  # seconds to wait for one server-side copy that Storage reports pending


def _blob_url(container_sas_url: str, name: str) -> str:
    base, _, token = container_sas_url.partition("?")
    return f"{base}/{quote(name, safe='/')}?{token}"


def check_blobs(staging: storage.Staging, plan: DataPlan) -> None:
    """List what every az:// input selects (one listing per container and prefix) into
    ``plan.blob_names``; DataError naming the first that selects nothing."""
    listings: dict[tuple[str, str], list[str]] = {}
    specs = [(s, s.list_prefix) for s in plan.shared_blobs]
    # Per-iteration specs usually differ only in their last part (parts/part-{i}.csv): one
    # listing of their folder serves them all, instead of one listing per iteration.
    specs += [(s, s.list_prefix[: s.list_prefix.rfind("/") + 1]) for ss in plan.item_blobs.values() for s in ss]
    for spec, prefix in specs:
        if spec.text in plan.blob_names:
            continue
        key = (spec.container, prefix)
        if key not in listings:
            listings[key] = [b.name for b in blobs.list_blobs(staging, spec.container, prefix)]
        names = spec.matches(listings[key])
        if not names:
            raise DataError(
                f"--inputs {spec.text!r} selects no blob (nothing at or under {spec.container}/"
                f"{spec.path}). Nothing was submitted."
            )
        bad = [n for n in names if has_dot_dot(n)]
        if bad:
            raise DataError(
                f"--inputs {spec.text!r} selects the blob {bad[0]!r}, whose name has a '..' segment: "
                f"on the nodes it would appear outside {INPUTS_DIR}/. Nothing was submitted; rename that "
                "blob, or name the others."
            )
        plan.blob_names[spec.text] = names


class RunData:
    """Inputs and outputs of one run (run.AzureRun); inert (every hook a no-op) without a plan.

    It is given what it uses of the run, not the run: the shared clients (``context``), the
    job's spec (of which it keeps the options, never the namespace bytes), the expiry of the SAS
    tokens it makes, and ``count`` to add its REST calls to the run's."""

    def __init__(self, context: AzureContext, spec: JobSpec, expiry: Any, count: Callable[[str], None]):
        self.context, self.expiry, self.count = context, expiry, count
        self.job_id = spec.job_id
        self.options: dict[str, Any] = dict(spec.backend_options or {})
        self.in_container = storage.input_container(spec.job_id)
        self.files_container = storage.files_container(spec.job_id)
        self.plan: DataPlan | None = (spec.backend_options or {}).get("data")
        manifest = spec.manifest or {}
        self.shared: list[tuple[str, str]] = []  # (path under inputs/, SAS URL)
        self.items: dict[int, list[tuple[str, str]]] = {}
        self.dest_url: str | None = None  # write SAS of an az:// destination's container
        self.uploaded = 0  # input files whose bytes were sent by this run (0 when all were cached)
        self.packed_url: str | None = None  # read+list SAS of the inputs container, once shared inputs are copied there
        options = manifest.get("options") or {}
        if self.plan is None and manifest.get("cwd") and (options.get("inputs") or options.get("outputs")):
            # Following a stored job (a kernel restart): its outputs still come back, and tasks
            # the dead kernel had not added get their own inputs from the plan it saved.
            self.plan = outputs_plan(options, manifest["cwd"], spec.job_id) or DataPlan(job_id=spec.job_id)
            self._restore()

    @property
    def active(self) -> bool:
        return self.plan is not None

    # ------------------------------------------------------------------ staging (cell blocks)

    def stage(self) -> None:
        """Upload local inputs (once), list blob inputs, prepare SAS URLs. Raises
        DataError for an az:// input selecting no blob (nothing is created by then)."""
        if self.plan is None:
            return
        plan, st = self.plan, self.context.staging
        cache = storage.CACHE_CONTAINER
        local = {f.path: f for f in plan.shared_files}
        for files in plan.item_files.values():
            local.update({f.path: f for f in files})
        urls: dict[str, str] = {}
        # One upload (or existence check) per distinct file: small ones eight at a time (a
        # folder of many files is not a round trip each in turn), large ones one after
        # another so that only one file's blocks are in memory.
        small = [p for p, f in local.items() if f.size <= blobs.BLOCK_SIZE]
        large = [p for p, f in local.items() if f.size > blobs.BLOCK_SIZE]
        with ThreadPool(8, thread_name_prefix="azpar-inputs") as pool:
            done = list(pool.map(lambda path: (path, *blobs.upload_file_once(st, cache, path)), small))
        shown = self.options.get("transfer_progress")  # the cell's progress line
        for path in large:
            hook = (lambda d, t, n=os.path.basename(path): shown(f"uploading {n}", d, t)) if shown else None
            done.append((path, *blobs.upload_file_once(st, cache, path, progress=hook)))
        for path, name, sent in done:
            self.uploaded += sent
            urls[path] = st.blob_sas_url(cache, name, "r", self.expiry)
        self.shared = [(f.rel, urls[f.path]) for f in plan.shared_files]
        for index, files in plan.item_files.items():
            self.items.setdefault(index, []).extend((f.rel, urls[f.path]) for f in files)
        if plan.has_blobs and not plan.blob_names:
            check_blobs(st, plan)
        self._check_shared_count(plan)
        sas: dict[str, str] = {}

        def resolve(spec) -> list[tuple[str, str]]:
            if spec.container not in sas:
                sas[spec.container] = st.container_sas_url(spec.container, "r", self.expiry)
            return [(f"{spec.container}/{n}", _blob_url(sas[spec.container], n)) for n in plan.blob_names[spec.text]]

        for spec in plan.shared_blobs:
            self.shared.extend(resolve(spec))
        for index, specs in plan.item_blobs.items():
            for spec in specs:
                self.items.setdefault(index, []).extend(resolve(spec))
        if plan.outputs and plan.dest_is_blob:
            container, _ = plan.dest[len("az://") :].partition("/")[::2]
            st.ensure_container(container)
            self.dest_url = st.container_sas_url(container, "cw", self.expiry)
        if self._prep_bytes() > INLINE_PREP_BYTES:
            self.pack()
        self.save()

    def _check_shared_count(self, plan: DataPlan) -> None:
        """DataError before anything is created when more files than MAX_SHARED_INPUTS are
        inputs every iteration reads (counted from the plan: local files and listed blobs)."""
        count = len(plan.shared_files) + sum(len(plan.blob_names.get(s.text, ())) for s in plan.shared_blobs)
        if count > MAX_SHARED_INPUTS:
            raise DataError(
                f"--inputs name {count} files that every iteration reads; at most {MAX_SHARED_INPUTS} "
                "can be sent to the nodes (Batch limits the job's list of resource files, and past "
                "that many they are copied one by one). Nothing was submitted: put them in one archive "
                "(zip or tar), pass that as the input and unpack it in the loop body, or give each "
                "iteration only the files it reads (an --inputs pattern naming a loop variable, e.g. {x})"
            )

    def _prep_bytes(self) -> int:
        """About how many bytes the shared inputs add to the create-job body, inline."""
        return sum(len(url) + len(IN_DIR) + len(rel) + 40 for rel, url in self.shared)

    @property
    def can_pack(self) -> bool:
        """There are shared inputs still listed one by one in the job preparation task."""
        return bool(self.shared) and self.packed_url is None

    def pack(self) -> None:
        """Copy every shared input into the job's inputs container under ``IN_DIR/`` (server
        side, eight at a time); from then on prep_resource_files is one container resource file."""
        st = self.context.staging
        st.ensure_container(self.in_container)
        with ThreadPool(8, thread_name_prefix="azpar-pack") as pool:
            list(pool.map(lambda pair: self._copy(pair[1], f"{IN_DIR}/{pair[0]}"), self.shared))
        self.packed_url = st.container_sas_url(self.in_container, "rl", self.expiry)

    def _copy(self, source_url: str, name: str) -> None:
        """One server-side copy into the inputs container, waited for when Storage runs it
        asynchronously (a copy within one account usually completes at once)."""
        blob = self.context.staging.service.get_blob_client(self.in_container, name)

        def copy() -> None:
            status = blob.start_copy_from_url(source_url).get("copy_status")
            deadline = time.monotonic() + COPY_TIMEOUT
            while status == "pending" and time.monotonic() < deadline:
                time.sleep(0.5)
                status = blob.get_blob_properties().copy.status
            if status != "success":
                raise blobs.TransferError(f"copying {name} into {self.in_container} ended {status}")

        logger.debug("copying the shared input %s into %s (server side)", name, self.in_container)
        # Whole-operation retry: a copy that ends "failed" is no request's error, so no client retry covers it.
        blobs.retried(f"copying the shared input {name[len(IN_DIR) + 1 :]} into {self.in_container}", copy)

    def save(self) -> None:
        """Keep where each iteration's own inputs are (container and blob, no SAS) in the job's
        inputs container, for a kernel that follows the job after a restart and must add the
        tasks the first one had not (shared inputs are in the job preparation task already)."""
        if not self.items:
            return
        st = self.context.staging

        def where(url: str) -> list[str]:
            path = unquote(url.partition("?")[0][len(st.account_url) + 1 :])
            container, _, blob = path.partition("/")
            return [container, blob]

        doc = {str(i): [[rel, *where(url)] for rel, url in pairs] for i, pairs in self.items.items()}
        st.ensure_container(self.in_container)
        st.upload(self.in_container, PLAN_BLOB, json.dumps(doc).encode())

    def _restore(self) -> None:
        st = self.context.staging
        try:
            data = st.download(self.in_container, PLAN_BLOB)
        except AzureError:
            data = None
        if data is None:
            return
        self.items = {
            int(i): [(rel, st.blob_sas_url(c, b, "r", self.expiry)) for rel, c, b in pairs]
            for i, pairs in json.loads(data).items()
        }

    def envelope(self, envelope: dict) -> dict:
        if self.plan is None:
            return envelope
        return dict(envelope, data=self.plan.worker_spec([rel for rel, _ in self.shared]))

    # ------------------------------------------------------------------ definitions

    def prep_resource_files(self) -> list[models.ResourceFile]:
        """The shared inputs for the job preparation task: one resource file each, or once
        packed (pack) one container resource file bringing ``IN_DIR/`` of the inputs container."""
        if self.packed_url is not None:
            return [models.ResourceFile(storage_container_url=self.packed_url, blob_prefix=f"{IN_DIR}/")]
        return [models.ResourceFile(http_url=url, file_path=f"{IN_DIR}/{rel}") for rel, url in self.shared]

    def task_resource_files(self, task: TaskSpec) -> tuple[list[models.ResourceFile], int]:
        """An iteration's own inputs for this task, and their size in the request body."""
        files, size = [], 0
        for index in task.indices:
            for rel, url in self.items.get(index, ()):
                files.append(models.ResourceFile(http_url=url, file_path=f"{IN_DIR}/{rel}"))
                size += len(url) + len(rel) + 60
        return files, size

    def task_header(self, task: TaskSpec) -> dict | None:
        """What the worker needs besides the envelope: where things are, and which inputs
        are whose."""
        if self.plan is None:
            return None
        own = {i: [rel for rel, _ in self.items[i]] for i in task.indices if i in self.items}
        return {
            "roots": {"shared": f"$AZPAR_STAGE_DIR/{IN_DIR}", "items": IN_DIR, "work": WORK_DIR, "collect": OUT_DIR},
            "items": own,
        }

    def output_files(self, make: Callable[[str, str], models.OutputFile]) -> list[models.OutputFile]:
        """The Batch output file that uploads the iterations' outputs when the task ends."""
        if self.plan is None or not self.plan.outputs:
            return []
        if not self.plan.dest_is_blob:
            return [make(f"{OUT_DIR}/**/*", OUTPUT_PREFIX)]
        if self.dest_url is None:  # a followed job's tasks not added before its kernel ended
            container = self.plan.dest[len("az://") :].partition("/")[0]
            self.dest_url = self.context.staging.container_sas_url(container, "cw", self.expiry)
        _, prefix = self.plan.dest[len("az://") :].partition("/")[::2]
        path = "/".join(p for p in (prefix.strip("/"), self.plan.job_id) if p)
        return [
            models.OutputFile(
                file_pattern=f"{OUT_DIR}/**/*",
                destination=models.OutputFileDestination(
                    container=models.OutputFileBlobContainerDestination(container_url=self.dest_url, path=path)
                ),
                upload_options=models.OutputFileUploadConfiguration(upload_condition="taskcompletion"),
            )
        ]

    # ------------------------------------------------------------------ results

    def fetch(self, task_id: str, result: dict) -> dict:
        """Bring the task's iterations' outputs where they belong before the result is
        delivered; an output that cannot be fetched fails its iteration (named in the
        message with the file)."""
        if self.plan is None or not self.plan.outputs:
            return result
        produced = (result.get("files") or {}).get("produced") or {}
        failed = result.setdefault("failed", {})
        for index, rels in produced.items():
            for rel in rels:
                try:
                    path_below(self.plan.local_dest(index), rel, f"output file {rel!r} of iteration {index}")
                    if not self.plan.dest_is_blob:
                        self._download(task_id, int(index), rel)
                    else:
                        self._check_uploaded(task_id, int(index), rel)
                except (blobs.TransferError, AzureError, OSError, DataError) as exc:
                    if index not in failed:
                        failed[index] = {
                            "type": "azpar_magic.TransferError",
                            "traceback": "",
                            "line": None,
                            "exc": None,
                            "message": f"output file {rel} of iteration {index} could not be fetched: {exc}",
                        }
        return result

    def _node_file(self, task_id: str, index: int, rel: str):
        self.count("download_task_file")
        return self.context.client.download_task_file(self.job_id, task_id, f"wd/{OUT_DIR}/{index}/{rel}")

    def _download(self, task_id: str, index: int, rel: str) -> None:
        assert self.plan is not None  # fetch() calls it only with a plan
        target = os.path.join(self.plan.local_dest(index), *rel.split("/"))
        logger.debug("downloading output %s of iteration %d (task %s) to %s", rel, index, task_id, target)
        try:
            blobs.download_file(self.context.staging, self.files_container, f"{OUTPUT_PREFIX}/{index}/{rel}", target)
        except ResourceNotFoundError:  # the upload failed: the node still has the file
            # Whole-operation retry: the Batch client does not resend a file stream cut mid-way.
            blobs.retried(
                f"reading {rel} of iteration {index} from its node",
                lambda: blobs.download_stream(iter(self._node_file(task_id, index, rel)), target),
            )

    def _check_uploaded(self, task_id: str, index: int, rel: str) -> None:
        """An az:// destination: Batch uploaded the file there; if it did not, copy it
        from the node (through this machine, with the profile's credentials)."""
        plan, st = self.plan, self.context.staging
        assert plan is not None  # fetch() calls it only with a plan
        container, _, prefix = plan.dest[len("az://") :].partition("/")
        name = "/".join(p for p in (prefix.strip("/"), plan.job_id, str(index), rel) if p)
        blob = st.service.get_blob_client(container, name)
        if blob.exists():  # one request: the client's own policy retries it (retry.py)
            return
        with tempfile.TemporaryDirectory(prefix="azpar-relay-") as tmp:
            local = os.path.join(tmp, "file")
            # Whole-operation retry: the Batch client does not resend a file stream cut mid-way.
            blobs.retried(
                f"reading {rel} of iteration {index} from its node",
                lambda: blobs.download_stream(iter(self._node_file(task_id, index, rel)), local),
            )
            blobs.upload_file(st, container, name, local)


def is_shared_input(resource_file: models.ResourceFile) -> bool:
    """A job preparation resource file that RunData.prep_resource_files made (so it can be
    replaced once the shared inputs are packed)."""
    return (resource_file.file_path or "").startswith(f"{IN_DIR}/") or (resource_file.blob_prefix or "") == f"{IN_DIR}/"


# --------------------------------------------------------------------------- the job's requirements (issue 15)


@dataclass(frozen=True)
class InstallPlan:
    """What a job's preparation task installs: pip's arguments (``specs``; local wheels named by
    their path under commands.WHEELS_DIR), the node folder's digest (None: derived from the specs,
    as for ``--packages`` alone), and the local wheels to bring as resource files."""

    specs: tuple[str, ...]
    digest: str | None
    wheels: tuple[Any, ...]  # environment.LocalWheel
    #: Distributions ``--packages`` replaced (canonical names): the worker must not hold them to
    #: the kernel's version, or the override would always fail its check.
    overridden: frozenset[str] = frozenset()

    def envelope_packages(self, packages: Mapping[str, str]) -> dict[str, str]:
        """The envelope's ``packages`` less the overridden ones (what the worker checks)."""
        return {
            name: version
            for name, version in packages.items()
            if re.sub(r"[-_.]+", "-", name).lower() not in self.overridden
        }


def install_plan(packages: Mapping[str, str], overrides: Sequence[str], pip_options: Sequence[str]) -> InstallPlan:
    """The kernel's environment as a job installs it: the requirement set of the distributions
    the body uses (environment.requirement_set: their run-time closure at the kernel's versions,
    ``--packages`` replacing by name, local and editable ones built into wheels). The node
    folder's digest covers the set's own digest (wheel contents included) and the pip options,
    since another index may serve other files for the same pins."""
    from ...run import environment

    wanted = environment.requirement_set(packages, overrides)
    local = {w.path.name for w in wanted.wheels}
    specs = tuple(f"{commands.WHEELS_DIR}/{s}" if s in local else s for s in wanted.pip_specs())
    digest = hashlib.sha256(json.dumps([wanted.digest, list(pip_options)]).encode()).hexdigest()[:16]
    overridden = frozenset(r.name for r in wanted.requirements if r.source.startswith("requested by --packages"))
    return InstallPlan(specs, digest if specs else None, tuple(wanted.wheels), overridden)


def wheel_resource_files(
    staging: storage.Staging, expiry: Any, wheels: Sequence[Any]
) -> tuple[list[models.ResourceFile], int]:
    """Each local wheel uploaded once, content-addressed in the cache container (the same
    ``data/<sha256>`` blobs as --inputs: an unchanged wheel costs one existence check on a later
    job and nothing within this kernel), reaching the job preparation task as a resource file
    ``wheels/<file name>`` (pip needs the wheel's own file name). Returns the resource files and
    the bytes sent, and says one line in the cell when any were sent (the user's own package
    travelling is news)."""
    out, sent_names, sent_bytes = [], [], 0
    for wheel in wheels:
        name, sent = blobs.upload_file_once(staging, storage.CACHE_CONTAINER, str(wheel.path))
        if sent:
            sent_bytes += wheel.size
            sent_names.append(f"{wheel.name} {wheel.version}")
        out.append(
            models.ResourceFile(
                http_url=staging.blob_sas_url(storage.CACHE_CONTAINER, name, "r", expiry),
                file_path=f"{commands.WHEELS_DIR}/{wheel.path.name}",
            )
        )
    if sent_names:
        print(
            f"azpar: uploaded {len(sent_names)} wheel(s) built from this machine ({sent_bytes} bytes): "
            f"{', '.join(sent_names)}; later jobs reuse them while unchanged",
            file=sys.stderr,
        )
    return out, sent_bytes
