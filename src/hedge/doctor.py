"""Vendor-concentration audit: what breaks if one operator or one jurisdiction is cut off.

Pure: it reads the config and each deployment's provenance, simulates every cut-off against the
same policy evaluation that serves requests, and reports the routes it leaves with nothing.
Three kinds of cut-off are simulated, because each has happened to someone:
- an operator disappears (outage, bankruptcy, revoked account);
- an operator jurisdiction is cut off (sanctions, a government order on hosted services);
- models of one origin are banned (a rule against models developed in jurisdiction X).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hedge import policy
from hedge.config import HedgeConfig
from hedge.policy import Provenance

CutKind = str  # "operator" | "operator jurisdiction" | "model origin"


@dataclass(frozen=True)
class CutOff:
    kind: CutKind
    name: str
    deployments: tuple[str, ...]
    routes_left_empty: tuple[str, ...]


@dataclass(frozen=True)
class RouteAudit:
    route: str
    admitted: tuple[str, ...]
    operators: tuple[str, ...]
    jurisdictions: tuple[str, ...]
    origins: tuple[str, ...]
    single_points: tuple[str, ...]
    accepted: bool

    @property
    def at_risk(self) -> bool:
        return bool(self.single_points) and not self.accepted


@dataclass(frozen=True)
class Audit:
    routes: tuple[RouteAudit, ...]
    cutoffs: tuple[CutOff, ...] = field(default=())

    @property
    def failing(self) -> tuple[RouteAudit, ...]:
        return tuple(r for r in self.routes if r.at_risk)


def _operator(p: Provenance) -> str:
    return p.operator or f"unknown operator of {p.deployment}"


def _jurisdiction(p: Provenance) -> str:
    return p.operator_jurisdiction or f"unknown jurisdiction of {p.deployment}"


def _origin(p: Provenance) -> str:
    return p.origin or f"unknown origin of {p.deployment}"


_KINDS: tuple[tuple[CutKind, Callable[[Provenance], str]], ...] = (
    ("operator", _operator),
    ("operator jurisdiction", _jurisdiction),
    ("model origin", _origin),
)


def _admitted(
    config: HedgeConfig, provenance: dict[str, Provenance], route: str, removed: frozenset[str]
) -> tuple[str, ...]:
    r = config.routes[route]
    plan = policy.plan(
        route,
        [provenance[d] for d in r.deployments if d not in removed],
        [(n, config.policies[n]) for n in r.policies],
    )
    return plan.admitted


def audit(config: HedgeConfig, provenance: dict[str, Provenance]) -> Audit:
    baseline = {name: _admitted(config, provenance, name, frozenset()) for name in config.routes}
    cutoffs: list[CutOff] = []
    for kind, key in _KINDS:
        groups: dict[str, list[str]] = {}
        for name, p in provenance.items():
            groups.setdefault(key(p), []).append(name)
        for value, members in sorted(groups.items()):
            removed = frozenset(members)
            empty = tuple(
                r
                for r in config.routes
                if baseline[r] and not _admitted(config, provenance, r, removed)
            )
            cutoffs.append(CutOff(kind, value, tuple(sorted(members)), empty))
    routes = []
    for name, admitted in baseline.items():
        ps = [provenance[d] for d in admitted]
        single = [f"{c.kind} {c.name}" for c in cutoffs if name in c.routes_left_empty]
        if not admitted:
            single = ["its own policies admit no deployment"]
        routes.append(
            RouteAudit(
                route=name,
                admitted=admitted,
                operators=tuple(sorted({_operator(p) for p in ps})),
                jurisdictions=tuple(sorted({_jurisdiction(p) for p in ps})),
                origins=tuple(sorted({_origin(p) for p in ps})),
                single_points=tuple(single),
                accepted=config.routes[name].accept_single_point_of_failure,
            )
        )
    return Audit(tuple(routes), tuple(cutoffs))


def render(result: Audit) -> str:
    lines = ["Routes:"]
    for r in result.routes:
        status = "OK" if not r.single_points else ("ACCEPTED" if r.accepted else "AT RISK")
        lines.append(f"  {r.route} [{status}]")
        lines.append(f"    deployments admitted: {', '.join(r.admitted) or 'none'}")
        lines.append(f"    operators ({len(r.operators)}): {', '.join(r.operators) or '-'}")
        lines.append(
            f"    operator jurisdictions ({len(r.jurisdictions)}): "
            f"{', '.join(r.jurisdictions) or '-'}"
        )
        lines.append(f"    model origins ({len(r.origins)}): {', '.join(r.origins) or '-'}")
        for point in r.single_points:
            lines.append(f"    single point of failure: {point}")
    lines.append("Cut-off simulation (routes left with no admitted deployment):")
    for c in result.cutoffs:
        broken = ", ".join(c.routes_left_empty) or "none"
        lines.append(f"  cut {c.kind} {c.name} ({', '.join(c.deployments)}): {broken}")
    failing = result.failing
    lines.append(
        f"{len(failing)} route(s) at risk: {', '.join(r.route for r in failing)}"
        if failing
        else "No route has an unaccepted single point of failure."
    )
    return "\n".join(lines)
