"""Turn auto-loading of the extension on or off for an environment or for one user.

``python -m azpar_magic enable --sys-prefix`` (an administrator building a JupyterHub
single-user image) or ``--user`` (one person) copies ``jupyter-config/ipython/startup/
50-azpar_magic.py`` into IPython's startup folder there; ``disable`` removes it.

Why a startup file and why a command:

- IPython reads ``{sys.prefix}/etc/ipython/`` (and the user's profile) but not jupyter's
  ``*.d`` folders; and an ``extensions = [...]`` setting in a system config file is
  replaced by a user's own list, while a startup file runs whatever the user configures.
- A plain ``pip install`` must not load the extension into every kernel of everyone who
  shares the environment, so the wheel ships the file as package data only, and placing it
  is this explicit step.

This module imports nothing from IPython (only ``magics.py`` and ``__init__.py`` may): the
user's IPython folder is found the way IPython finds it (``$IPYTHONDIR``, else
``~/.ipython``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import InstallError

STARTUP_NAME = "50-azpar_magic.py"
MARKER = "python -m azpar_magic enable"  # a file without it is not ours: disable leaves it alone
SCOPES = ("sys-prefix", "user", "prefix")


def _source_file(*parts: str) -> Path:
    """A file of ``jupyter-config/``: inside the installed package (the wheel force-includes
    it there), else in the source checkout next to the package (editable installs)."""
    here = Path(__file__).resolve().parent
    for base in (here / "jupyter-config", here.parent / "jupyter-config"):
        candidate = base.joinpath(*parts)
        if candidate.is_file():
            return candidate
    raise InstallError(f"jupyter-config/{'/'.join(parts)} is missing from this installation of azpar_magic")


def startup_source() -> str:
    return _source_file("ipython", "startup", STARTUP_NAME).read_text(encoding="utf-8")


def ipython_dir() -> Path:
    """The user's IPython folder, as IPython itself resolves it."""
    return Path(os.environ.get("IPYTHONDIR") or Path.home() / ".ipython").expanduser()


def startup_path(scope: str, prefix: str | os.PathLike | None = None) -> Path:
    """Where the startup file goes: ``{prefix}/etc/ipython/startup`` for ``sys-prefix``
    (this interpreter's ``sys.prefix``) and ``prefix``, the default profile's startup
    folder for ``user``."""
    if scope == "sys-prefix":
        return Path(sys.prefix) / "etc" / "ipython" / "startup" / STARTUP_NAME
    if scope == "prefix":
        if not prefix:
            raise InstallError("--prefix needs a folder")
        return Path(prefix) / "etc" / "ipython" / "startup" / STARTUP_NAME
    if scope == "user":
        return ipython_dir() / "profile_default" / "startup" / STARTUP_NAME
    raise InstallError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")


def enable(scope: str, prefix: str | os.PathLike | None = None) -> Path:
    """Place the startup file (replacing an older copy of ours); return its path."""
    path = startup_path(scope, prefix)
    text = startup_source()
    if path.exists() and MARKER not in path.read_text(encoding="utf-8", errors="replace"):
        raise InstallError(f"{path} exists and was not written by azpar_magic; remove it first")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o644)  # every user of the environment reads it
        os.replace(tmp, path)
    except OSError as exc:
        raise InstallError(f"cannot write {path}: {exc}") from None
    return path


def disable(scope: str, prefix: str | os.PathLike | None = None) -> Path | None:
    """Remove our startup file; the path removed, or None when there was none."""
    path = startup_path(scope, prefix)
    if not path.exists():
        return None
    if MARKER not in path.read_text(encoding="utf-8", errors="replace"):
        raise InstallError(f"{path} was not written by azpar_magic; left in place")
    try:
        path.unlink()
    except OSError as exc:
        raise InstallError(f"cannot remove {path}: {exc}") from None
    return path


def status() -> dict[str, Path | None]:
    """Scope -> the startup file there, or None when auto-loading is off there."""
    found: dict[str, Path | None] = {}
    for scope in ("sys-prefix", "user"):
        path = startup_path(scope)
        found[scope] = path if path.exists() else None
    return found
