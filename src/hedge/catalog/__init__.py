"""The provenance catalog: models, licences and the sources every figure is cited from.

Owns the record types (`Model`, `Licence`, `Source`, the per-figure `Sourced` fact), loading the
shipped data in `hedge/catalog/data/*.yaml` merged with the models a user adds in hedge.yaml,
and pure queries over the result (`filter_models`, `to_row`).

The one rule the types enforce: a figure is either reported, and then carries the id of a known
source, or not reported, and then its value and source are both null. Nothing is estimated here;
`hedge.fit` does the arithmetic and labels its estimates as such.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Any, Generic, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hedge.errors import ConfigError

__all__ = [
    "COUNTRY_CODES",
    "Architecture",
    "Benchmark",
    "Catalog",
    "CatalogError",
    "CommercialUse",
    "Licence",
    "Model",
    "ModelKind",
    "Source",
    "Sourced",
    "active_params_b",
    "figures",
    "filter_models",
    "load_catalog",
    "to_row",
]

T = TypeVar("T")

CommercialUse = Literal["yes", "no", "conditions"]
Architecture = Literal["dense", "moe"]
ModelKind = Literal["chat", "embedding"]
Modality = Literal["text", "image", "audio", "video"]

# ISO 3166-1 alpha-2, officially assigned codes (from the Debian iso-codes list). "EU" is only
# exceptionally reserved there, and a lab's jurisdiction is a country, so it is not accepted.
COUNTRY_CODES: frozenset[str] = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR
    BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ
    EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW
    GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY
    KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV
    MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY
    QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG
    TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM
    ZW
    """.split()  # noqa: SIM905 - a packed table reads better than 249 quoted strings
)

_MODEL_ID = re.compile(r"^[a-z0-9]+(?:[-.][a-z0-9]+)*$")
_SOURCE_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_LICENCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]*$")
_ISO_DATE = re.compile(r"^\d{4}(?:-\d{2}(?:-\d{2})?)?$")

# Validation context keys: the ids a record may refer to. Absent when a record is built on its
# own (then only the shape is checked); `Catalog` checks every reference again as a whole.
_CTX_SOURCES = "source_ids"
_CTX_LICENCES = "licence_ids"


class CatalogError(ConfigError):
    """The catalog data (shipped or added in hedge.yaml) is wrong. The message names the file,
    the record id and the field."""


def _country(code: str) -> str:
    if not re.fullmatch(r"[A-Z]{2}", code):
        raise ValueError(
            f"origin '{code}' is not an ISO 3166-1 alpha-2 code: use two upper-case letters "
            "such as CN, US, FR"
        )
    if code not in COUNTRY_CODES:
        raise ValueError(f"origin '{code}' is not an assigned ISO 3166-1 alpha-2 country code")
    return code


def _iso_date(text: str) -> str:
    if not _ISO_DATE.fullmatch(text):
        raise ValueError(f"'{text}' is not an ISO date (YYYY, YYYY-MM or YYYY-MM-DD)")
    parts = [int(p) for p in text.split("-")]
    try:
        _dt.date(parts[0], parts[1] if len(parts) > 1 else 1, parts[2] if len(parts) > 2 else 1)
    except ValueError as e:
        raise ValueError(f"'{text}' is not a real date ({e})") from None
    return text


def _pattern(regex: re.Pattern[str], what: str) -> AfterValidator:
    def check(text: str) -> str:
        if not regex.fullmatch(text):
            raise ValueError(f"'{text}' is not a valid {what}")
        return text

    return AfterValidator(check)


CountryCode = Annotated[str, AfterValidator(_country)]
IsoDate = Annotated[str, AfterValidator(_iso_date)]
ModelId = Annotated[str, _pattern(_MODEL_ID, "model id (lower-case kebab-case, dots allowed)")]
SourceId = Annotated[str, _pattern(_SOURCE_ID, "source id (lower-case kebab-case)")]
LicenceId = Annotated[str, _pattern(_LICENCE_ID, "licence id (SPDX id or custom id)")]
PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
# YAML gives lists; the records keep tuples so a loaded catalog cannot be changed in place.
_Ids = Annotated[tuple[SourceId, ...], Field(strict=False)]


def _known_sources(info: ValidationInfo, ids: Iterable[str]) -> None:
    known = info.context.get(_CTX_SOURCES) if isinstance(info.context, dict) else None
    if known is None:
        return
    for sid in ids:
        if sid not in known:
            raise ValueError(f"unknown source '{sid}' (known: {', '.join(sorted(known))})")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Sourced(_Strict, Generic[T]):
    """One fact: a reported value and where it was reported, or null and null.

    `source` is the source cited for the figure; `also` lists further sources cited with it,
    used where landscape.md attributes a table row to several articles without saying which of
    them reported which figure.
    """

    value: T | None = None
    source: SourceId | None = None
    also: _Ids = ()

    @model_validator(mode="after")
    def _cited(self, info: ValidationInfo) -> Sourced[T]:
        if self.value is not None and self.source is None:
            raise ValueError(
                f"the figure {self.value!r} has no source: add 'source: <id>' naming a known "
                "source, or set value to null if no source reports it"
            )
        if self.value is None and (self.source is not None or self.also):
            raise ValueError(
                "a source is given for a null value: a fact that is not reported has value "
                "null and source null"
            )
        _known_sources(info, self.sources)
        return self

    @property
    def sources(self) -> tuple[str, ...]:
        return ((self.source,) if self.source else ()) + self.also

    @property
    def known(self) -> bool:
        return self.value is not None


class Source(_Strict):
    """A publication the catalog cites. `date` is as precise as known (YYYY, YYYY-MM, ...)."""

    id: SourceId
    title: str
    publisher: str | None = None
    author: str | None = None
    date: IsoDate | None = None
    url: str | None = None
    notes: str | None = None


class Licence(_Strict):
    """A licence. `osi_approved` and `commercial_use` are null when no cited source says;
    `source` is the source for both (required when either is known)."""

    id: LicenceId
    name: str
    osi_approved: bool | None = None
    commercial_use: CommercialUse | None = None
    source: SourceId | None = None
    also: _Ids = ()
    notes: str | None = None

    @model_validator(mode="after")
    def _cited(self, info: ValidationInfo) -> Licence:
        if (self.osi_approved is not None or self.commercial_use is not None) and not self.source:
            raise ValueError(
                "osi_approved / commercial_use are figures and need a source: add "
                "'source: <id>', or set them to null"
            )
        _known_sources(info, ((self.source,) if self.source else ()) + self.also)
        return self


class Benchmark(_Strict):
    """A reported figure about a model (a score, a price, a cost), always with its source."""

    name: str
    value: float
    unit: str
    source: SourceId
    also: _Ids = ()
    note: str | None = None

    @model_validator(mode="after")
    def _cited(self, info: ValidationInfo) -> Benchmark:
        _known_sources(info, (self.source, *self.also))
        return self


class Model(_Strict):
    """A catalog model with its provenance facts; every fact is `Sourced`."""

    id: ModelId
    name: str
    family: str
    kind: ModelKind = "chat"
    lab: Sourced[str] = Sourced()
    origin: Sourced[CountryCode] = Sourced()
    licence: Sourced[LicenceId] = Sourced()
    open_weights: Sourced[bool] = Sourced()
    params_total_b: Sourced[PositiveFloat] = Sourced()
    params_active_b: Sourced[PositiveFloat] = Sourced()
    architecture: Sourced[Architecture] = Sourced()
    context_window: Sourced[PositiveInt] = Sourced()
    # The size of an embedding model's output vectors (null for chat models).
    dimensions: Sourced[PositiveInt] = Sourced()
    release_date: Sourced[IsoDate] = Sourced()
    # Attention shape, used by `hedge.fit` for an exact KV-cache size when known.
    n_layers: Sourced[PositiveInt] = Sourced()
    n_kv_heads: Sourced[PositiveInt] = Sourced()
    head_dim: Sourced[PositiveInt] = Sourced()
    # What hedge routes to the model for; a description of use, not a provenance claim.
    modalities: Annotated[tuple[Modality, ...], Field(strict=False, min_length=1)] = ("text",)
    benchmarks: Annotated[tuple[Benchmark, ...], Field(strict=False)] = ()
    chat_template: str | None = None
    notes: str | None = None

    @field_validator("licence")
    @classmethod
    def _licence_known(cls, v: Sourced[str], info: ValidationInfo) -> Sourced[str]:
        known = info.context.get(_CTX_LICENCES) if isinstance(info.context, dict) else None
        if known is not None and v.value is not None and v.value not in known:
            raise ValueError(
                f"unknown licence '{v.value}' (known: {', '.join(sorted(known))}). Fix: use a "
                "known id, 'open-unspecified' when only 'open weights' is reported, or add the "
                "licence to the licence table"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Model:
        total, active = self.params_total_b.value, self.params_active_b.value
        if total is not None and active is not None and active > total:
            raise ValueError(
                f"params_active_b ({active:g}) is larger than params_total_b ({total:g})"
            )
        return self


def figures(model: Model) -> Iterator[tuple[str, Sourced[Any] | Benchmark]]:
    """Every fact of a model with its field name (benchmarks as `benchmarks[i]`)."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Sourced):
            yield name, value
    for i, bench in enumerate(model.benchmarks):
        yield f"benchmarks[{i}]", bench


def _cited_ids(fact: Sourced[Any] | Benchmark) -> tuple[str, ...]:
    return fact.sources if isinstance(fact, Sourced) else (fact.source, *fact.also)


class Catalog(_Strict):
    """Models, licences and sources by id. `versions` holds each data file's `version:`."""

    versions: dict[str, str]
    models: dict[str, Model]
    licences: dict[str, Licence]
    sources: dict[str, Source]

    @model_validator(mode="after")
    def _references(self) -> Catalog:
        problems: list[str] = []
        for table, records in (
            ("models", self.models),
            ("licences", self.licences),
            ("sources", self.sources),
        ):
            for key, rec in records.items():
                if key != rec.id:
                    problems.append(f"{table}: key '{key}' holds the record with id '{rec.id}'")
        for lic in self.licences.values():
            for sid in ((lic.source,) if lic.source else ()) + lic.also:
                if sid not in self.sources:
                    problems.append(f"licence '{lic.id}': source: unknown source '{sid}'")
        for model in self.models.values():
            for name, fact in figures(model):
                problems.extend(
                    f"model '{model.id}': {name}: unknown source '{sid}'"
                    for sid in _cited_ids(fact)
                    if sid not in self.sources
                )
            lic_id = model.licence.value
            if lic_id is not None and lic_id not in self.licences:
                problems.append(f"model '{model.id}': licence: unknown licence '{lic_id}'")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def model(self, model_id: str) -> Model:
        try:
            return self.models[model_id]
        except KeyError:
            raise KeyError(
                f"no model '{model_id}' in the catalog (known: {', '.join(sorted(self.models))})"
            ) from None

    def licence_of(self, model: Model) -> Licence | None:
        """The model's licence record, or None when its licence is not reported."""
        return None if model.licence.value is None else self.licences[model.licence.value]


# ---------------------------------------------------------------------------------------------
# Loading


_DATA_FILES = {"sources": "sources.yaml", "licences": "licences.yaml", "models": "models.yaml"}


@dataclass(frozen=True)
class _Shipped:
    path: str
    version: str
    records: list[Any]
    lines: list[int | None]


def _read_shipped(name: str) -> _Shipped:
    """A shipped data file: its version, its records and each record's line number."""
    path = f"hedge/catalog/data/{name}"
    text = resources.files("hedge.catalog").joinpath("data", name).read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise CatalogError(f"{path}: not valid YAML: {e}") from None
    key = name.removesuffix(".yaml")
    if not isinstance(raw, dict) or set(raw) != {"version", key}:
        raise CatalogError(f"{path}: the top level must hold exactly 'version' and '{key}'.")
    version = raw["version"]
    if not isinstance(version, str):
        raise CatalogError(f"{path}: version must be a quoted date string, e.g. '2026-06-01'.")
    try:
        _iso_date(version)
    except ValueError as e:
        raise CatalogError(f"{path}: version: {e}.") from None
    records = raw[key]
    if not isinstance(records, list):
        raise CatalogError(f"{path}: '{key}' must be a list of records.")
    lines: list[int | None] = [None] * len(records)
    if isinstance(root, yaml.MappingNode):
        for k, v in root.value:
            if k.value == key and isinstance(v, yaml.SequenceNode):
                lines = [item.start_mark.line + 1 for item in v.value]
    return _Shipped(path, version, records, lines)


def _record_label(kind: str, raw: Any, index: int) -> str:
    rid = raw.get("id") if isinstance(raw, dict) else None
    return f"{kind} '{rid}'" if isinstance(rid, str) else f"{kind} #{index + 1} (no id)"


def _field_path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-after[", "constrained-")) or part in (
            "str",
            "float",
            "int",
            "bool",
        ):
            continue  # pydantic's validator names, not field names
        else:
            out += f".{part}" if out else part
    return out or "(record)"


def _messages(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown field '{e['loc'][-1]}'"
        elif e["type"] == "missing" and e["loc"] and e["loc"][-1] == "source":
            msg = "a reported figure needs a source: add 'source: <id>' naming a known source"
        elif isinstance(e.get("input"), _dt.date):
            msg += "; write dates as quoted strings, e.g. '2026-04-20'"
        out.append((_field_path(e["loc"]), msg))
    return out


_R = TypeVar("_R", Source, Licence, Model)
_KIND = {Source: "source", Licence: "licence", Model: "model"}


@dataclass
class _Loader:
    """Validates tables record by record, collecting every problem as one readable line."""

    user_file: str
    problems: list[str] = field(default_factory=list)

    def table(
        self,
        cls: type[_R],
        shipped: _Shipped,
        additions: list[dict[str, Any]] | None,
        context: Mapping[str, frozenset[str]],
    ) -> dict[str, _R]:
        """The shipped records then the user's; a user record may not reuse a shipped id."""
        records: dict[str, _R] = {}
        self._parse(cls, shipped.records, shipped.path, shipped.lines, context, records)
        if additions:
            taken = dict.fromkeys(records, shipped.path)
            self._parse(cls, additions, self.user_file, [], context, records, taken)
        return records

    def _parse(
        self,
        cls: type[_R],
        raw_records: list[Any],
        file: str,
        lines: list[int | None],
        context: Mapping[str, frozenset[str]],
        into: dict[str, _R],
        taken: Mapping[str, str] | None = None,
    ) -> None:
        kind = _KIND[cls]
        for i, raw in enumerate(raw_records):
            label = _record_label(kind, raw, i)
            where = f"{file} (line {lines[i]})" if i < len(lines) and lines[i] else file
            if not isinstance(raw, dict):
                self.problems.append(f"{where}: {label}: a record must be a mapping of fields.")
                continue
            try:
                rec = cls.model_validate(raw, context=dict(context))
            except ValidationError as e:
                self.problems.extend(f"{where}: {label}: {f}: {m}." for f, m in _messages(e))
                continue
            if taken is not None and rec.id in taken:
                self.problems.append(
                    f"{where}: {label}: id: '{rec.id}' already exists in {taken[rec.id]}; "
                    "an addition cannot replace a shipped record. Fix: choose another id."
                )
            elif rec.id in into:
                self.problems.append(f"{where}: {label}: id: '{rec.id}' is defined twice.")
            else:
                into[rec.id] = rec


def load_catalog(
    user_models: list[dict[str, Any]] | None = None,
    *,
    user_sources: list[dict[str, Any]] | None = None,
    user_licences: list[dict[str, Any]] | None = None,
    user_file: str = "hedge.yaml",
) -> Catalog:
    """The shipped catalog plus the user's additions (from hedge.yaml).

    Additions may cite shipped and added sources and licences; an addition whose id already
    exists in the shipped data is refused. Every problem found is reported in one
    `CatalogError` whose lines name the file, the record and the field.
    """
    shipped = {table: _read_shipped(name) for table, name in _DATA_FILES.items()}
    loader = _Loader(user_file)
    sources = loader.table(Source, shipped["sources"], user_sources, {})
    ctx = {_CTX_SOURCES: frozenset(sources)}
    licences = loader.table(Licence, shipped["licences"], user_licences, ctx)
    ctx = {**ctx, _CTX_LICENCES: frozenset(licences)}
    models = loader.table(Model, shipped["models"], user_models, ctx)
    if loader.problems:
        n = len(loader.problems)
        raise CatalogError(
            f"the model catalog has {n} problem{'s' if n != 1 else ''}:\n"
            + "\n".join(f"  - {p}" for p in loader.problems)
        )
    versions = {table: entry.version for table, entry in shipped.items()}
    try:
        return Catalog(versions=versions, models=models, licences=licences, sources=sources)
    except ValidationError as e:  # a reference the per-record checks could not see
        raise CatalogError(
            "the model catalog is inconsistent: " + "; ".join(m for _, m in _messages(e))
        ) from None


# ---------------------------------------------------------------------------------------------
# Queries


def active_params_b(model: Model) -> float | None:
    """Parameters used per token, in billions: the reported active count, or the total for a
    model reported as dense (all its parameters are active by definition); else None."""
    if model.params_active_b.value is not None:
        return model.params_active_b.value
    if model.architecture.value == "dense":
        return model.params_total_b.value
    return None


def _one_of(wanted: str | Iterable[str]) -> frozenset[str]:
    return frozenset((wanted,) if isinstance(wanted, str) else wanted)


def filter_models(
    catalog: Catalog,
    *,
    license: str | Iterable[str] | None = None,
    origin: str | Iterable[str] | None = None,
    open_weights: bool | None = None,
    commercial: CommercialUse | Iterable[CommercialUse] | None = None,
    max_active_params_b: float | None = None,
) -> list[Model]:
    """Models matching every given criterion, in catalog order. A criterion left None is not
    applied; a model whose fact is not reported never matches a criterion on that fact."""
    licences = None if license is None else _one_of(license)
    origins = None if origin is None else _one_of(origin)
    uses = None if commercial is None else _one_of(commercial)
    out = []
    for model in catalog.models.values():
        if licences is not None and model.licence.value not in licences:
            continue
        if origins is not None and model.origin.value not in origins:
            continue
        if open_weights is not None and model.open_weights.value is not open_weights:
            continue
        if uses is not None:
            lic = catalog.licence_of(model)
            if lic is None or lic.commercial_use not in uses:
                continue
        if max_active_params_b is not None:
            active = active_params_b(model)
            if active is None or active > max_active_params_b:
                continue
        out.append(model)
    return out


def to_row(model: Model) -> dict[str, Any]:
    """A flat, JSON-ready row of the model's values (null when not reported) and the ids of
    every source it cites."""
    cited: set[str] = set()
    for _, fact in figures(model):
        cited.update(_cited_ids(fact))
    return {
        "id": model.id,
        "name": model.name,
        "family": model.family,
        "kind": model.kind,
        "lab": model.lab.value,
        "origin": model.origin.value,
        "licence": model.licence.value,
        "open_weights": model.open_weights.value,
        "params_total_b": model.params_total_b.value,
        "params_active_b": model.params_active_b.value,
        "architecture": model.architecture.value,
        "context_window": model.context_window.value,
        "dimensions": model.dimensions.value,
        "release_date": model.release_date.value,
        "modalities": list(model.modalities),
        "sources": sorted(cited),
    }
