"""The public import paths stay what they were when the modules moved into packages.

``azpar_magic.run`` and ``azpar_magic.jobs`` are both public functions and the names of subpackages
(the client pipeline, the job model). Importing a subpackage for the first time binds it as an
attribute of its parent; these tests import every module of the package, in a fresh interpreter,
and check the functions are still what ``azpar_magic.run`` and ``azpar_magic.jobs`` name.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import azpar_magic

PUBLIC = ["run", "map", "starmap", "storage", "jobs", "attach", "collect", "logs", "cancel", "rerun", "delete",
          "Job", "JobSnapshot", "AsCompleted", "JobSummary", "AzparError", "IterationError", "RemoteException",
          "InfrastructureError", "TaskTimeoutError", "EnvironmentMismatchError", "JobCancelled", "JobLost",
          "load_ipython_extension", "unload_ipython_extension"]

_CHECK = r"""
import importlib, pkgutil, sys
sys.path.insert(0, sys.argv[1])
import azpar_magic
skip = ("azpar_magic.__main__",)
for info in pkgutil.walk_packages(azpar_magic.__path__, "azpar_magic."):
    if info.name not in skip:
        importlib.import_module(info.name)
import inspect
print(inspect.isfunction(azpar_magic.run), inspect.isfunction(azpar_magic.jobs),
      azpar_magic.run.__module__, azpar_magic.jobs.__module__)
"""


def test_every_public_name_is_exported():
    assert set(PUBLIC) <= set(azpar_magic.__all__)
    for name in azpar_magic.__all__:
        assert getattr(azpar_magic, name) is not None, name


def test_run_and_jobs_stay_the_functions_after_every_module_is_imported():
    root = str(Path(azpar_magic.__file__).parents[1])
    out = subprocess.run([sys.executable, "-c", _CHECK, root], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "azpar_magic.api", "azpar_magic.api"]


def test_the_subpackages_are_reachable_with_from_imports():
    from azpar_magic.jobs import job as job_module
    from azpar_magic.run import engine

    assert engine.Engine and job_module.Job is azpar_magic.Job


# Exceptions that never leave the module raising them: the worker's (it imports nothing of the package,
# and its failures travel as records, not as exceptions) and the Azure doctor's signal to retry a check.
_INTERNAL = {"azpar_magic.backends.azure.doctor.Throttled"}


def test_every_exception_the_package_raises_lives_in_errors_with_its_builtin_base():
    import importlib
    import inspect
    import pkgutil

    import azpar_magic.errors

    strays = []
    for info in pkgutil.walk_packages(azpar_magic.__path__, "azpar_magic."):
        if info.name in ("azpar_magic.__main__", "azpar_magic.worker", "azpar_magic.errors"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name
                    and not name.startswith("_") and f"{info.name}.{name}" not in _INTERNAL):
                strays.append(f"{info.name}.{name}")
    assert strays == []
    bases = {"CellError": ValueError, "SubmitError": ValueError, "ConfigError": ValueError, "DataError": ValueError,
             "CaptureError": ValueError, "CombineError": ValueError, "StorageError": ValueError,
             "DebugError": ValueError, "StoreError": RuntimeError, "TransferError": RuntimeError,
             "AzureServiceError": RuntimeError, "InstallError": RuntimeError, "TaskTimeoutError": TimeoutError,
             "AzureExtraMissing": ImportError}
    for name, base in bases.items():
        assert issubclass(getattr(azpar_magic.errors, name), base), name
