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


def test_an_sdk_refusal_becomes_the_packages_azure_service_error_with_the_services_words():
    """The backend's boundary (backends/azure/errors.translate): the same message as before,
    now an AzureServiceError (still a RuntimeError) carrying the code, status and details."""
    from types import SimpleNamespace

    from azure.core.exceptions import HttpResponseError

    from azpar_magic.backends.azure import errors
    from azpar_magic.errors import AzureServiceError, ServiceError

    exc = HttpResponseError(message="Operation returned an invalid status 'Bad Request'")
    exc.status_code = 400
    exc.error = SimpleNamespace(
        code="InvalidPropertyValue",
        message="The value provided for one of the properties in the request body is invalid.\nRequestId:1",
        details=[SimpleNamespace(code="PropertyName", message="virtualMachineConfiguration.nodeAgentSKUId"),
                 SimpleNamespace(code="PropertyValue", message="batch.node.ubuntu 20.04"),
                 SimpleNamespace(code="Reason", message="The node agent SKU does not match the image")])
    err = errors.translate(exc, "the pool 'p' could not be reached or created")
    assert isinstance(err, AzureServiceError) and isinstance(err, ServiceError) and isinstance(err, RuntimeError)
    assert str(err) == ("the pool 'p' could not be reached or created: InvalidPropertyValue: The value provided for "
                        "one of the properties in the request body is invalid. (PropertyName: "
                        "virtualMachineConfiguration.nodeAgentSKUId; "
                        "Reason: The node agent SKU does not match the image)")
    assert (err.code, err.status, err.property_name, err.reason) == (
        "InvalidPropertyValue", 400, "virtualMachineConfiguration.nodeAgentSKUId",
        "The node agent SKU does not match the image")
    said = errors.translate(exc, message="this identity may not resize the pool 'p'")
    assert str(said) == "this identity may not resize the pool 'p'" and said.code == "InvalidPropertyValue"
    unanswered = errors.translate(ConnectionError("connection refused\nmore"), "the job's storage could not be reached")
    assert str(unanswered) == "the job's storage could not be reached: connection refused"
    assert unanswered.code is None and unanswered.status is None
