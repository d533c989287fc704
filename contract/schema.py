"""Data contracts: a schema (one YAML file under schemas/) declares an extract's layout and checks.

The schema is the one place a data layout is written: its ID and label columns (and what the
label's positive value means), every feature with its type, plausible range or levels and
missing-value policy, and the table-level checks. Reading, the Great Expectations suite, federated
statistics, the model's encoding and signature, the card and scoring all follow from it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from errors import ExitCode, FedriskError

SCHEMAS_DIR = Path(__file__).resolve().parents[1] / "schemas"
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
OTHER_LEVEL = "(other)"
MISSING_LEVEL = "(missing)"


class SchemaError(FedriskError, ValueError):
    """A schema that cannot be found or used; the message names the file and field."""

    exit_code = ExitCode.USAGE


class Missing(BaseModel):
    """Missing values are allowed up to `max_rate` of rows; the model fills them itself.

    Numeric and boolean: filled with the consortium's mean (`impute: mean`, from federated sums) or
    `value` (`impute: constant`), with a missing-indicator input beside it. Categorical: a level of its own.
    """

    model_config = ConfigDict(extra="forbid")

    max_rate: float = Field(gt=0.0, le=1.0)
    impute: Literal["mean", "constant"] = "mean"
    value: float | None = None

    @model_validator(mode="after")
    def _constant_has_value(self) -> Missing:
        if (self.impute == "constant") != (self.value is not None):
            raise ValueError("impute: constant needs a value, and only it takes one")
        return self


class _Feature(BaseModel):
    model_config = ConfigDict(extra="forbid")

    missing: Missing | None = Field(None, description="None: a missing value is an error (quarantine).")
    description: str | None = None


class NumericFeature(_Feature):
    type: Literal["numeric"]
    dtype: Literal["int", "float"] = Field(
        "float", description="int: whole numbers (amounts, codes); a fractional value is an error."
    )
    min: float | None = None
    max: float | None = None
    allowed: list[float] | None = Field(None, description="A code set: the only values allowed.")
    unit: str | None = None


class CategoricalFeature(_Feature):
    type: Literal["categorical"]
    levels: list[str] | list[int] | Literal["open"] = Field(
        description="The allowed levels (text or integer codes), or 'open' for any."
    )

    @property
    def coded(self) -> bool:
        """Integer codes rather than text."""
        return self.levels != "open" and all(isinstance(level, int) for level in self.levels)


class BooleanFeature(_Feature):
    type: Literal["boolean"]


Feature = Annotated[NumericFeature | CategoricalFeature | BooleanFeature, Field(discriminator="type")]


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid")

    column: str
    positive: str | int = Field(1, description="The value that means the event (default, fraud, bad).")
    negative: str | int = 0
    meaning: str = Field(pattern=r"^[a-z][a-z ]{0,30}$", description="What the positive value means, e.g. default.")


class ProtectedAttribute(BaseModel):
    """A protected attribute (sex, age, ...) read from one declared feature, for fair-lending tests only: never a
    model input. A categorical feature's levels are gathered into `groups`; a numeric feature is cut into
    `bands` at `cuts` (a value on a cut falls in the band above; `bands` names them, one more than the cuts).
    `reference`: the group the others are compared with (the adverse impact ratio's denominator)."""

    model_config = ConfigDict(extra="forbid")

    column: str
    groups: dict[str, list[str | int]] | None = None
    cuts: list[float] | None = None
    bands: list[str] | None = None
    reference: str

    @model_validator(mode="after")
    def _one_way(self) -> ProtectedAttribute:
        if (self.groups is None) == (self.cuts is None):
            raise ValueError("give either groups (a categorical column's levels by group) or cuts and bands (a number)")
        if self.cuts is not None:
            if self.cuts != sorted(set(self.cuts)):
                raise ValueError(f"cuts must increase, got {self.cuts}")
            if self.bands is None or len(self.bands) != len(self.cuts) + 1:
                raise ValueError(f"bands must name the {len(self.cuts) + 1} bands the cuts make")
        elif self.bands is not None:
            raise ValueError("bands go with cuts (a numeric column); a categorical column's groups name themselves")
        names = self.names
        if len(set(names)) != len(names):
            raise ValueError(f"group names repeat: {names}")
        if self.reference not in names:
            raise ValueError(f"reference {self.reference!r} is not one of its groups {names}")
        return self

    @property
    def names(self) -> list[str]:
        """The groups, in order (a band's or a group's name)."""
        return list(self.groups) if self.groups is not None else list(self.bands or [])


class Schema(BaseModel):
    """One data layout, versioned: a change that changes a check needs a new version (and suite)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    description: str = ""
    id: str | None = Field(None, description="The customer or row ID column (unique); none for an extract without.")
    label: Label
    output: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$", description="The scoring output, e.g. default_probability.")
    min_rows: int = Field(200, ge=1)
    label_rate: tuple[float, float] = Field((0.01, 0.6), description="Plausible share of positives (min, max).")
    max_duplicate_share: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Share of rows repeating another row (the ID aside) above which the extract is quarantined.",
    )
    constant_features: Literal["error", "warning"] = Field(
        "error", description="A feature with one value in the whole extract."
    )
    rare_level_min_rows: int = Field(
        10,
        ge=1,
        description="Levels seen in fewer rows consortium-wide fold into "
        "'(other)', so no rare level identifies a customer.",
    )
    features: dict[str, Feature] = Field(min_length=1)
    protected: dict[str, ProtectedAttribute] = Field(
        default_factory=dict,
        description="Protected attributes by name (sex, age): declared features that are never model inputs and "
        "are used only to test the model for fair lending.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Schema:
        low, high = self.label_rate
        if not 0 <= low < high <= 1:
            raise ValueError(f"label_rate must be (min, max) with 0 <= min < max <= 1, got {self.label_rate}")
        reserved = [c for c in (self.id, self.label.column) if c in self.features]
        if reserved:
            raise ValueError(f"{reserved} are the ID or label column, not features")
        if self.label.positive == self.label.negative:
            raise ValueError("label.positive and label.negative must differ")
        for name, attribute in self.protected.items():
            feature = self.features.get(attribute.column)
            if feature is None:
                raise ValueError(f"protected.{name}.column {attribute.column!r} is not a declared feature")
            if attribute.groups is not None:
                coded = getattr(feature, "allowed", None) if feature.type == "numeric" else None
                if feature.type == "categorical" and feature.levels != "open":
                    declared = [str(level) for level in feature.levels]
                elif coded:
                    declared = [f"{float(code):g}" for code in coded]
                else:
                    raise ValueError(
                        f"protected.{name}: groups need a categorical column with declared levels or a numeric "
                        f"one with allowed codes"
                    )
                listed = [
                    f"{float(level):g}" if coded else str(level)
                    for levels in attribute.groups.values()
                    for level in levels
                ]
                if sorted(listed) != sorted(declared):
                    raise ValueError(
                        f"protected.{name}.groups must place each of {attribute.column}'s values in one group "
                        f"exactly (its values: {declared})"
                    )
            elif feature.type != "numeric":
                raise ValueError(f"protected.{name}: cuts need a numeric column; {attribute.column} is {feature.type}")
        outcome = {str(self.label.positive).strip().lower(), str(self.label.negative).strip().lower()}
        for name, feature in self.features.items():
            if feature.type != "categorical" or feature.levels == "open":
                continue
            levels = {str(level).strip().lower() for level in feature.levels}
            if self.label.column.strip().lower() in levels:
                raise ValueError(
                    f"features.{name}.levels: a level is the label column's name "
                    f"({self.label.column!r}): a header line read as data, or the label leaking into a "
                    f"feature"
                )
            if levels == outcome and not feature.coded:
                raise ValueError(
                    f"features.{name}.levels are exactly the label's values ({self.label.positive!r} "
                    f"and {self.label.negative!r}): the label itself under another name would leak "
                    f"the outcome into the model; rename the levels if it is truly another attribute"
                )
        return self

    @property
    def suite(self) -> str:
        """The Great Expectations suite generated from this version."""
        return f"{self.name}_v{self.version}"

    @property
    def columns(self) -> list[str]:
        """Every column of an extract, in order: ID, features, label."""
        return [*([self.id] if self.id else []), *self.features, self.label.column]

    def fingerprint(self) -> str:
        """sha256 of the schema's content (comments and layout of the YAML aside), for lineage."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    @property
    def protected_references(self) -> dict[str, str]:
        """Each protected attribute's reference group (what its other groups are compared with)."""
        return {name: attribute.reference for name, attribute in self.protected.items()}

    @property
    def protected_columns(self) -> set[str]:
        """The columns protected attributes are read from: never model inputs."""
        return {attribute.column for attribute in self.protected.values()}

    def numeric(self) -> list[str]:
        return [n for n, f in self.features.items() if f.type == "numeric"]

    def categorical(self) -> list[str]:
        return [n for n, f in self.features.items() if f.type == "categorical"]


def percent(rate: float) -> str:
    """A rate as people read it, never rounded to a misleading "0%": 0.2 -> 20%, 0.125 -> 12.5%, 0.001 -> 0.1%."""
    return f"{rate * 100:.3g}%"


def schema_file(name: str, schemas_dir: Path = SCHEMAS_DIR) -> Path:
    return Path(schemas_dir) / f"{name}.yaml"


def available_schemas(schemas_dir: Path = SCHEMAS_DIR) -> list[str]:
    return sorted(p.stem for p in Path(schemas_dir).glob("*.yaml"))


class _UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no type hints
    """YAML's safe loader, refusing a mapping that repeats a key (PyYAML keeps the last one, silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}): "
                    f"the second would silently replace the first",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str) -> Any:
    """YAML as fedrisk reads every schema and config: safe, and a repeated key is an error (yaml.YAMLError)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)


def parse_schema(data: object, source: str) -> Schema:
    """Validate a schema mapping; SchemaError names the source and field."""
    if not isinstance(data, dict):
        raise SchemaError(f"schema {source} must be a mapping, got {type(data).__name__}")
    try:
        return Schema.model_validate(data)
    except ValidationError as error:
        lines = [f"invalid schema {source}:"]
        for item in error.errors():
            where = ".".join(str(part) for part in item["loc"]) or "(top level)"
            lines.append(f"  {where}: {item['msg'].removeprefix('Value error, ')}")
        raise SchemaError("\n".join(lines)) from None


def load_schema(name: str, schemas_dir: Path = SCHEMAS_DIR) -> Schema:
    """The schema `name` from `schemas_dir/NAME.yaml`."""
    path = schema_file(name, schemas_dir)
    if not path.is_file():
        raise SchemaError(f"unknown schema {name!r}: no {path} (schemas: {', '.join(available_schemas(schemas_dir))})")
    try:
        data = read_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise SchemaError(f"schema file {path} cannot be read: {error}") from None
    schema = parse_schema(data, str(path))
    if schema.name != name:
        raise SchemaError(f"schema file {path} declares name {schema.name!r}; the file name must match")
    return schema
