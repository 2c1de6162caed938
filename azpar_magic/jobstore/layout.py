"""Where the job store lives and what its names are: the root folder (private, per hub user), one folder per
job named by its id, the file names inside it, the kept namespaces, and the rule for a job's ``--name``.

Nothing here reads or writes a job's files: ``records`` knows their formats, ``writer`` and ``reader`` use both.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

from .. import identity, worker as wire
from ..errors import StoreError

STORE_ENV = "AZPAR_JOB_STORE"
FORMAT = 1
MANIFEST = "manifest.json"
RECORDS = "records.azs"
FILE_MAGIC = b"AZPARS1\n"
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
NAMESPACES = "namespaces"  # under the store root: ns-<sha256>.bin, one file per distinct namespace
NAMESPACE_LINK = "namespace.bin"  # in a job's folder: a hard link to its namespace
MODULES_LINK = (
    "modules.json"  # in a job's folder: a hard link to the notebook's modules it shipped (mods-<sha256>.json)
)


def store_root() -> Path:
    """The store folder (not created): ``$AZPAR_JOB_STORE``, else the XDG data folder.

    Read on every call, so a test or a notebook can point it elsewhere at any time; the path is
    built once per distinct set of the variables it depends on (building it was ~20 us of every
    cell, issue 16)."""
    env = os.environ
    return _root_for(env.get(STORE_ENV), env.get("XDG_DATA_HOME"), env.get("HOME"), identity.hub_user())


@functools.lru_cache(maxsize=8)
def _root_for(explicit: str | None, data_home: str | None, home: str | None, hub: str | None) -> Path:
    """The store folder for these variables (``home``: $HOME, which ``expanduser`` and ``Path.home`` read)."""
    if explicit:
        root = Path(explicit).expanduser()
    else:
        data_home = os.environ.get("XDG_DATA_HOME")
        base = Path(data_home).expanduser() if data_home else Path.home() / ".local" / "share"
        root = base / "azpar" / "jobs"
    # Under JupyterHub several hub users may share one OS account and home folder (a local
    # spawner, or every pod running as jovyan on one volume): each gets a folder of their own,
    # so %azpar jobs, attach and delete only ever see that user's jobs.
    return root / f"hub-{identity.slug(hub)}" if hub else root


# Roots ensure_root checked in this process (checked once: a stat per job showed in the benchmark); the
# writer forgets one that was removed since.
checked_roots: set[str] = set()


def ensure_root(root: Path | None = None) -> Path:
    """Create the store folder 0700 if needed; refuse one that another user owns, or one that
    exists with access for group or others: azpar never changes the mode of a folder it did
    not create (``$AZPAR_JOB_STORE`` may name a folder of the user's own, shared on purpose),
    and job results are kept only where other users cannot list or read them."""
    root = root or store_root()
    key = str(root)
    if key in checked_roots:  # checked once per process (a stat per job showed in the benchmark)
        return root
    if root.name.startswith("hub-"):  # a hub user's folder: the shared root above it is private too
        root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        root.mkdir(parents=True, mode=0o700)  # ours: private from birth (a umask only takes bits away)
    except FileExistsError:
        _check_existing_root(root)
    checked_roots.add(key)
    return root


def _check_existing_root(root: Path) -> None:
    info = root.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise StoreError(f"the job store {root} is not a folder; set {STORE_ENV} to a folder of your own")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise StoreError(
            f"the job store {root} belongs to another user (uid {info.st_uid}); set {STORE_ENV} to a folder of your own"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise StoreError(
            f"the job store {root} is open to other users (mode {mode:04o}), and azpar does not change "
            f"the mode of a folder it did not create. Make it private with `chmod 700 {root}` if "
            f"that is what you want, or set {STORE_ENV} to a folder that does not exist yet (azpar "
            "creates it private)"
        )


def valid_id(job_id: str) -> bool:
    return bool(job_id) and job_id.startswith("azpar-") and set(job_id) <= _ID_CHARS


def job_folder(job_id: str) -> Path:
    if not valid_id(job_id):
        raise StoreError(f"{job_id!r} is not an azpar job id")
    return store_root() / job_id


NAME_MAX = 64
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def check_name(name: str) -> str:
    """``name`` if it can label a job (``--name``): 1 to 64 letters, digits, ``-``, ``_`` or
    ``.``, so that it reads the same in a table, a command line and a glob, and cannot be
    taken for an option (no leading ``-``) or an id; ValueError saying why otherwise."""
    if not isinstance(name, str) or not name:
        raise ValueError("a job name cannot be empty; use letters, digits, '-', '_' or '.' (at most 64)")
    bad = sorted(set(name) - _NAME_CHARS)
    if bad or len(name) > NAME_MAX or name.startswith("-") or valid_id(name):
        why = (
            f"it has {', '.join(map(repr, bad))}"
            if bad
            else f"it is {len(name)} characters long"
            if len(name) > NAME_MAX
            else "it starts with '-'"
            if name.startswith("-")
            else "it looks like a job id"
        )
        raise ValueError(
            f"{name!r} cannot name a job: {why}. A name is 1 to {NAME_MAX} letters, digits, '-', '_' "
            "or '.', not starting with '-' (e.g. --name sweep-2024.v2)"
        )
    return name


def namespace_path(root: Path, digest: str) -> Path:
    return root / NAMESPACES / wire.namespace_file_name(_checked(digest))


def modules_path(root: Path, digest: str) -> Path:
    """Where the store keeps a set of the notebook's modules (``local_modules_sha256``), once per set."""
    return root / NAMESPACES / wire.modules_file_name(_checked(digest))


def items_path(root: Path, digest: str) -> Path:
    """Where the store keeps a task's large items (a MB or more), once per distinct content."""
    return root / NAMESPACES / items_file_name(digest)


def items_file_name(digest: str) -> str:
    """A kept items file's name, under the store root and (a hard link) in each job's folder that uses it."""
    return f"items-{_checked(digest)}.bin"


def _checked(digest: str) -> str:
    if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
        raise StoreError(f"{digest!r} is not a sha256 digest")
    return digest
