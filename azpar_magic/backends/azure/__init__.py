"""Azure Batch backend (DESIGN section 5): the only place that imports ``azure.*``.

Modules: ``auth`` (credentials), ``storage`` (containers, uploads, SAS), ``pool`` (pool
definition and management), ``autoscale`` (named formulas), ``commands`` (node command
lines), ``submission`` (adding tasks), ``run`` (one job from staging to results),
``backend`` (the engine's protocol).
"""

from .backend import AzureBackend

__all__ = ["AzureBackend"]
