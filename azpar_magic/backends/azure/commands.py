"""What runs on a node, as Batch command lines: the pool's start task, a job's preparation
task, each iteration task and the cloud merge task.

How a command line reaches a process is only partly known, so every line sent here has one
shape that the known sources agree on, and nothing else. Known: Batch does not run the line
under a shell (REST spec, ``commandLine`` of TaskAddParameter, StartTask, JobPreparationTask);
the official CreateTask_ContainerSettings example runs ``bash -c 'echo hello'`` and Nextflow's
Azure plugin runs ``sh -c '...'`` one-liners on real container pools; on Linux the quotes decide
how Batch splits the line (azure-sdk-for-net#17107, azure-docs PR #66405); a second ``bash -c``
after ``&&`` was silently not run (nextflow#6863 / PR #6864). Unknown: how Batch, and then
``docker create`` for a container task, tokenise a line holding a newline or a quote inside
quotes. So every command line is ONE line, ``/bin/sh -c '...'`` with one level of single quotes
and no quote, backslash or newline inside (``_sh`` refuses anything else):

- Iteration and merge tasks are short, so their script is the one-liner itself. Paths such as
  ``$AZ_BATCH_JOB_PREP_WORKING_DIR`` stay unquoted: Batch builds them from ids of letters,
  digits, ``-`` and ``_``, with no space or wildcard. Nothing is added per task, so the
  add-collection body (submission.py) grows by nothing.
- The start task and the job preparation task need real scripts (the profile's
  ``start_commands`` are the user's own shell lines, kept unchanged; the installer is Python).
  Each script travels in an environment setting of that same start task or job preparation
  task (the spec: ``environmentSettings`` of StartTask and JobPreparationTask; the container
  workloads article: task environment variables are mapped into the container), base64-encoded
  so the value is one line of letters, digits, ``+/=`` whatever route Batch and Docker take it
  by (a multi-line value or a ``$`` in it would be another unknown). The fixed line
  :data:`RUN_SCRIPT` decodes it to a file in the task's working directory and runs that file
  with ``/bin/sh``, which then reads it as any shell script. The Python installer likewise
  travels base64 in its own setting and reaches ``python -`` on a pipe.
  Not chosen: a resource file (the start task belongs to a long-lived pool and would need a
  URL that never expires), or the job's ``commonEnvironmentSettings`` (the spec applies them to
  job preparation too, but a job made by an earlier version and resumed by this one would not
  have them).

Scripts hold no secret: every URL they need arrives as a resource file or an output-file
destination, never in the command line or environment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

SITE_DIR = "$AZ_BATCH_NODE_SHARED_DIR/azpar/site"
# Right in the node's shared folder, which every task may write ("Files and directories in
# Azure Batch"), not under SITE_DIR's ``azpar`` folder: the start task made that one as root
# (admin auto-user) and the job preparation task runs as the pool's non-admin user (REST spec,
# JobPreparationTask.userIdentity), which may not create anything there (issue 14). This also
# works on pools whose start task an older version wrote.
PACKAGES_DIR = "$AZ_BATCH_NODE_SHARED_DIR/azpar-pkgs-{digest}"
#: What the image's Python has (``pip list --format=json``), written by the start task into the node's
#: shared folder; read through the node file API as ``shared/`` + this name (``%azpar env``).
IMAGE_PACKAGES = "azpar-image-packages.json"
WORKER_FILE = "worker.py"
WORKER_COMPILED = "worker.pyc"  # worker.COMPILED_FILE, written by ``worker.py --check`` in job preparation
#: The worker compiled once per node for every job shipping the same worker.py (named by its
#: sha256) on the same Python ($V, the job preparation's Python check): right in the shared
#: folder, as PACKAGES_DIR, for the same reason.
SHARED_WORKER = "$AZ_BATCH_NODE_SHARED_DIR/azpar-worker-{sha}-py$V.pyc"
ENVELOPE_FILE = "envelope.azpj"
TASK_FILE = "task.azpt"
RESULT_FILE = "result.azpr"
MERGED_FILE = "merged.azpm"
TASK_ENV = "AZPAR_TASK"  # small task inputs travel inline, base64 in this setting
PYTHON = "python"
SCRIPT_ENV = "AZPAR_SCRIPT"  # the start task's or job preparation task's script, base64
INSTALLER_ENV = "AZPAR_INSTALLER"  # _INSTALLER, base64, for the scripts that install packages
SCRIPT_FILE = "azpar-script.sh"  # where RUN_SCRIPT decodes the script (the task's working directory)
#: The command line of a task whose script is in SCRIPT_ENV. ``: ${X:?}`` stops with "parameter
#: not set" when the setting did not arrive (rather than running an empty script that "succeeds").
RUN_SCRIPT = (
    f"/bin/sh -c ': ${{{SCRIPT_ENV}:?}}; printf %s ${SCRIPT_ENV} | base64 -d > {SCRIPT_FILE} "
    f"&& exec /bin/sh {SCRIPT_FILE}'"
)

# Installs the requirements the node's Python does not meet into a target folder, and nothing when
# all are met (an image with the packages baked in needs no index). "Met" is PEP 440's: the installed
# version is inside the requirement's specifiers (``x>=1,<2``, ``~=``, ``!=``, ``==1.*``), the extras'
# own requirements are met too, and one whose marker excludes this node counts as met (pip skips it as
# well). pip's own copy of ``packaging`` reads them (every node that installs has pip); without it only
# a plain ``name==version`` is taken as met when installed, anything else goes to pip. A requirement that
# is not a name with specifiers (a wheel file, a URL), or whose metadata cannot be read, goes to pip.
# A failed install exits with pip's status, leaving pip's message last in stderr.
# argv: target, JSON list of pip options, requirements...
_INSTALLER = """\
import sys, re, json, subprocess, importlib.metadata as m
t = sys.argv[1]; o = json.loads(sys.argv[2]); sys.path.insert(0, t)
try:
    from pip._vendor.packaging.requirements import Requirement as R
except Exception:
    R = None
def have(name):
    try:
        return m.version(name)
    except Exception:
        return None
def met(q, seen=()):
    if q.name.lower() in seen:
        return True
    if q.url:
        return False
    h = have(q.name)
    if h is None or not q.specifier.contains(h, prereleases=True):
        return False
    for e in q.extras:
        for d in m.requires(q.name) or ():
            d = R(d)
            if d.marker is not None and "extra" in str(d.marker) and d.marker.evaluate({"extra": e}):
                d.marker = None
                if not met(d, (*seen, q.name.lower())):
                    return False
    return True
def needed(r):
    if R is None:
        n, _, v = r.partition("==")
        return not (v and re.fullmatch(r"[A-Za-z0-9._-]+", n) and have(n) == v)
    try:
        q = R(r)
    except Exception:
        return True
    try:
        return not ((q.marker is not None and not q.marker.evaluate()) or met(q))
    except Exception:
        return True
need = [r for r in sys.argv[3:] if needed(r)]
if need:
    c = subprocess.call([sys.executable, "-m", "pip", "install", "--quiet", "--no-warn-script-location",
                         "--target", t, *o, *need])
    if c:
        sys.exit(c)
print("azpar: installed", " ".join(need) if need else "nothing (all present)")
"""


@dataclass(frozen=True)
class NodeCommand:
    """A command line with the environment settings it needs, as (name, value) pairs, for the
    same start task or job preparation task."""

    command_line: str
    environment: tuple[tuple[str, str], ...] = ()


_NEEDS_SECOND_LEVEL = ("'", '"', "\\", "\n", "\r")


def _sh(script: str) -> str:
    """``/bin/sh -c 'SCRIPT'``: one line, one level of quotes. A script that would need a quote,
    backslash or line break inside is a bug here (see the module docstring), refused at once."""
    bad = [c for c in _NEEDS_SECOND_LEVEL if c in script]
    if bad:
        raise ValueError(
            f"internal error: a Batch command line may not hold {bad!r} inside its quotes "
            f"(no source shows how Batch tokenises that); put the script in an environment "
            f"setting (_script_command): {script!r}"
        )
    return f"/bin/sh -c '{script}'"


def _encode(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _script_command(script: str) -> NodeCommand:
    """Run ``script`` through :data:`RUN_SCRIPT`, the script in :data:`SCRIPT_ENV`, and the
    installer in :data:`INSTALLER_ENV` when the script uses it."""
    env = [(SCRIPT_ENV, _encode(script))]
    if "$" + INSTALLER_ENV in script:
        env.append((INSTALLER_ENV, _encode(_INSTALLER)))
    return NodeCommand(RUN_SCRIPT, tuple(env))


def _install_line(target: str, requirements: Sequence[str], pip_options: Sequence[str]) -> str:
    """One script line (a pipeline whose status is the installer's) installing into ``target``;
    the installer's source arrives in INSTALLER_ENV and reaches ``python -`` on a pipe."""
    args = " ".join(shlex.quote(r) for r in requirements)
    return (
        f'printf %s "${INSTALLER_ENV}" | base64 -d | {PYTHON} - "{target}" '
        f"{shlex.quote(json.dumps(list(pip_options)))} {args}"
    )


def packages_digest(requirements: Sequence[str], pip_options: Sequence[str]) -> str:
    text = json.dumps([sorted(requirements), list(pip_options)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def start_task_command(
    dill_version: str, packages: Sequence[str], pip_options: Sequence[str], start_commands: Sequence[str]
) -> NodeCommand:
    """Once per node: the profile's own commands (unchanged, as the user wrote them), then what
    the image has (``pip list`` as JSON into IMAGE_PACKAGES of the shared folder, for ``%azpar env``;
    never fatal), then dill and the profile's packages into the node's shared folder (skipped when
    the image already has them). A start command may ``cd``: the install names its folder in full."""
    lines = [
        "set -e",
        *start_commands,
        f"{PYTHON} -m pip list --format=json --disable-pip-version-check > "
        f'"$AZ_BATCH_NODE_SHARED_DIR/{IMAGE_PACKAGES}" 2>/dev/null || true',
        f'mkdir -p "{SITE_DIR}"',
        _install_line(SITE_DIR, [f"dill=={dill_version}", *packages], pip_options),
    ]
    return _script_command("\n".join(lines))


PACKAGES_LINK = "azpar-pkgs"  # in the job preparation folder: the job's install, whatever its digest
WHEELS_DIR = "wheels"  # in the job preparation folder: the job's local wheels (resource files)


def python_check(kernel_python: str) -> list[str]:
    """Script lines stopping job preparation when the node's Python is not the kernel's
    major.minor: dill's byte code and compiled wheels do not cross minors, so no task could
    run. The message names both versions and the fix (the image), and is the last stderr line."""
    want = ".".join(kernel_python.split(".")[:2])
    return [
        f'V=$({PYTHON} -c "import sys;print(chr(46).join(map(str,sys.version_info[:2])))")',
        f'if [ "$V" != "{want}" ]; then',
        f'  echo "azpar: this node runs Python $V but the notebook kernel runs Python {kernel_python}: the '
        f"iterations cannot run there (byte code and compiled packages differ between Python versions). Use "
        f'an image with the kernel\'s Python: container_image = \\"python:{want}-slim\\" in the profile '
        f'(then %azpar pool delete, so the pool is made again with it), or run the notebook with Python $V." >&2',
        "  exit 1",
        "fi",
    ]


def job_preparation_command(
    packages: Sequence[str],
    pip_options: Sequence[str],
    *,
    digest: str | None = None,
    kernel_python: str | None = None,
    wheels: bool = False,
    worker_sha: str | None = None,
) -> NodeCommand:
    """Once per node per job (its resource files bring the worker, envelope, namespace and the
    job's local wheels under WHEELS_DIR): first the Python check (``kernel_python``), then the
    job's requirements into a folder of the shared folder named by their hash (``digest``,
    default :func:`packages_digest`), so jobs asking for the same set share one install, made
    atomically so two jobs never see half of it; last a link PACKAGES_LINK in the job
    preparation folder to that install, which the tasks put on their PYTHONPATH. It runs as the
    pool's non-admin user, so the folder is made by that user in the shared folder
    (PACKAGES_DIR), and the tasks, the same user on Linux, read it. ``wheels``: pip also looks
    in WHEELS_DIR (``--find-links``), where local requirements are named by path. Last,
    :func:`check_line` (``worker_sha``, the sha256 of the worker.py it brings, names the node's
    compiled copy; only with ``kernel_python``, whose check sets the Python version it needs)."""
    lines = ["set -e", *(python_check(kernel_python) if kernel_python else [])]
    check = check_line(packages, pip_options, worker_sha if kernel_python else None)
    if packages:
        options = [*pip_options, *(["--find-links", WHEELS_DIR] if wheels else [])]
        target = PACKAGES_DIR.format(digest=digest or packages_digest(packages, pip_options))
        lines += [
            f'D="{target}"',
            'if [ ! -f "$D/.complete" ]; then',
            '  T="$D.tmp.$$"; mkdir -p "$T"',
            "  " + _install_line("$T", packages, options) + ' || { c=$?; rm -rf "$T"; exit $c; }',  # no half install
            '  touch "$T/.complete"; mv -T "$T" "$D" 2>/dev/null || rm -rf "$T"',
            "fi",
            f'ln -sfn "$D" "$AZ_BATCH_JOB_PREP_WORKING_DIR/{PACKAGES_LINK}"',
        ]
    return _script_command("\n".join([*lines, check]))


def check_line(packages: Sequence[str] = (), pip_options: Sequence[str] = (), worker_sha: str | None = None) -> str:
    """The last lines of job preparation: ``worker.py --check``, with the tasks' PYTHONPATH, checks
    the environment and the namespace's sha256 once for the node and leaves a stamp, so each task
    skips both (issue 16), and compiles the worker for the tasks (WORKER_COMPILED). With
    ``worker_sha`` it runs the node's compiled copy (SHARED_WORKER) when an earlier job left one,
    and leaves it otherwise. Never fatal: a task without the stamp checks for itself, and reports
    a mismatch in its result, as it always has; without the compiled worker it runs the source."""
    envelope = f"$AZ_BATCH_JOB_PREP_WORKING_DIR/{ENVELOPE_FILE}"
    run = f"PYTHONPATH={python_path(packages, pip_options)} {PYTHON}"
    if worker_sha is None:
        return f"{run} $AZ_BATCH_JOB_PREP_WORKING_DIR/{WORKER_FILE} --check {envelope} > /dev/null 2>&1 || true"
    return "\n".join(
        [
            f'C="{SHARED_WORKER.format(sha=worker_sha[:16])}"',
            f'W="$C"; [ -f "$W" ] || W=$AZ_BATCH_JOB_PREP_WORKING_DIR/{WORKER_FILE}',
            f'{run} "$W" --check {envelope} "$C" > /dev/null 2>&1 || true',
        ]
    )


def python_path(packages: Sequence[str] = (), pip_options: Sequence[str] = ()) -> str:
    """The job's install (through the job preparation folder's link, so a task's command line
    does not depend on the digest), then the start task's dill and profile packages."""
    return f"$AZ_BATCH_JOB_PREP_WORKING_DIR/{PACKAGES_LINK}:{SITE_DIR}"


def task_command(packages: Sequence[str], pip_options: Sequence[str], *, inline: bool) -> str:
    """Run the worker on this task's input. The worker exits 3 for an environment mismatch
    after writing a result that says so; that is reported as success to Batch so Batch does
    not retry it (retrying cannot help), and the client reads the mismatch from the result.
    One line (module docstring): assignments, then ``export NAME...`` (``export NAME=$X``
    would be split on spaces by older shells)."""
    source = f"env:{TASK_ENV}" if inline else TASK_FILE
    return _sh(
        "; ".join(
            [
                "P=$AZ_BATCH_JOB_PREP_WORKING_DIR",
                f"AZPAR_STAGE_DIR=$P PYTHONPATH={python_path(packages, pip_options)}",
                "export AZPAR_STAGE_DIR PYTHONPATH",
                # Python compiles a script at every start (30-40 ms of a trivial task, issue 16 j),
                # not a compiled file run the same way: job preparation left one (check_line).
                f"W=$P/{WORKER_COMPILED}",
                f"[ -f $W ] || W=$P/{WORKER_FILE}",
                f"{PYTHON} $W {source} {RESULT_FILE}",
                "c=$?",
                "[ $c -eq 3 ] && c=0",
                "exit $c",
            ]
        )
    )


def merge_command(packages: Sequence[str], pip_options: Sequence[str], n_tasks: int) -> str:
    """The cloud merge: every task's result file (downloaded as resource files under
    ``results/``) streamed in task order into one blob, one task result in memory at a time."""
    return _sh(
        "; ".join(
            [
                f"PYTHONPATH={python_path(packages, pip_options)}",
                "export PYTHONPATH",
                f"exec {PYTHON} $AZ_BATCH_JOB_PREP_WORKING_DIR/{WORKER_FILE} --merge results {n_tasks} {MERGED_FILE}",
            ]
        )
    )
