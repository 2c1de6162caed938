"""The differential corpus on the Azure backend: every body, run by ``%%azpar`` on the test
Batch service with Azurite, gives what the sequential loop gives, one task per iteration
and with several iterations per task."""

from __future__ import annotations

import pytest

from .azure_support import azure_profile
from .test_differential import CASES, check_case, clean_shell  # noqa: F401  (clean_shell is a fixture)

pytestmark = pytest.mark.azure


@pytest.fixture(scope="module")
def azure(batch_service, azurite, tmp_path_factory):
    with azure_profile(tmp_path_factory.mktemp("azure-config"), batch_service, azurite,
                       pool_id="azpar-differential") as name:
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
