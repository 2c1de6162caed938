"""Azure Batch backend (DESIGN section 5): the only place that imports ``azure.*``.

Modules: ``auth`` (credentials), ``storage`` (containers, uploads, SAS), ``pool`` (pool
definition and management), ``autoscale`` (named formulas), ``commands`` (node command
lines), ``submission`` (adding tasks), ``run`` (one job from staging to results),
``backend`` (the engine's protocol).
"""

from ...errors import AzureExtraMissing

try:  # every way into this backend comes through here, so a missing SDK is said once, the same way
    import azure.batch  # noqa: F401
    import azure.identity  # noqa: F401
    import azure.storage.blob  # noqa: F401
except ImportError as exc:
    raise AzureExtraMissing(
        f"Azure profiles, az:// storage and the doctor's Azure checks need the Azure SDKs, which this environment "
        f"lacks ({exc}): pip install 'azpar-magic[azure]' into the kernel's environment, then restart the kernel. "
        "The local pool needs none of them."
    ) from None

from .backend import AzureBackend  # noqa: E402 (after the check above)

__all__ = ["AzureBackend"]
