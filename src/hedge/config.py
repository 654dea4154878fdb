"""hedge.yaml -> strict models -> frozen Settings.

The only module that reads files named by the user for configuration and the only one that reads
the environment. Every problem is reported at start-up with the file, the key path, the line and
what to do about it; unknown keys, wrong types and dangling references are all refused.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hedge.backends.quirks import provider_names, quirks_for
from hedge.cache import CacheSettings
from hedge.catalog import COUNTRY_CODES, Catalog, load_catalog
from hedge.compaction import CompactionSettings
from hedge.errors import ConfigError
from hedge.policy import Policy, Rules
from hedge.validators import Validator

Hosting = Literal["self-hosted", "hosted"]
DEFAULT_CONFIG_NAME = "hedge.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Prices(_Strict):
    """USD per one million tokens."""

    input: Annotated[float, Field(ge=0)] = 0.0
    output: Annotated[float, Field(ge=0)] = 0.0
    cached_input: Annotated[float, Field(ge=0)] | None = None


class Timeouts(_Strict):
    """Seconds. `first_token` bounds the wait for the response head or first streamed event,
    `idle` the gap between two streamed events, `total` the whole attempt."""

    connect: Annotated[float, Field(gt=0)] = 5.0
    first_token: Annotated[float, Field(gt=0)] = 60.0
    idle: Annotated[float, Field(gt=0)] = 30.0
    total: Annotated[float, Field(gt=0)] = 600.0


class SamplingDefaults(_Strict):
    """Used when the client leaves a field out, so a small local model is not run at the
    OpenAI default temperature of 1.0 unless someone asks for it."""

    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None


class BreakerSettings(_Strict):
    """Circuit breaker: after `failures` consecutive failed calls the deployment is skipped for
    `cooldown_s`, then one probe request decides whether it closes again."""

    failures: Annotated[int, Field(ge=1)] = 5
    cooldown_s: Annotated[float, Field(gt=0)] = 30.0


class _DeploymentBase(_Strict):
    model: str | None = Field(default=None, description="catalog model id")
    breaker: BreakerSettings = BreakerSettings()
    context_window: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="tokens; default: the catalog's figure (or n_ctx for embedded models)",
    )
    model_version: str | None = Field(
        default=None, description="the served build, for policies that pin versions"
    )
    hosting: Hosting
    operator: str | None = Field(default=None, description="who runs the servers")
    operator_jurisdiction: str | None = Field(
        default=None, description="ISO 3166-1 alpha-2 country of the operator"
    )
    region: str | None = None
    prices: Prices = Prices()
    defaults: SamplingDefaults = SamplingDefaults()
    description: str | None = None


class EmbeddedDeployment(_DeploymentBase):
    kind: Literal["embedded"]
    hosting: Hosting = "self-hosted"
    bundled: Literal["smollm2-135m-instruct", "gemma-3-270m"] | None = None
    gguf_path: str | None = None
    n_ctx: Annotated[int, Field(ge=128)] = 2048
    n_threads: Annotated[int, Field(ge=1)] | None = None
    chat_format: str | None = Field(
        default=None, description="llama.cpp chat format; default: the GGUF's own template"
    )
    max_queue: Annotated[int, Field(ge=1)] = 64

    @field_validator("gguf_path")
    @classmethod
    def _absolute_or_relative(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("gguf_path must not be empty")
        return v

    def model_post_init(self, _: Any) -> None:
        if (self.bundled is None) == (self.gguf_path is None):
            raise ValueError("set exactly one of 'bundled' or 'gguf_path'")


class EmbeddedEmbeddingsDeployment(_DeploymentBase):
    """A sentence-transformers embedding model in-process (pip install 'hedge[embeddings]').

    Concurrent requests are merged into one encode call of at most `max_batch` texts, which
    waits at most `max_wait_ms` for company, on the deployment's own thread."""

    kind: Literal["embedded_embeddings"]
    hosting: Hosting = "self-hosted"
    bundled: Literal["all-minilm-l6-v2"] | None = None
    model_path: str | None = Field(
        default=None, description="a local sentence-transformers model folder"
    )
    max_batch: Annotated[int, Field(ge=1, le=4096)] = 64
    max_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 5.0
    max_queue: Annotated[int, Field(ge=1)] = Field(
        default=4096, description="texts waiting; past it a request is refused with a 503"
    )

    @field_validator("model_path")
    @classmethod
    def _not_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("model_path must not be empty")
        return v

    def model_post_init(self, _: Any) -> None:
        if (self.bundled is None) == (self.model_path is None):
            raise ValueError("set exactly one of 'bundled' or 'model_path'")


class _HttpDeployment(_DeploymentBase):
    """A deployment reached over HTTP: only configuration may name the URL it calls."""

    base_url: str
    upstream_model: str
    timeouts: Timeouts = Timeouts()

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return v.rstrip("/")


class OpenAICompatDeployment(_HttpDeployment):
    kind: Literal["openai_compat"]
    api_key_env: str | None = None
    provider: str = "generic"
    quirks: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)


class AnthropicDeployment(_HttpDeployment):
    kind: Literal["anthropic"]
    hosting: Hosting = "hosted"
    base_url: str = "https://api.anthropic.com"
    api_key_env: str = "ANTHROPIC_API_KEY"
    anthropic_version: str = "2023-06-01"
    default_max_tokens: Annotated[int, Field(ge=1)] = 4096


class ReplayDeployment(_DeploymentBase):
    """Answers from a recorded multi-model data set (hedge replay): the recorded model's
    response to the same prompt, with the recorded token counts."""

    kind: Literal["replay"]
    hosting: Hosting = "hosted"
    recording: str = Field(description="outcomes.jsonl of a recorded data set")
    recorded_model: str


Deployment = Annotated[
    EmbeddedDeployment
    | EmbeddedEmbeddingsDeployment
    | OpenAICompatDeployment
    | AnthropicDeployment
    | ReplayDeployment,
    Field(discriminator="kind"),
]
DEPLOYMENT_KINDS = ("embedded", "embedded_embeddings", "openai_compat", "anthropic", "replay")


Reasoning = Literal["none", "low", "medium", "high"] | Annotated[int, Field(ge=0)]


class StageParams(_Strict):
    """Per-stage sampling overrides: a cheap draft can be short and cold, a validator long."""

    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None


class Stage(_Strict):
    """One cascade stage: one deployment (with the route's fail-over over the list), or, with
    an agreement validator, every listed deployment answering in parallel as voters."""

    deployments: Annotated[list[str], Field(min_length=1)]
    reasoning: Reasoning | None = None
    params: StageParams = StageParams()
    validators: list[Validator] = Field(default_factory=list)


class Cascade(_Strict):
    stages: Annotated[list[Stage], Field(min_length=1)]


class RetrySettings(_Strict):
    attempts_per_deployment: Annotated[int, Field(ge=1, le=10)] = 2
    backoff_initial_s: Annotated[float, Field(ge=0)] = 0.1
    backoff_max_s: Annotated[float, Field(ge=0)] = 2.0
    retry_after_cap_s: Annotated[float, Field(ge=0)] = 5.0


class Route(_Strict):
    deployments: list[str] = Field(default_factory=list)
    cascade: Cascade | None = None
    reasoning: Reasoning | None = None
    cache: CacheSettings = CacheSettings()
    compaction: CompactionSettings = CompactionSettings()
    policies: list[str] = Field(default_factory=list)
    strategy: Literal["fallback", "balance"] = "fallback"
    weights: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    retry: RetrySettings = RetrySettings()
    max_attempts: Annotated[int, Field(ge=1, le=50)] = 6
    deadline_s: Annotated[float, Field(gt=0)] = 300.0
    stream_head_chunks: Annotated[int, Field(ge=0, le=1000)] = 4
    stream_resume: bool = False
    hedge_after_ms: Annotated[float, Field(gt=0)] | None = None

    description: str | None = None
    accept_single_point_of_failure: bool = Field(
        default=False, description="hedge doctor reports the concentration but does not fail"
    )

    @model_validator(mode="before")
    @classmethod
    def _deployments_of_cascade(cls, data: Any) -> Any:
        # A cascade route's deployments are its stages' and its judges' (judges see the
        # prompt too), in stage order: policies, the doctor and /v1/models then see a cascade
        # like any other route.
        if isinstance(data, dict) and isinstance(data.get("cascade"), dict):
            if data.get("deployments"):
                raise ValueError(
                    "a route has either 'deployments' or a 'cascade' (whose stages name "
                    "their deployments), not both"
                )
            stages = data["cascade"].get("stages")
            if isinstance(stages, list):
                names: list[str] = []
                for st in (st for st in stages if isinstance(st, dict)):
                    names += [d for d in st.get("deployments") or () if isinstance(d, str)]
                    names += [
                        v["deployment"]
                        for v in st.get("validators") or ()
                        if isinstance(v, dict) and isinstance(v.get("deployment"), str)
                    ]
                data = {**data, "deployments": list(dict.fromkeys(names))}
        elif isinstance(data, dict) and not data.get("deployments"):
            raise ValueError("a route needs 'deployments' (a non-empty list) or a 'cascade'")
        return data


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    max_header_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=32 * 1024, description="request line and headers together; past it, 431"
    )
    max_headers: Annotated[int, Field(ge=8)] = 100
    header_timeout_s: Annotated[float, Field(gt=0, le=300)] = Field(
        default=10.0, description="time for a request head to arrive; past it, 408 and close"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = Field(
        default="json", description="stderr lines as JSON objects (for log shippers) or text"
    )
    request_log: bool = Field(
        default=True, description="one log line per finished request (metadata only)"
    )
    tracing: Literal["off", "otlp", "console"] = Field(
        default="off",
        description="OpenTelemetry spans per request and attempt (needs hedge[otel]); otlp "
        "reads the standard OTEL_EXPORTER_OTLP_* variables",
    )
    data_dir: str = Field(
        default="~/.cache/hedge",
        description="where hedge keeps assembled model files",
        validate_default=True,  # so the default is expanded too, not taken as a relative path
    )
    admin_key_env: str | None = Field(
        default=None,
        description="env var holding the admin key; unset: admin endpoints answer loopback only",
    )

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, v: str) -> str:
        return str(Path(v).expanduser())


class LedgerSettings(_Strict):
    """Where attempts and outcomes are recorded, off the hot path in batches."""

    backend: Literal["sqlite", "postgres", "none"] = "sqlite"
    path: str = Field(default="~/.cache/hedge/ledger.db", validate_default=True)
    url_env: str = Field(default="HEDGE_LEDGER_URL", description="PostgreSQL DSN variable")
    flush_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 500

    @field_validator("path")
    @classmethod
    def _expand(cls, v: str) -> str:
        return str(Path(v).expanduser())


class KeySettings(_Strict):
    """API keys (hedge keys create): where they are kept and how soon a change is seen."""

    path: str | None = Field(
        default=None, description="SQLite file; default: keys.db beside the ledger's file"
    )
    refresh_s: Annotated[float, Field(gt=0, le=60)] = Field(
        default=2.0, description="a created or revoked key takes effect within this long"
    )

    @field_validator("path")
    @classmethod
    def _expand(cls, v: str | None) -> str | None:
        return None if v is None else str(Path(v).expanduser())


class LimitSettings(_Strict):
    """Where per-key rate limits and budget spend are counted. `memory`: rate limits per
    process, spend in the key store's SQLite file; `redis`: both shared by every process."""

    backend: Literal["memory", "redis"] = "memory"
    url_env: str = Field(default="HEDGE_LIMITS_URL", description="Redis URL variable")
    prefix: str = "hedge:limits:"
    default_completion_tokens: Annotated[int, Field(ge=1)] = Field(
        default=4096,
        description="completion tokens assumed for a budget reservation without max_tokens",
    )


class SharedStateSettings(_Strict):
    """`shared_state:` in hedge.yaml. `none`: each process keeps its own breakers and
    revocations; `redis`: every process pointed at the same Redis shares them."""

    backend: Literal["none", "redis"] = "none"
    url_env: str = Field(default="HEDGE_STATE_URL", description="Redis URL variable")
    prefix: str = "hedge:state:"
    sync_interval_s: Annotated[float, Field(gt=0, le=30)] = Field(
        default=0.5, description="how often peers' breaker openings and revocations are read"
    )


class HedgeConfig(_Strict):
    server: ServerSettings = ServerSettings()
    ledger: LedgerSettings = LedgerSettings()
    shared_state: SharedStateSettings = SharedStateSettings()
    keys: KeySettings = KeySettings()
    limits: LimitSettings = LimitSettings()
    models: list[dict[str, Any]] = Field(
        default_factory=list, description="catalog records added to the shipped catalog"
    )
    policies: dict[str, Policy] = Field(default_factory=dict)
    deployments: dict[str, Deployment]
    routes: dict[str, Route]


@dataclass(frozen=True)
class Settings:
    """What the running gateway is built from: the validated config, the catalog it refers to,
    and resolved secrets."""

    config: HedgeConfig
    source: str
    catalog: Catalog
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    ledger_dsn: str | None = field(default=None, repr=False)
    state_url: str | None = field(default=None, repr=False)  # shared_state: redis
    cache_urls: dict[str, str] = field(default_factory=dict, repr=False)  # per redis route
    warnings: tuple[str, ...] = ()
    limits_url: str | None = field(default=None, repr=False)

    def secret_for(self, deployment: str) -> str | None:
        return self.secrets.get(deployment)

    @property
    def keys_path(self) -> str:
        """The API key store's file: configured, else keys.db beside the ledger's file."""
        path = self.config.keys.path
        return path or str(Path(self.config.ledger.path).parent / "keys.db")


def default_config_text() -> str:
    return resources.files("hedge").joinpath("default.yaml").read_text(encoding="utf-8")


def find_config(explicit: str | None) -> str | None:
    """The config path to use: --config, then $HEDGE_CONFIG, then ./hedge.yaml, else None
    (the built-in default)."""
    if explicit:
        return explicit
    env = os.environ.get("HEDGE_CONFIG")
    if env:
        return env
    return DEFAULT_CONFIG_NAME if Path(DEFAULT_CONFIG_NAME).is_file() else None


def load(path: str | None, environ: dict[str, str] | None = None) -> Settings:
    """Read, validate and resolve a config file (or the built-in default when path is None)."""
    if path is None:
        return parse(default_config_text(), "<built-in default config>", environ)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file. Fix: pass an existing file to --config."
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read as UTF-8 text ({e}).") from None
    return parse(text, path, environ)


def parse(text: str, source: str, environ: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ) if environ is None else environ
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{source}{where}: not valid YAML: {e.problem}.") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping with 'deployments' and 'routes'."
        )
    try:
        cfg = HedgeConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e, source, node)) from None
    problems = _dangling_references(cfg)
    if problems:
        raise ConfigError(
            _join(source, [(path, msg, yaml_line(node, path)) for path, msg in problems])
        )
    catalog = load_catalog(cfg.models, user_file=source)
    problems = _catalog_references(cfg, catalog)
    if problems:
        raise ConfigError(
            _join(source, [(path, msg, yaml_line(node, path)) for path, msg in problems])
        )
    secrets, warnings = _resolve_secrets(cfg, env)
    dsn = env.get(cfg.ledger.url_env) if cfg.ledger.backend == "postgres" else None
    if cfg.ledger.backend == "postgres" and not dsn:
        raise ConfigError(
            f"{source}: ledger.backend is postgres but ${cfg.ledger.url_env} is not set. "
            "Fix: export it with a PostgreSQL DSN, or use backend: sqlite."
        )
    limits_url = env.get(cfg.limits.url_env) if cfg.limits.backend == "redis" else None
    if cfg.limits.backend == "redis" and not limits_url:
        raise ConfigError(
            f"{source}: limits.backend is redis but ${cfg.limits.url_env} is not set. Fix: "
            "export it with a Redis URL such as redis://127.0.0.1:6379/0, or use backend: memory."
        )
    state_url = env.get(cfg.shared_state.url_env) if cfg.shared_state.backend == "redis" else None
    if cfg.shared_state.backend == "redis" and not state_url:
        raise ConfigError(
            f"{source}: shared_state.backend is redis but ${cfg.shared_state.url_env} is not "
            "set. Fix: export it with a Redis URL such as redis://127.0.0.1:6379/0, or use "
            "backend: none."
        )
    return Settings(
        config=cfg,
        source=source,
        state_url=state_url,
        catalog=catalog,
        secrets=secrets,
        ledger_dsn=dsn,
        cache_urls=_cache_urls(cfg, env, source),
        warnings=tuple(warnings),
        limits_url=limits_url,
    )


Path_ = tuple[str | int, ...]
Problem = tuple[Path_, str]


def _dangling_references(cfg: HedgeConfig) -> list[Problem]:
    problems: list[Problem] = []
    known = sorted(cfg.deployments)
    for name, route in cfg.routes.items():
        seen: set[str] = set()
        for i, dep in enumerate(route.deployments):
            path: tuple[str | int, ...] = ("routes", name, "deployments", i)
            if dep not in cfg.deployments:
                problems.append(
                    (
                        path,
                        f"unknown deployment '{dep}' (known: {', '.join(known) or 'none'}). "
                        "Fix: define it under 'deployments' or remove it from the route.",
                    )
                )
            elif dep in seen:
                problems.append((path, f"deployment '{dep}' is listed twice in this route."))
            seen.add(dep)
        for si, stage in enumerate(route.cascade.stages if route.cascade else ()):
            for vi, check in enumerate(stage.validators):
                judge = getattr(check, "deployment", None)
                if judge is not None and judge not in cfg.deployments:
                    problems.append(
                        (
                            (
                                "routes",
                                name,
                                "cascade",
                                "stages",
                                si,
                                "validators",
                                vi,
                                "deployment",
                            ),
                            f"unknown deployment '{judge}' (known: {', '.join(known)}).",
                        )
                    )
        embedder = route.cache.semantic.embedder
        if embedder is not None and embedder not in cfg.deployments:
            problems.append(
                (
                    ("routes", name, "cache", "semantic", "embedder"),
                    f"unknown deployment '{embedder}' (known: {', '.join(known)}). Fix: "
                    "name a deployment of an embedding model.",
                )
            )
        for dep in route.weights:
            if dep not in route.deployments:
                problems.append(
                    (
                        ("routes", name, "weights", dep),
                        f"'{dep}' is not one of this route's deployments. Fix: weight only "
                        "deployments listed under 'deployments'.",
                    )
                )
    if not cfg.routes:
        problems.append((("routes",), "no routes: define at least one route."))
    return problems


def _cache_urls(cfg: HedgeConfig, env: dict[str, str], source: str) -> dict[str, str]:
    urls: dict[str, str] = {}
    for name, route in cfg.routes.items():
        if route.cache.enabled and route.cache.backend == "redis":
            url = env.get(route.cache.url_env)
            if not url:
                raise ConfigError(
                    f"{source}: routes.{name}.cache uses redis but ${route.cache.url_env} is "
                    "not set. Fix: export it with a Redis URL such as redis://127.0.0.1:6379/0, "
                    "or use backend: memory or sqlite."
                )
            urls[name] = url
    return urls


def _catalog_references(cfg: HedgeConfig, catalog: Catalog) -> list[Problem]:
    """Everything in the config that names a catalog model, a licence, a country or a policy
    must name one that exists: a typo in a compliance rule must not pass silently."""
    problems: list[Problem] = []

    def known(path: Path_, value: str, table: Collection[str], what: str, fix: str) -> None:
        if value not in table:
            hint = ", ".join(sorted(table)) if len(table) <= 40 else f"{len(table)} known"
            problems.append((path, f"unknown {what} '{value}' ({hint}). Fix: {fix}."))

    model_fix = "use a catalog id (hedge models) or add the model under 'models:'"
    providers = provider_names()
    for name, dep in cfg.deployments.items():
        if isinstance(dep, OpenAICompatDeployment):
            known(
                ("deployments", name, "provider"),
                dep.provider,
                providers,
                "provider",
                "use a provider from providers.yaml, or 'generic'",
            )
            try:
                quirks_for(dep.provider, dep.quirks)
            except ValueError as e:
                problems.append((("deployments", name, "quirks"), f"{e}."))
        if dep.model is not None:
            known(("deployments", name, "model"), dep.model, catalog.models, "model", model_fix)
        if dep.operator_jurisdiction is not None:
            known(
                ("deployments", name, "operator_jurisdiction"),
                dep.operator_jurisdiction,
                COUNTRY_CODES,
                "country",
                "use an ISO 3166-1 alpha-2 code such as DE or US",
            )
    for pname, policy in cfg.policies.items():
        scopes: list[tuple[Path_, Rules]] = [(("policies", pname), policy)]
        scopes += [
            (("policies", pname, "data_classes", c), r) for c, r in policy.data_classes.items()
        ]
        for base, rules in scopes:
            for key, table, what, fix in (
                ("licences", catalog.licences, "licence", "use a licence id from the catalog"),
                ("origins", COUNTRY_CODES, "country", "use an ISO 3166-1 alpha-2 code"),
                (
                    "operator_jurisdictions",
                    COUNTRY_CODES,
                    "country",
                    "use an ISO 3166-1 alpha-2 code",
                ),
            ):
                rule = getattr(rules, key)
                if rule is None:
                    continue
                for side in ("allow", "deny"):
                    for i, value in enumerate(getattr(rule, side) or ()):
                        known((*base, key, side, i), value, table, what, fix)
            for model_id in rules.pins:
                known((*base, "pins", model_id), model_id, catalog.models, "model", model_fix)
    for rname, route in cfg.routes.items():
        for i, pname in enumerate(route.policies):
            known(
                ("routes", rname, "policies", i),
                pname,
                cfg.policies,
                "policy",
                "define it under 'policies' or remove it from the route",
            )
    return problems


ADMIN_SECRET = "<admin>"


def _resolve_secrets(cfg: HedgeConfig, env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    secrets: dict[str, str] = {}
    warnings: list[str] = []
    admin_var = cfg.server.admin_key_env
    if admin_var is not None:
        if env.get(admin_var):
            secrets[ADMIN_SECRET] = env[admin_var]
        else:
            warnings.append(
                f"server.admin_key_env names {admin_var}, which is not set: "
                "admin endpoints are closed to everyone until it is."
            )
    for name, dep in cfg.deployments.items():
        var = getattr(dep, "api_key_env", None)
        if var is None:
            continue
        value = env.get(var)
        if value:
            secrets[name] = value
        else:
            warnings.append(
                f"deployment '{name}': environment variable {var} is not set; "
                "the deployment stays out of every plan until it is."
            )
    return secrets, warnings


_HINTS = {
    "missing": "add it",
    "extra_forbidden": "remove it or check its spelling",
    "union_tag_invalid": f"use one of: {', '.join(DEPLOYMENT_KINDS)}",
    "union_tag_not_found": f"add 'kind' ({', '.join(DEPLOYMENT_KINDS)})",
}


_FIELD_HINTS = {
    "hosting": "add 'hosting: self-hosted' (your own servers) or 'hosting: hosted' (a vendor API)",
    "upstream_model": "add the model name the upstream server expects",
    "base_url": "add the server's OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1",
}


def _describe(err: ValidationError, source: str, node: yaml.Node | None) -> str:
    items = []
    for e in err.errors():
        loc = _clean_loc(e["loc"])
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "missing" and loc and loc[-1] in _FIELD_HINTS:
            msg = f"Field required. Fix: {_FIELD_HINTS[str(loc[-1])]}"
            items.append((loc, msg + ".", yaml_line(node, loc)))
            continue
        if e["type"] == "extra_forbidden":
            msg = f"unknown key '{loc[-1]}'"
        elif e["type"] in ("int_type", "float_type", "string_type", "bool_type"):
            msg = f"{msg}, got {type(e['input']).__name__} {e['input']!r}"
        hint = _HINTS.get(e["type"])
        items.append((loc, msg + (f". Fix: {hint}." if hint else "."), yaml_line(node, loc)))
    return _join(source, items)


def _clean_loc(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    # A discriminated union puts the tag into the path (deployments.x.embedded.n_ctx);
    # people wrote deployments.x.n_ctx, so show that.
    if len(loc) > 2 and loc[0] == "deployments" and loc[2] in DEPLOYMENT_KINDS:
        return loc[:2] + loc[3:]
    return loc


def _join(source: str, items: list[tuple[tuple[str | int, ...], str, int | None]]) -> str:
    lines = [f"{source}: {len(items)} problem{'s' if len(items) != 1 else ''}:"]
    for loc, msg, line in items:
        where = f" (line {line})" if line else ""
        lines.append(f"  - {format_path(loc)}{where}: {msg}")
    return "\n".join(lines)


def format_path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def yaml_line(
    node: yaml.Node | None, loc: tuple[str | int, ...], first_line: int = 1
) -> int | None:
    """The line of the deepest YAML node along loc, to point a person at the spot.
    `first_line`: the file's line number of the document's first line (a YAML header that
    follows a '---' line starts on the file's second)."""
    found = None
    for part in loc:
        if node is None:
            break
        found = node.start_mark.line + first_line
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
            if node is None:
                # a missing or unknown key: point at the key itself if it is there
                return found
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
        else:
            break
    if node is not None:
        found = node.start_mark.line + first_line
    return found
