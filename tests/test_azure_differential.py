"""The differential corpus on the Azure backend: every body, run by ``%%azpar`` on the test
Batch service with Azurite, gives what the sequential loop gives, one task per iteration
and with several iterations per task.

The test service's nodes are bare (a clean Python with pip, as ``python:X.Y-slim``) and the profile
lists NO packages: the numpy and pandas cases run because the backend installs the kernel's versions
of what each cell uses (issue 15; job preparation, cached per node by the set's hash). The wheel
folder (``pip_options``) stands in for the index: it holds numpy, pandas and their dependencies."""

from __future__ import annotations

import pytest

from tests.wheels import node_pip_options

from .azure_support import azure_profile
from .test_differential import CASES, check_case, clean_shell  # noqa: F401  (clean_shell is a fixture)

pytestmark = pytest.mark.azure


@pytest.fixture(scope="module")
def azure(batch_service, azurite, tmp_path_factory):
    with azure_profile(tmp_path_factory.mktemp("azure-config"), batch_service, azurite,
                       pool_id="azpar-differential", pip_options=node_pip_options("numpy", "pandas")) as name:
        yield name


def _params():
    for case in CASES:
        marks = [pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else []
        yield pytest.param(case, id=case.id, marks=marks)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("chunking", ["--chunk-size 1", "--chunk-size 3"])
@pytest.mark.parametrize("case", list(_params()))
def test_azure_equals_sequential(case, chunking, azure, ip, run_cell, tmp_path, clean_shell):  # noqa: F811
    check_case(case, ip, run_cell, tmp_path, extra_options=chunking, one_task_for_files=False)
