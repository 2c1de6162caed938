"""What a cell says when Batch refuses a request (issue 14): the service's code and message
alone ("The value provided for one of the properties in the request body is invalid.") do not
say which property or why, so the property name and Batch's reason reach the cell too. End to
end: a profile whose node agent does not match its image, on the test Batch service."""

from __future__ import annotations

import pytest

from .azure_support import azure_profile

pytestmark = [pytest.mark.azure, pytest.mark.timeout(120)]


def test_a_refused_pool_names_the_property_and_batchs_reason(batch, azurite, tmp_path, monkeypatch, ip, run_cell):
    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, node_agent_sku="batch.node.ubuntu 20.04"):
        run = run_cell("%%azpar -q -o got for x in range(2):\nx")
    assert not run.success
    text = str(run.error)
    assert "InvalidPropertyValue" in text, text
    assert "PropertyName: virtualMachineConfiguration.nodeAgentSKUId" in text, text
    assert "Reason: The node agent SKU does not match the image" in text, text
    assert "batch.node.ubuntu 20.04" not in text.split("(PropertyName")[1].split("; Reason")[0], text
    with batch.cond:
        assert not batch.pools and not batch.jobs
