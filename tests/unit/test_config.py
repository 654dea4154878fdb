"""hedge.yaml validation: every problem names the file, the key path and the line."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from hedge import config
from hedge.config import EmbeddedDeployment, OpenAICompatDeployment
from hedge.errors import ConfigError

GOOD = """\
server:
  port: 9000
deployments:
  local:
    kind: embedded
    bundled: smollm2-135m-instruct
  deepseek:
    kind: openai_compat
    base_url: https://api.deepseek.com/v1/
    upstream_model: deepseek-chat
    provider: deepseek
    api_key_env: DEEPSEEK_API_KEY
    hosting: hosted
    region: cn
    prices: {input: 0.27, output: 1.1, cached_input: 0.07}
routes:
  chat:
    deployments: [deepseek, local]
"""


def parse(text: str, env: dict[str, str] | None = None) -> config.Settings:
    return config.parse(text, "hedge.yaml", env or {})


def problem(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse(text)
    return str(e.value)


def test_good_config_parses_into_typed_frozen_settings() -> None:
    s = parse(GOOD, {"DEEPSEEK_API_KEY": "sk-test"})
    assert s.config.server.port == 9000
    local = s.config.deployments["local"]
    remote = s.config.deployments["deepseek"]
    assert isinstance(local, EmbeddedDeployment) and local.hosting == "self-hosted"
    assert isinstance(remote, OpenAICompatDeployment)
    assert remote.base_url == "https://api.deepseek.com/v1"  # trailing slash dropped
    assert remote.prices.cached_input == 0.07
    assert s.config.routes["chat"].deployments == ["deepseek", "local"]
    assert s.secret_for("deepseek") == "sk-test"
    assert s.warnings == ()
    with pytest.raises(ValidationError, match="frozen"):
        s.config.server.port = 1  # type: ignore[misc]


def test_missing_credential_is_a_warning_not_a_secret() -> None:
    s = parse(GOOD)
    assert s.secret_for("deepseek") is None
    assert len(s.warnings) == 1
    assert "DEEPSEEK_API_KEY" in s.warnings[0] and "deepseek" in s.warnings[0]


def test_secrets_never_show_in_repr() -> None:
    s = parse(GOOD, {"DEEPSEEK_API_KEY": "sk-very-secret"})
    assert "sk-very-secret" not in repr(s)


def test_unknown_key_names_path_and_line() -> None:
    msg = problem(GOOD.replace("    region: cn\n", "    region: cn\n    regoin: eu\n"))
    assert msg.startswith("hedge.yaml: 1 problem:")
    assert "deployments.deepseek.regoin (line 15): unknown key 'regoin'" in msg
    assert "check its spelling" in msg


def test_wrong_type_names_path_and_value() -> None:
    msg = problem(GOOD.replace("port: 9000", "port: nine"))
    assert "server.port (line 2)" in msg
    assert "'nine'" in msg


def test_wrong_type_inside_deployment_hides_the_union_tag() -> None:
    msg = problem(GOOD.replace("input: 0.27", "input: cheap"))
    assert "deployments.deepseek.prices.input" in msg
    assert "openai_compat" not in msg.split("prices")[0]


def test_dangling_route_reference_is_refused() -> None:
    msg = problem(GOOD.replace("[deepseek, local]", "[deepseek, mistral]"))
    assert "routes.chat.deployments[1] (line 18)" in msg
    assert "unknown deployment 'mistral'" in msg
    assert "known: deepseek, local" in msg


def test_duplicate_deployment_in_route_is_refused() -> None:
    msg = problem(GOOD.replace("[deepseek, local]", "[local, local]"))
    assert "listed twice" in msg


def test_unknown_kind_lists_the_kinds() -> None:
    msg = problem(GOOD.replace("kind: embedded", "kind: vllm"))
    assert "deployments.local" in msg
    assert "embedded, embedded_embeddings, openai_compat, anthropic" in msg


def test_missing_required_field() -> None:
    msg = problem(GOOD.replace("    upstream_model: deepseek-chat\n", ""))
    assert "deployments.deepseek.upstream_model" in msg
    assert "Fix: add the model name" in msg


def test_bad_url_scheme() -> None:
    msg = problem(GOOD.replace("https://api.deepseek.com/v1/", "api.deepseek.com"))
    assert "deployments.deepseek.base_url" in msg and "http://" in msg


def test_embedded_needs_exactly_one_model_source() -> None:
    msg = problem(GOOD.replace("bundled: smollm2-135m-instruct", "n_ctx: 4096"))
    assert "deployments.local" in msg and "exactly one of 'bundled' or 'gguf_path'" in msg


def test_several_problems_are_all_reported() -> None:
    msg = problem(GOOD.replace("port: 9000", "port: -1").replace("kind: embedded", "kind: x"))
    assert msg.startswith("hedge.yaml: 2 problems:")


def test_yaml_syntax_error_has_line_and_column() -> None:
    msg = problem("deployments:\n  a: [1, 2\nroutes: {}\n")
    assert msg.startswith("hedge.yaml (line")
    assert "not valid YAML" in msg


def test_top_level_must_be_a_mapping() -> None:
    assert "top level must be a mapping" in problem("- a\n- b\n")


def test_no_routes_is_refused() -> None:
    msg = problem("deployments: {}\nroutes: {}\n")
    assert "no routes" in msg


def test_missing_file_and_default_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config.load(str(tmp_path / "nope.yaml"))
    default = config.load(None)
    assert default.source == "<built-in default config>"
    assert set(default.config.routes) == {"smollm2", "gemma-3-270m", "default", "minilm"}


def test_data_dir_expands_home() -> None:
    s = parse(GOOD.replace("port: 9000", "port: 9000\n  data_dir: ~/hedge-data"))
    assert not s.config.server.data_dir.startswith("~")
    assert s.config.server.data_dir.endswith("hedge-data")


def test_unknown_provider_and_bad_quirks_are_refused_with_their_path() -> None:
    msg = problem(GOOD.replace("provider: deepseek", "provider: deepsek"))
    assert "deployments.deepseek.provider" in msg and "unknown provider 'deepsek'" in msg
    msg = problem(
        GOOD.replace("provider: deepseek", "provider: vllm\n    quirks: {suports_n: true}")
    )
    assert "deployments.deepseek.quirks" in msg and "unknown quirk(s): suports_n" in msg
    msg = problem(
        GOOD.replace("provider: deepseek", "provider: vllm\n    quirks: {supports_n: 'yes'}")
    )
    assert "supports_n: Input should be a valid boolean" in msg


def test_catalog_references_are_checked() -> None:
    bad = GOOD.replace("kind: embedded\n", "kind: embedded\n    model: smollm-9000\n")
    assert "deployments.local.model" in problem(bad) and "unknown model 'smollm-9000'" in problem(
        bad
    )
    policies = "policies:\n  p:\n    origins: {deny: [China]}\n    pins: {nope-1b: '1'}\n"
    msg = problem(
        policies
        + GOOD.replace(
            "    deployments: [deepseek, local]",
            "    policies: [p, q]\n    deployments: [deepseek, local]",
        )
    )
    assert "policies.p.origins.deny[0]" in msg and "unknown country 'China'" in msg
    assert "policies.p.pins.nope-1b" in msg
    assert "routes.chat.policies[1]" in msg and "unknown policy 'q'" in msg


CASCADE = GOOD.replace(
    "  chat:\n    deployments: [deepseek, local]\n",
    "  chat:\n    cascade:\n      stages:\n        - deployments: [local]\n"
    "          reasoning: low\n"
    "          validators: [{kind: judge, deployment: deepseek, rubric: r}]\n"
    "        - deployments: [local]\n",
)


def test_a_cascade_route_lists_its_stages_and_judges_as_deployments() -> None:
    route = parse(CASCADE).config.routes["chat"]
    assert route.cascade is not None and len(route.cascade.stages) == 2
    assert route.deployments == ["local", "deepseek"]  # deepseek only judges
    assert route.cascade.stages[0].reasoning == "low"


def test_cascade_routes_are_checked() -> None:
    both = CASCADE.replace(
        "  chat:\n    cascade:", "  chat:\n    deployments: [local]\n    cascade:"
    )
    assert "either 'deployments' or a 'cascade'" in problem(both)
    neither = GOOD.replace("    deployments: [deepseek, local]\n", "    description: empty\n")
    assert "needs 'deployments'" in problem(neither)
    ghost = CASCADE.replace("deployment: deepseek, rubric", "deployment: ghost, rubric")
    assert "unknown deployment 'ghost'" in problem(ghost)
    bad_kind = CASCADE.replace("kind: judge", "kind: vibes")
    assert "routes.chat.cascade.stages[0].validators[0]" in problem(bad_kind)


def test_default_paths_are_expanded_never_relative_to_the_working_directory() -> None:
    from hedge.cache import CacheSettings

    s = config.load(None)
    for path in (s.config.server.data_dir, s.config.ledger.path, CacheSettings().path):
        assert Path(path).is_absolute() and "~" not in path, path
