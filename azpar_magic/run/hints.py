"""What an iteration's failure on the workers means in this kernel, said beside the error.

A cell that runs on the local pool may fail on Azure nodes for reasons the worker cannot see: a
file beside the notebook the node does not have, a module the kernel has that no captured code
names (so the node did not install it), an environment variable set in the notebook. The kernel
can tell, by looking at its own folder, distributions and environment, and names the fix. It also
has the source of earlier cells, which a worker running a later cell's job does not: the remote
traceback's frames in functions those cells made get their lines here.
"""

from __future__ import annotations

import dataclasses
import functools
import linecache
import os
import re
import sys

from ..errors import DataError
from ..jobs import Failure
from . import capture as capture_mod, data as data_mod

__all__ = ["FilesSeen", "explain", "missing_file_hint", "environment_hint", "missing_module_hint", "made_code_lines"]


@dataclasses.dataclass(frozen=True)
class FilesSeen:
    """Where a job's iterations cannot see the notebook's folder: ``folder``, the kernel's; ``remote``:
    they run on other machines (Azure nodes), else in a working folder of their own (``--inputs`` or
    ``--outputs`` on the local pool); ``given``: the files ``--inputs`` brings, as named under
    ``inputs/``."""

    folder: str
    remote: bool = True
    given: frozenset[str] = frozenset()


def explain(failure: Failure, files: FilesSeen | None, installs: bool) -> Failure:
    """``failure`` with what this kernel knows about it added to its message (itself when nothing).
    ``files``: how the iterations see the kernel's files, when they do not see its folder (None
    otherwise); ``installs``: the workers install the distributions the captured code names."""
    if files is not None:
        failure = missing_file_hint(failure, files)
    if installs:
        failure = missing_module_hint(failure)
    return made_code_lines(environment_hint(failure))


# A traceback frame in code an earlier cell's body made (worker.made_code_filename); its source line, when the
# worker had it, follows on a line indented by four spaces.
_MADE_CODE_FRAME = re.compile(r'  File "(<azpar cell [0-9a-f]{8}>)", line (\d+), in ')


def made_code_lines(failure: Failure) -> Failure:
    """``failure`` with the source lines of its traceback's frames in functions an earlier cell's body made
    (returned by that cell, passed to this one): the worker of this job has only this cell's source, so those
    frames came without a line, where the notebook's own loop shows it. This kernel's linecache has the earlier
    cell's source (capture.show_cell_source)."""
    text = failure.traceback
    if not text or "<azpar cell " not in text:
        return failure
    lines = text.splitlines(True)
    shown: list[str] = []
    for i, line in enumerate(lines):
        shown.append(line)
        frame = _MADE_CODE_FRAME.match(line)
        if frame is None or (i + 1 < len(lines) and lines[i + 1].startswith("    ")):
            continue
        source = linecache.getline(frame.group(1), int(frame.group(2))).strip()
        if source:
            shown.append(f"    {source}\n")
    return failure if len(shown) == len(lines) else dataclasses.replace(failure, traceback="".join(shown))


def missing_file_hint(failure: Failure, files: FilesSeen) -> Failure:
    """An iteration that could not open a file which exists beside the notebook (``open('data.csv')``)
    ran where only what ``--inputs`` brings is there, under ``inputs/``: on a node, or in a working
    folder of its own on the local pool. Say so, and how, beside the error: pass the file with
    ``--inputs``, or open it under ``inputs/`` when it is passed already (the usual slip)."""
    if failure.kind != "user" or failure.error_type.rsplit(".", 1)[-1] != "FileNotFoundError":
        return failure
    folder = files.folder
    name = getattr(failure.exc, "filename", None)
    if not isinstance(name, str):
        said = re.search(r"No such file or directory: '([^']+)'", failure.message)
        name = said.group(1) if said else None
    if not name or not os.path.isfile(os.path.join(folder, name)):
        return failure
    try:
        (found,) = data_mod.resolve_local(name, folder)
    except (DataError, ValueError):  # not readable here either, or a glob's characters in the name
        return failure
    there = data_mod.INPUTS_DIR + "/" + found.rel
    if found.rel in files.given:
        why = f"{name!r} is given with --inputs, and iterations find it as {there!r}: open that in the body"
    elif files.remote:
        why = (
            f"{name!r} is a file of this machine, which the nodes do not have: pass --inputs {name!r} and open "
            f"{there!r} in the body"
        )
    else:
        why = (
            f"{name!r} is beside the notebook, but with --inputs or --outputs each iteration runs in a folder of its "
            f"own: pass --inputs {name!r} and open {there!r} in the body"
        )
    return dataclasses.replace(failure, message=f"{failure.message} ({why})")


_ENVIRON_LOOKUP = re.compile(r'File "(?:<frozen os>|[^"]*[/\\]os\.py)", line \d+, in __getitem__')


def environment_hint(failure: Failure) -> Failure:
    """An iteration's ``os.environ[NAME]`` failed for a variable this kernel has: the workers'
    environment is not wholly the kernel's (Azure nodes never see it; local workers see it but for
    azpar's secrets and the hub's tokens), so a variable set in the notebook is not there. Say so and
    how to pass the value, beside the KeyError."""
    if failure.kind != "user" or failure.error_type.rsplit(".", 1)[-1] != "KeyError":
        return failure
    if not _ENVIRON_LOOKUP.search(failure.traceback or ""):
        return failure
    exc = failure.exc
    name = exc.args[0] if isinstance(exc, KeyError) and exc.args else failure.message.strip("'\"")
    if not isinstance(name, str) or name not in os.environ:
        return failure
    return dataclasses.replace(
        failure,
        message=f"{failure.message} ({name} is set in this kernel, but iterations do not see it: Azure nodes have "
        "an environment of their own, and the local pool's workers are not given azpar's secrets nor the hub's "
        f"tokens. Read it in the notebook (value = os.environ[{name!r}]) and use that variable in the body)",
    )


_MISSING_MODULE = re.compile(r"No module named '([\w.]+)'|Missing optional dependency '([\w.]+)'")


def missing_module_hint(failure: Failure) -> Failure:
    """An iteration that could not import a module this kernel has: the nodes install the
    distributions the captured code names, and an import they cannot see (inside a library,
    ``pd.read_excel`` needing openpyxl; ``importlib.import_module(name)``) is not among them. Say
    which distribution and version to pass with ``--packages``, beside the error."""
    if failure.kind != "user" or failure.error_type.rsplit(".", 1)[-1] not in ("ModuleNotFoundError", "ImportError"):
        return failure
    name = getattr(failure.exc, "name", None)
    if not isinstance(name, str):
        said = _MISSING_MODULE.search(failure.message)
        name = (said.group(1) or said.group(2)) if said else None
    pins = _packages_for(name) if name else ""
    if not pins:
        return failure
    return dataclasses.replace(
        failure,
        message=f"{failure.message} ({name} is installed in this kernel, but no code the cell sends names it, so "
        f"the nodes did not install it: pass {pins})",
    )


def _packages_for(module: str) -> str:
    """``--packages DIST==VERSION`` for the kernel's distributions behind ``module`` ("" when none, or
    the standard library's): asked once per module while the kernel's installed distributions stay
    as they are (``installed_signature``, a stat per sys.path folder), however many iterations failed
    on it; a package installed into the kernel after a first failure is named at the next."""
    return _pins(module, capture_mod.installed_signature())


@functools.lru_cache(maxsize=64)
def _pins(module: str, signature: tuple) -> str:
    if module.split(".")[0] in sys.stdlib_module_names:
        return ""
    found = capture_mod.distributions_for([module])
    return " ".join(f"--packages {dist}=={version}" for dist, version in sorted(found.items()))
