"""The concentration audit on configs built for the purpose."""

from __future__ import annotations

from hedge import config, doctor
from hedge.provenance import all_provenance

CONFIG = """\
policies:
  no-cn:
    origins: {deny: [CN]}
deployments:
  deepseek:
    kind: openai_compat
    model: deepseek-v4-pro
    base_url: https://api.deepseek.com/v1
    upstream_model: deepseek-chat
    hosting: hosted
    operator: DeepSeek
    operator_jurisdiction: CN
  kimi:
    kind: openai_compat
    model: kimi-k2.6
    base_url: https://api.moonshot.ai/v1
    upstream_model: kimi-k2.6
    hosting: hosted
    operator: Moonshot AI
    operator_jurisdiction: CN
  mistral:
    kind: openai_compat
    model: mistral-small-4
    base_url: https://api.mistral.ai/v1
    upstream_model: mistral-small-latest
    hosting: hosted
    operator: Mistral AI
    operator_jurisdiction: FR
  gemma:
    kind: embedded
    model: gemma-3-270m
    bundled: gemma-3-270m
    operator_jurisdiction: DE
routes:
  diverse:
    deployments: [deepseek, mistral, gemma]
  chinese-only:
    deployments: [deepseek, kimi]
  one-vendor:
    deployments: [mistral]
  one-vendor-accepted:
    deployments: [mistral]
    accept_single_point_of_failure: true
  filtered:
    policies: [no-cn]
    deployments: [deepseek, kimi, mistral]
"""


def run() -> doctor.Audit:
    s = config.parse(CONFIG, "hedge.yaml", {})
    return doctor.audit(s.config, all_provenance(s.config, s.catalog))


def by_route(result: doctor.Audit) -> dict[str, doctor.RouteAudit]:
    return {r.route: r for r in result.routes}


def test_diverse_route_survives_every_single_cut_off() -> None:
    r = by_route(run())["diverse"]
    assert r.operators == ("DeepSeek", "Mistral AI", "self")
    assert r.jurisdictions == ("CN", "DE", "FR")
    assert r.origins == ("CN", "FR", "US")
    assert r.single_points == () and not r.at_risk


def test_two_vendors_in_one_jurisdiction_is_a_single_point() -> None:
    r = by_route(run())["chinese-only"]
    assert len(r.operators) == 2
    assert r.single_points == ("operator jurisdiction CN", "model origin CN")
    assert r.at_risk


def test_one_vendor_routes_fail_unless_accepted() -> None:
    routes = by_route(run())
    assert routes["one-vendor"].at_risk
    accepted = routes["one-vendor-accepted"]
    assert accepted.single_points and accepted.accepted and not accepted.at_risk


def test_policies_are_applied_before_counting() -> None:
    # no-cn leaves only mistral: the two Chinese vendors do not count as redundancy.
    r = by_route(run())["filtered"]
    assert r.admitted == ("mistral",)
    assert "operator Mistral AI" in r.single_points


def test_cut_off_simulation_lists_the_broken_routes() -> None:
    cuts = {(c.kind, c.name): c for c in run().cutoffs}
    cn = cuts[("operator jurisdiction", "CN")]
    assert cn.deployments == ("deepseek", "kimi")
    assert cn.routes_left_empty == ("chinese-only",)
    fr = cuts[("operator", "Mistral AI")]
    assert set(fr.routes_left_empty) == {"one-vendor", "one-vendor-accepted", "filtered"}
    assert cuts[("model origin", "US")].routes_left_empty == ()


def test_render_names_the_risky_routes() -> None:
    text = doctor.render(run())
    assert "chinese-only [AT RISK]" in text and "diverse [OK]" in text
    assert "one-vendor-accepted [ACCEPTED]" in text
    assert text.splitlines()[-1] == "3 route(s) at risk: chinese-only, one-vendor, filtered"
