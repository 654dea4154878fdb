"""Joins what the catalog knows about a model with where a deployment serves it.

The result, one `Provenance` per deployment, is computed once at start-up: it is what policies
judge, what response headers report, and what `hedge doctor` audits.
"""

from __future__ import annotations

from hedge.catalog import Catalog
from hedge.config import HedgeConfig
from hedge.policy import Provenance


def provenance_of(name: str, config: HedgeConfig, catalog: Catalog) -> Provenance:
    dep = config.deployments[name]
    model = catalog.models.get(dep.model) if dep.model else None
    licence = catalog.licence_of(model) if model else None
    return Provenance(
        deployment=name,
        model=dep.model,
        model_version=dep.model_version,
        origin=model.origin.value if model else None,
        licence=licence.id if licence else None,
        osi_approved=licence.osi_approved if licence else None,
        commercial_use=licence.commercial_use if licence else None,
        open_weights=model.open_weights.value if model else None,
        hosting=dep.hosting,
        # An embedded model runs inside hedge: whoever operates hedge operates it.
        operator=dep.operator or ("self" if dep.kind.startswith("embedded") else None),
        operator_jurisdiction=dep.operator_jurisdiction,
        price_input=dep.prices.input,
        price_output=dep.prices.output,
        serves=model.kind if model else None,
    )


def all_provenance(config: HedgeConfig, catalog: Catalog) -> dict[str, Provenance]:
    return {name: provenance_of(name, config, catalog) for name in config.deployments}
