"""Sovereignty policy: which deployments a request may use, and why each other one may not.

Pure and deterministic. A deployment is judged by its `Provenance` (catalog facts about its
model joined with where and by whom it is served); a policy is a set of rules; a request is
judged by every policy that applies to it (its route's, its key's, and any it adds itself), so
adding policies can only narrow what is admitted, never widen it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CommercialUse = Literal["yes", "no", "conditions"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ListRule(_Strict):
    """Allow-list and/or deny-list; a value must be in `allow` (when given) and not in `deny`."""

    allow: list[str] | None = None
    deny: list[str] = Field(default_factory=list)


class MaxPrice(_Strict):
    """USD per one million tokens; a deployment with an unknown price is refused."""

    input: float | None = Field(default=None, ge=0)
    output: float | None = Field(default=None, ge=0)


class Rules(_Strict):
    licences: ListRule | None = None
    osi_approved: Literal[True] | None = None
    commercial_use: Literal["yes", "yes-or-conditions"] | None = None
    open_weights: Literal[True] | None = None
    origins: ListRule | None = None
    operator_jurisdictions: ListRule | None = None
    hosting: Literal["self-hosted", "hosted"] | None = None
    max_price: MaxPrice | None = None
    pins: dict[str, str] = Field(
        default_factory=dict, description="catalog model id -> the only version allowed"
    )


class Policy(Rules):
    description: str | None = None
    data_classes: dict[str, Rules] = Field(
        default_factory=dict,
        description="extra rules that apply when a request declares this data class",
    )


@dataclass(frozen=True, slots=True)
class Provenance:
    """What the policy may know about one deployment."""

    deployment: str
    model: str | None
    model_version: str | None
    origin: str | None
    licence: str | None
    osi_approved: bool | None
    commercial_use: CommercialUse | None
    open_weights: bool | None
    hosting: Literal["self-hosted", "hosted"]
    operator: str | None
    operator_jurisdiction: str | None
    price_input: float
    price_output: float
    # What the catalog says the model answers: chat completions or embeddings (None: a model
    # the catalog does not know, which may answer either).
    serves: Literal["chat", "embedding"] | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    deployment: str
    policy: str
    rule: str
    reason: str

    def __str__(self) -> str:
        return f"{self.deployment}: refused by policy '{self.policy}' ({self.rule}): {self.reason}"


@dataclass(frozen=True, slots=True)
class Plan:
    route: str
    admitted: tuple[str, ...]
    refusals: tuple[Refusal, ...]
    policies: tuple[str, ...]


def _list_rule(value: str | None, rule: ListRule, what: str) -> str | None:
    if value is None:
        # Unknown facts fail closed: a rule about origin cannot admit an unknown origin.
        return f"{what} is unknown, so it cannot be shown to satisfy the rule"
    if rule.allow is not None and value not in rule.allow:
        return f"{what} {value} is not in the allow-list ({', '.join(rule.allow)})"
    if value in rule.deny:
        return f"{what} {value} is denied"
    return None


def violations(p: Provenance, rules: Rules) -> Iterable[tuple[str, str]]:
    """(rule, reason) for every rule the deployment breaks. Pure."""
    if rules.licences is not None and (why := _list_rule(p.licence, rules.licences, "licence")):
        yield "licences", why
    if rules.osi_approved and p.osi_approved is not True:
        state = "unknown" if p.osi_approved is None else "not OSI-approved"
        yield "osi_approved", f"licence {p.licence or '?'} is {state}"
    if rules.commercial_use is not None:
        ok = ("yes",) if rules.commercial_use == "yes" else ("yes", "conditions")
        if p.commercial_use not in ok:
            allowed = p.commercial_use or "unknown"
            yield "commercial_use", f"licence {p.licence or '?'} allows commercial use: {allowed}"
    if rules.open_weights and p.open_weights is not True:
        yield (
            "open_weights",
            "the model's weights are not open"
            if p.open_weights is False
            else ("whether the model's weights are open is unknown"),
        )
    if rules.origins is not None and (why := _list_rule(p.origin, rules.origins, "model origin")):
        yield "origins", why
    if rules.operator_jurisdictions is not None and (
        why := _list_rule(
            p.operator_jurisdiction, rules.operator_jurisdictions, "operator jurisdiction"
        )
    ):
        yield "operator_jurisdictions", why
    if rules.hosting is not None and p.hosting != rules.hosting:
        yield "hosting", f"the deployment is {p.hosting}, the rule requires {rules.hosting}"
    if rules.max_price is not None:
        cap = rules.max_price
        if cap.input is not None and p.price_input > cap.input:
            yield "max_price.input", f"input costs ${p.price_input:g}/1M, above ${cap.input:g}/1M"
        if cap.output is not None and p.price_output > cap.output:
            yield (
                "max_price.output",
                f"output costs ${p.price_output:g}/1M, above ${cap.output:g}/1M",
            )
    if p.model is not None and p.model in rules.pins and p.model_version != rules.pins[p.model]:
        yield (
            "pins",
            f"model {p.model} is pinned to version {rules.pins[p.model]}, "
            f"the deployment serves {p.model_version or 'an unversioned build'}",
        )


def judge(
    p: Provenance, policies: Sequence[tuple[str, Policy]], data_class: str | None
) -> list[Refusal]:
    """Every refusal of one deployment under the given policies and data class."""
    out: list[Refusal] = []
    for name, policy in policies:
        for rule, reason in violations(p, policy):
            out.append(Refusal(p.deployment, name, rule, reason))
        if data_class is not None and data_class in policy.data_classes:
            for rule, reason in violations(p, policy.data_classes[data_class]):
                out.append(Refusal(p.deployment, name, f"data_classes.{data_class}.{rule}", reason))
    return out


def plan(
    route: str,
    deployments: Sequence[Provenance],
    policies: Sequence[tuple[str, Policy]],
    data_class: str | None = None,
) -> Plan:
    """The route's deployments that every applicable policy admits, in the route's order,
    and a refusal with its rule and reason for each one refused."""
    admitted: list[str] = []
    refusals: list[Refusal] = []
    for p in deployments:
        refused = judge(p, policies, data_class)
        if refused:
            refusals.extend(refused)
        else:
            admitted.append(p.deployment)
    return Plan(route, tuple(admitted), tuple(refusals), tuple(name for name, _ in policies))
