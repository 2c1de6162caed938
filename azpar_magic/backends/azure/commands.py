"""What runs on a node, as Batch command lines: the pool's start task, a job's preparation
task, each iteration task and the cloud merge task.

Command lines are not run by a shell on Batch, so each is ``/bin/sh -c SCRIPT`` with the
script quoted once here. Scripts hold no secret: every URL they need arrives as a resource
file or an output-file destination, never in the command line or environment.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Sequence

SITE_DIR = "$AZ_BATCH_NODE_SHARED_DIR/azpar/site"
# Right in the node's shared folder, which every task may write ("Files and directories in
# Azure Batch"), not under SITE_DIR's ``azpar`` folder: the start task made that one as root
# (admin auto-user) and the job preparation task runs as the pool's non-admin user (REST spec,
# JobPreparationTask.userIdentity), which may not create anything there (issue 14). This also
# works on pools whose start task an older version wrote.
PACKAGES_DIR = "$AZ_BATCH_NODE_SHARED_DIR/azpar-pkgs-{digest}"
WORKER_FILE = "worker.py"
ENVELOPE_FILE = "envelope.azpj"
TASK_FILE = "task.azpt"
RESULT_FILE = "result.azpr"
MERGED_FILE = "merged.azpm"
TASK_ENV = "AZPAR_TASK"  # small task inputs travel inline, base64 in this setting
PYTHON = "python"

# Installs the requirements that are missing or at another version into a target folder,
# and nothing when all are present (an image with the packages baked in needs no index).
# A failed install exits with pip's status, leaving pip's message last in stderr.
# argv: target, JSON list of pip options, requirements...
_INSTALLER = (
    "import sys,re,json,subprocess,importlib.metadata as m\n"
    "t=sys.argv[1];o=json.loads(sys.argv[2]);sys.path.insert(0,t);need=[]\n"
    "for r in sys.argv[3:]:\n"
    " n=re.split(r'[<>=!~;\\[ ]',r,maxsplit=1)[0];v=r.split('==',1)[1].strip() if '==' in r else None\n"
    " try:h=m.version(n)\n"
    " except Exception:h=None\n"
    " if h is None or (v and h!=v):need.append(r)\n"
    "if need:\n"
    " r=subprocess.call([sys.executable,'-m','pip','install','--quiet','--no-warn-script-location','--target',t,*o,"
    "*need])\n"
    " if r:sys.exit(r)\n"  # pip's own message ends stderr (read by the client), no traceback after it
    "print('azpar: installed',' '.join(need) if need else 'nothing (all present)')\n"
)


def _sh(script: str) -> str:
    return "/bin/sh -c " + shlex.quote(script)


def _install_line(target: str, requirements: Sequence[str], pip_options: Sequence[str]) -> str:
    args = " ".join(shlex.quote(r) for r in requirements)
    return f'{PYTHON} -c {shlex.quote(_INSTALLER)} "{target}" {shlex.quote(json.dumps(list(pip_options)))} {args}'


def packages_digest(requirements: Sequence[str], pip_options: Sequence[str]) -> str:
    text = json.dumps([sorted(requirements), list(pip_options)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def start_task_command(dill_version: str, packages: Sequence[str], pip_options: Sequence[str],
                       start_commands: Sequence[str]) -> str:
    """Once per node: the profile's own commands, then dill and the profile's packages into
    the node's shared folder (skipped when the image already has them)."""
    lines = ["set -e", *start_commands, f'mkdir -p "{SITE_DIR}"',
             _install_line(SITE_DIR, [f"dill=={dill_version}", *packages], pip_options)]
    return _sh("\n".join(lines))


def job_preparation_command(packages: Sequence[str], pip_options: Sequence[str]) -> str:
    """Once per node per job (its resource files bring the worker, envelope and namespace):
    the job's ``--packages`` into a folder named by their hash, so jobs asking for the same
    set share one install, made atomically so two jobs never see half of it. It runs as the
    pool's non-admin user, so the folder is made by that user in the shared folder (PACKAGES_DIR),
    and the tasks, the same user on Linux, read it."""
    if not packages:
        return _sh("true")
    target = PACKAGES_DIR.format(digest=packages_digest(packages, pip_options))
    script = "\n".join([
        "set -e",
        f'D="{target}"',
        'if [ ! -f "$D/.complete" ]; then',
        '  T="$D.tmp.$$"; mkdir -p "$T"',
        "  " + _install_line("$T", packages, pip_options) + ' || { c=$?; rm -rf "$T"; exit $c; }',  # no half install left
        '  touch "$T/.complete"; mv -T "$T" "$D" 2>/dev/null || rm -rf "$T"',
        "fi",
    ])
    return _sh(script)


def python_path(packages: Sequence[str], pip_options: Sequence[str]) -> str:
    parts = [SITE_DIR]
    if packages:
        parts.insert(0, PACKAGES_DIR.format(digest=packages_digest(packages, pip_options)))
    return ":".join(parts)


def task_command(packages: Sequence[str], pip_options: Sequence[str], *, inline: bool) -> str:
    """Run the worker on this task's input. The worker exits 3 for an environment mismatch
    after writing a result that says so; that is reported as success to Batch so Batch does
    not retry it (retrying cannot help), and the client reads the mismatch from the result."""
    source = f"env:{TASK_ENV}" if inline else TASK_FILE
    script = "; ".join([
        'P="$AZ_BATCH_JOB_PREP_WORKING_DIR"',
        f'export AZPAR_STAGE_DIR="$P" PYTHONPATH="{python_path(packages, pip_options)}"',
        f'{PYTHON} "$P/{WORKER_FILE}" {source} {RESULT_FILE}',
        "c=$?",
        '[ "$c" -eq 3 ] && c=0',
        "exit $c",
    ])
    return _sh(script)


def merge_command(packages: Sequence[str], pip_options: Sequence[str], n_tasks: int) -> str:
    """The cloud merge: every task's result file (downloaded as resource files under
    ``results/``) streamed in task order into one blob, one task result in memory at a time."""
    script = "; ".join([
        'P="$AZ_BATCH_JOB_PREP_WORKING_DIR"',
        f'export PYTHONPATH="{python_path(packages, pip_options)}"',
        f'exec {PYTHON} "$P/{WORKER_FILE}" --merge results {n_tasks} {MERGED_FILE}',
    ])
    return _sh(script)
