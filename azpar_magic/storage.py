"""The active profile's Blob storage from a notebook: list, download, upload, delete.

    import azpar_magic.storage as st
    st.put("data/", "az://datasets/run1/")     # a folder, streamed in blocks
    st.ls("az://datasets/run1")                 # [Entry(path='az://datasets/run1/a.csv', size=...)]
    st.get("az://results/azpar-.../3/plot.png", "plots/")
    st.rm("az://datasets/run1", recursive=True)

The same as ``%azpar storage ls|get|put|rm``. Paths on the account are ``az://CONTAINER/PATH``;
a path names a blob or, as a folder, every blob below it. Transfers are streamed (a large file
is never held in memory whole), retried on failure, and report progress through
``progress(name, bytes_done, bytes_total)`` when given. The account and credentials are the
profile's (``profile=``, else ``%azpar use``, else the configuration files'); the local pool
has no storage account, so these need an Azure profile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import identity, session
from .errors import ConfigError, DataError, StorageError
from .run.data import BLOB_SCHEME, blob_path

ProgressHook = Callable[[str, int, int], None]  # (blob name, bytes done, bytes in all)


@dataclass(frozen=True)
class Entry:
    path: str  # az://container[/blob]
    size: int | None  # bytes; None for a container


class Listing(list):
    """What ``ls`` found, with ``hidden``: how many containers of other hub users it left out."""

    hidden: int = 0


def _staging(profile: str | None):
    name = session.active_profile(profile)
    if not name or name == session.LOCAL:
        raise StorageError(
            "azpar storage works on an Azure profile's storage account, and this session has none "
            "active: pass --profile NAME (profile= in Python), or run %azpar use NAME first "
            "(see %azpar config)"
        )
    try:
        backend = session.engine(profile=name).backend
    except ConfigError as exc:
        raise StorageError(str(exc)) from None
    staging = backend.blob_storage()
    if staging is None:
        raise StorageError(
            f"profile {name!r} runs on the {backend.name} backend, which has no storage account; "
            "azpar storage needs an Azure profile"
        )
    return staging


def _split(path: str, what: str) -> tuple[str, str]:
    if not path.startswith(BLOB_SCHEME):
        raise StorageError(f"{what} must be an az://CONTAINER/PATH path, not {path!r}")
    try:
        return blob_path(path)
    except DataError as exc:
        raise StorageError(str(exc)) from None


def ls(path: str = "", *, profile: str | None = None) -> Listing:
    """The account's containers (no path), or the blobs whose names start with PATH in
    ``az://CONTAINER/PATH`` (every blob of the container without PATH).

    Under JupyterHub the containers azpar made for other hub users (their jobs' ``azpar-SLUG-...``)
    are left out of the account's list, and counted in ``hidden``: users sharing one account would
    otherwise read each other's job names and times. Naming one still lists it, where the
    credential may read it (access is Azure's to grant, docs/jupyterhub.md)."""
    from .backends.azure import blobs

    staging = _staging(profile)
    if not path or path == BLOB_SCHEME:
        me = identity.slug() if identity.hub_user() else None
        listing = Listing()
        for name, owner in blobs.list_containers(staging):
            if me is not None and owner is not None and owner != me:
                listing.hidden += 1
            else:
                listing.append(Entry(f"{BLOB_SCHEME}{name}", None))
        return listing
    container, prefix = _split(path, "ls")
    return Listing(
        Entry(f"{BLOB_SCHEME}{container}/{b.name}", b.size) for b in blobs.list_blobs(staging, container, prefix)
    )


def get(source: str, target: str, *, profile: str | None = None, progress: ProgressHook | None = None) -> list[str]:
    """Download a blob (to ``target``, or into it when it is a folder or ends with a slash)
    or a folder of blobs (into the folder ``target``, keeping their layout); the local paths
    written. FileNotFoundError when nothing is at ``source``; ValueError, before anything is
    written, when a blob's name would land outside ``target`` (a ``..`` segment)."""
    from .backends.azure import blobs

    container, name = _split(source, "get's source")
    return blobs.get_path(_staging(profile), container, name, target, progress=progress)


def put(source: str, target: str, *, profile: str | None = None, progress: ProgressHook | None = None) -> list[str]:
    """Upload a local file (to the blob ``target``, or below it when it ends with a slash)
    or folder (below ``target``, keeping its layout); the blob paths written. The container
    is created when missing; existing blobs are overwritten."""
    from .backends.azure import blobs

    container, name = _split(target, "put's target")
    names = blobs.put_path(_staging(profile), source, container, name, progress=progress)
    return [f"{BLOB_SCHEME}{container}/{n}" for n in names]


def rm(path: str, *, recursive: bool = False, dry_run: bool = False, profile: str | None = None) -> list[str]:
    """Delete a blob, or with ``recursive`` a folder of blobs; the paths deleted (only
    listed with ``dry_run``). ValueError for a folder without ``recursive``."""
    from .backends.azure import blobs

    container, name = _split(path, "rm")
    if not name and recursive:
        raise StorageError("rm does not empty a whole container; name a folder in it (az://CONTAINER/FOLDER)")
    names = blobs.remove_path(_staging(profile), container, name, recursive=recursive, dry_run=dry_run)
    return [f"{BLOB_SCHEME}{container}/{n}" for n in names]
