"""Who runs this kernel, as far as azpar is concerned: the JupyterHub user when the kernel
runs under a hub (``JUPYTERHUB_USER``, set by the hub's spawner in every single-user
server), else the OS user.

Several hub users can share one OS account (SimpleLocalProcessSpawner, or every user's pod
running as ``jovyan``), one Batch pool and one Storage account, so the OS account alone
does not tell their jobs apart. Job ids, Batch job metadata, container names and container
metadata therefore carry the user's ``slug``: a form of the name that fits where Azure is
strictest (blob container names: lowercase letters, digits and single hyphens, 3 to 63
characters).

The slug holds only lowercase letters and digits, so ``azpar-<slug>-`` is a prefix no other
user's names can start with (a hyphen in a slug would let ``bob`` match ``bob-x``'s
containers); administrators can scope a role assignment condition to it. A name that had to
be changed to fit (other characters dropped, or cut to ``SLUG_MAX``) gets a short hash of
the full name appended, so two such users still get different slugs.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import os
import re

HUB_USER_ENV = "JUPYTERHUB_USER"
SLUG_MAX = 20  # job id "azpar-SLUG-YYYYmmdd-HHMMSS-<12 hex>" + "-files" stays within 63 characters
_HASH_LEN = 6
_os_user: list[str] = []  # looked up once: a passwd lookup costs more than a whole manifest


def hub_user() -> str | None:
    """The JupyterHub user name, or None outside a hub."""
    return os.environ.get(HUB_USER_ENV) or None


def os_user() -> str:
    if not _os_user:
        try:
            _os_user.append(getpass.getuser())
        except Exception:  # no passwd entry (some containers)
            _os_user.append(str(os.getuid()) if hasattr(os, "getuid") else "unknown")
    return _os_user[0]


def user() -> str:
    """Who the jobs of this kernel are for: the hub user when there is one, else the OS user."""
    return hub_user() or os_user()


def slug(name: str | None = None) -> str:
    """``name`` (default: ``user()``) as lowercase letters and digits, at most ``SLUG_MAX``
    characters; with a hash of the full name appended when it had to be changed."""
    return _slug(user() if name is None else name)


@functools.lru_cache(maxsize=64)
def _slug(name: str) -> str:
    """``slug``'s work, once per name: every job id asks for it (issue 16)."""
    lowered = name.lower()
    kept = re.sub(r"[^a-z0-9]", "", lowered)
    if kept == name and 0 < len(kept) <= SLUG_MAX:
        return kept
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:_HASH_LEN]
    return kept[: SLUG_MAX - _HASH_LEN] + digest
