"""Policy evaluation over a table of deployments and rules, refusal reasons included."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from hedge.policy import Plan, Policy, Provenance, plan

DEEPSEEK_HOSTED = Provenance(
    deployment="deepseek-api",
    model="deepseek-v4-pro",
    model_version="2026-04",
    origin="CN",
    licence="MIT",
    osi_approved=True,
    commercial_use="yes",
    open_weights=True,
    hosting="hosted",
    operator="DeepSeek",
    operator_jurisdiction="CN",
    price_input=0.27,
    price_output=0.87,
)
QWEN_SELF = Provenance(
    deployment="qwen-vllm",
    model="qwen3-6-35b-a3b",
    model_version="2026-04-16",
    origin="CN",
    licence="Apache-2.0",
    osi_approved=True,
    commercial_use="yes",
    open_weights=True,
    hosting="self-hosted",
    operator="us",
    operator_jurisdiction="DE",
    price_input=0.0,
    price_output=0.0,
)
MISTRAL_HOSTED = Provenance(
    deployment="mistral-api",
    model="mistral-small-4",
    model_version=None,
    origin="FR",
    licence="open-unspecified",
    osi_approved=None,
    commercial_use=None,
    open_weights=True,
    hosting="hosted",
    operator="Mistral AI",
    operator_jurisdiction="FR",
    price_input=0.1,
    price_output=0.3,
)
LLAMA_SELF = Provenance(
    deployment="llama-local",
    model="llama-3-1-8b",
    model_version="3.1",
    origin="US",
    licence="llama-community",
    osi_approved=False,
    commercial_use="conditions",
    open_weights=True,
    hosting="self-hosted",
    operator="us",
    operator_jurisdiction="US",
    price_input=0.0,
    price_output=0.0,
)
GEMMA_EMBEDDED = Provenance(
    deployment="gemma-local",
    model="gemma-3-270m",
    model_version=None,
    origin="US",
    licence="gemma-terms",
    osi_approved=False,
    commercial_use="conditions",
    open_weights=True,
    hosting="self-hosted",
    operator=None,
    operator_jurisdiction=None,
    price_input=0.0,
    price_output=0.0,
)
CLAUDE = Provenance(
    deployment="claude",
    model="claude-opus-4-6",
    model_version=None,
    origin="US",
    licence="proprietary",
    osi_approved=False,
    commercial_use="yes",
    open_weights=False,
    hosting="hosted",
    operator="Anthropic",
    operator_jurisdiction="US",
    price_input=15.0,
    price_output=75.0,
)
UNKNOWN = Provenance(
    deployment="mystery",
    model=None,
    model_version=None,
    origin=None,
    licence=None,
    osi_approved=None,
    commercial_use=None,
    open_weights=None,
    hosting="hosted",
    operator=None,
    operator_jurisdiction=None,
    price_input=0.0,
    price_output=0.0,
)
ALL = [DEEPSEEK_HOSTED, QWEN_SELF, MISTRAL_HOSTED, LLAMA_SELF, GEMMA_EMBEDDED, CLAUDE, UNKNOWN]
NAMES = [p.deployment for p in ALL]


def pol(**rules: Any) -> Policy:
    return Policy.model_validate(rules)


def run(rules: dict[str, Any], data_class: str | None = None) -> Plan:
    return plan("r", ALL, [("p", pol(**rules))], data_class)


# (rules, data class, admitted deployments in route order, {refused deployment: rule})
CASES: list[tuple[str, dict[str, Any], str | None, list[str], dict[str, str]]] = [
    ("no rules admit all", {}, None, NAMES, {}),
    (
        "deny CN origin",
        {"origins": {"deny": ["CN"]}},
        None,
        ["mistral-api", "llama-local", "gemma-local", "claude"],
        {"deepseek-api": "origins", "qwen-vllm": "origins", "mystery": "origins"},
    ),
    (
        "allow only FR origin",
        {"origins": {"allow": ["FR"]}},
        None,
        ["mistral-api"],
        {"claude": "origins"},
    ),
    (
        "allow US and FR",
        {"origins": {"allow": ["US", "FR"]}},
        None,
        ["mistral-api", "llama-local", "gemma-local", "claude"],
        {"deepseek-api": "origins"},
    ),
    (
        "allow MIT only",
        {"licences": {"allow": ["MIT"]}},
        None,
        ["deepseek-api"],
        {"qwen-vllm": "licences", "mystery": "licences"},
    ),
    (
        "deny proprietary",
        {"licences": {"deny": ["proprietary"]}},
        None,
        ["deepseek-api", "qwen-vllm", "mistral-api", "llama-local", "gemma-local"],
        {"claude": "licences", "mystery": "licences"},
    ),
    (
        "OSI only",
        {"osi_approved": True},
        None,
        ["deepseek-api", "qwen-vllm"],
        {"mistral-api": "osi_approved", "llama-local": "osi_approved", "claude": "osi_approved"},
    ),
    (
        "commercial yes",
        {"commercial_use": "yes"},
        None,
        ["deepseek-api", "qwen-vllm", "claude"],
        {"llama-local": "commercial_use", "mistral-api": "commercial_use"},
    ),
    (
        "commercial yes-or-conditions",
        {"commercial_use": "yes-or-conditions"},
        None,
        ["deepseek-api", "qwen-vllm", "llama-local", "gemma-local", "claude"],
        {"mistral-api": "commercial_use", "mystery": "commercial_use"},
    ),
    (
        "open weights",
        {"open_weights": True},
        None,
        ["deepseek-api", "qwen-vllm", "mistral-api", "llama-local", "gemma-local"],
        {"claude": "open_weights", "mystery": "open_weights"},
    ),
    (
        "self-hosted",
        {"hosting": "self-hosted"},
        None,
        ["qwen-vllm", "llama-local", "gemma-local"],
        {"deepseek-api": "hosting", "claude": "hosting"},
    ),
    (
        "hosted only",
        {"hosting": "hosted"},
        None,
        ["deepseek-api", "mistral-api", "claude", "mystery"],
        {"qwen-vllm": "hosting"},
    ),
    (
        "operator jurisdiction EU",
        {"operator_jurisdictions": {"allow": ["DE", "FR"]}},
        None,
        ["qwen-vllm", "mistral-api"],
        {"deepseek-api": "operator_jurisdictions", "gemma-local": "operator_jurisdictions"},
    ),
    (
        "operator not CN",
        {"operator_jurisdictions": {"deny": ["CN"]}},
        None,
        ["qwen-vllm", "mistral-api", "llama-local", "claude"],
        {"deepseek-api": "operator_jurisdictions"},
    ),
    (
        "CN model but not CN operator",
        {"operator_jurisdictions": {"deny": ["CN"]}, "origins": {"allow": ["CN"]}},
        None,
        ["qwen-vllm"],
        {"deepseek-api": "operator_jurisdictions", "claude": "origins"},
    ),
    (
        "max output price 1",
        {"max_price": {"output": 1.0}},
        None,
        ["deepseek-api", "qwen-vllm", "mistral-api", "llama-local", "gemma-local", "mystery"],
        {"claude": "max_price.output"},
    ),
    (
        "max input price 0.2",
        {"max_price": {"input": 0.2}},
        None,
        ["qwen-vllm", "mistral-api", "llama-local", "gemma-local", "mystery"],
        {"deepseek-api": "max_price.input", "claude": "max_price.input"},
    ),
    (
        "free only",
        {"max_price": {"input": 0, "output": 0}},
        None,
        ["qwen-vllm", "llama-local", "gemma-local", "mystery"],
        {"mistral-api": "max_price.input", "deepseek-api": "max_price.output"},
    ),
    ("pin qwen to its version", {"pins": {"qwen3-6-35b-a3b": "2026-04-16"}}, None, NAMES, {}),
    (
        "pin qwen to another version",
        {"pins": {"qwen3-6-35b-a3b": "2026-05-01"}},
        None,
        [n for n in NAMES if n != "qwen-vllm"],
        {"qwen-vllm": "pins"},
    ),
    (
        "pin unversioned model",
        {"pins": {"mistral-small-4": "2603"}},
        None,
        [n for n in NAMES if n != "mistral-api"],
        {"mistral-api": "pins"},
    ),
    (
        "pii class unused without header",
        {"data_classes": {"pii": {"hosting": "self-hosted"}}},
        None,
        NAMES,
        {},
    ),
    (
        "pii stays self-hosted",
        {"data_classes": {"pii": {"hosting": "self-hosted"}}},
        "pii",
        ["qwen-vllm", "llama-local", "gemma-local"],
        {"deepseek-api": "data_classes.pii.hosting"},
    ),
    (
        "unrelated data class has no rules",
        {"data_classes": {"pii": {"hosting": "self-hosted"}}},
        "public",
        NAMES,
        {},
    ),
    (
        "pii plus base origin rule",
        {"origins": {"deny": ["CN"]}, "data_classes": {"pii": {"hosting": "self-hosted"}}},
        "pii",
        ["llama-local", "gemma-local"],
        {"qwen-vllm": "origins", "claude": "data_classes.pii.hosting"},
    ),
    (
        "secret: EU operator and self-hosted",
        {
            "data_classes": {
                "secret": {"hosting": "self-hosted", "operator_jurisdictions": {"allow": ["DE"]}}
            }
        },
        "secret",
        ["qwen-vllm"],
        {"llama-local": "data_classes.secret.operator_jurisdictions"},
    ),
    (
        "permissive product stack",
        {"osi_approved": True, "commercial_use": "yes", "open_weights": True},
        None,
        ["deepseek-api", "qwen-vllm"],
        {"gemma-local": "osi_approved"},
    ),
    (
        "sovereign EU",
        {"origins": {"deny": ["CN", "US"]}, "open_weights": True},
        None,
        ["mistral-api"],
        {"llama-local": "origins"},
    ),
    (
        "US only closed allowed",
        {"origins": {"allow": ["US"]}, "hosting": "hosted"},
        None,
        ["claude"],
        {"llama-local": "hosting", "deepseek-api": "origins"},
    ),
    ("nothing admitted", {"origins": {"allow": ["JP"]}}, None, [], {n: "origins" for n in NAMES}),
    (
        "deny and allow together",
        {"licences": {"allow": ["MIT", "Apache-2.0"], "deny": ["MIT"]}},
        None,
        ["qwen-vllm"],
        {"deepseek-api": "licences"},
    ),
    (
        "unknown facts fail closed on origin rule",
        {"origins": {"deny": []}},
        None,
        [n for n in NAMES if n != "mystery"],
        {"mystery": "origins"},
    ),
]


@pytest.mark.parametrize(
    ("rules", "data_class", "admitted", "refused"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_policy_table(
    rules: dict[str, Any], data_class: str | None, admitted: list[str], refused: dict[str, str]
) -> None:
    result = run(rules, data_class)
    assert list(result.admitted) == admitted
    by_deployment: dict[str, list[str]] = {}
    for r in result.refusals:
        by_deployment.setdefault(r.deployment, []).append(r.rule)
        assert r.policy == "p" and r.reason
    assert set(by_deployment) == set(NAMES) - set(admitted)
    for deployment, rule in refused.items():
        assert rule in by_deployment[deployment], (deployment, by_deployment)


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30


def test_refusal_reasons_are_readable() -> None:
    result = run({"origins": {"deny": ["CN"]}, "max_price": {"output": 1}})
    text = {str(r) for r in result.refusals}
    assert "deepseek-api: refused by policy 'p' (origins): model origin CN is denied" in text
    assert (
        "claude: refused by policy 'p' (max_price.output): output costs $75/1M, above $1/1M" in text
    )
    assert (
        "mystery: refused by policy 'p' (origins): model origin is unknown, "
        "so it cannot be shown to satisfy the rule" in text
    )


def test_policies_compose_by_intersection_and_order_is_kept() -> None:
    eu = ("eu", pol(origins={"deny": ["CN"]}))
    local = ("local", pol(hosting="self-hosted"))
    both = plan("r", ALL, [eu, local])
    assert both.admitted == ("llama-local", "gemma-local")
    assert both.policies == ("eu", "local")
    # Each policy names its own refusals.
    assert {(r.deployment, r.policy) for r in both.refusals} >= {
        ("qwen-vllm", "eu"),
        ("claude", "local"),
        ("deepseek-api", "eu"),
        ("deepseek-api", "local"),
    }


def test_adding_a_policy_never_widens() -> None:
    base = [("a", pol(open_weights=True))]
    for extra in (pol(origins={"deny": ["US"]}), pol(hosting="hosted"), pol()):
        narrowed = plan("r", ALL, [*base, ("b", extra)])
        assert set(narrowed.admitted) <= set(plan("r", ALL, base).admitted)


def test_evaluation_is_deterministic_and_pure() -> None:
    rules = {"origins": {"deny": ["CN"]}, "data_classes": {"pii": {"hosting": "self-hosted"}}}
    first = run(rules, "pii")
    assert all(run(rules, "pii") == first for _ in range(5))
    assert replace(DEEPSEEK_HOSTED) == DEEPSEEK_HOSTED  # inputs untouched


def test_unknown_policy_keys_are_refused() -> None:
    with pytest.raises(Exception, match="origin"):
        Policy.model_validate({"origin": {"deny": ["CN"]}})
