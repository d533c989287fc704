"""The run config at the edge: read YAML, apply dotted overrides, validate into runconfig.RunConfig.

Errors name the file, field and value; a config that passes is handed down typed, never as a dict.
"""

from __future__ import annotations

import copy
import difflib
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from contract.schema import SCHEMAS_DIR, SchemaError, read_yaml
from contract.suites import SuiteOutOfDate, require_current_suite
from errors import ExitCode, FedriskError
from runconfig import ENGINES, RunConfig


class ConfigError(FedriskError, ValueError):
    """A config file that cannot be used; the message names the file, field and value."""

    exit_code = ExitCode.USAGE


def _models(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, unions, lists and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in typing.get_args(annotation) for model in _models(argument)]


def _keys_at(loc: list, engine: str | None = None) -> list[str]:
    """The keys a config section at `loc` (a list of names, list indices skipped) may hold; in the training
    section, those of `engine` when given (each engine has its own settings)."""
    models: list[type[BaseModel]] = [RunConfig]
    for part in loc:
        if isinstance(part, int):
            continue
        fields = [_fields(model).get(part) for model in models]
        models = [nested for field in fields if field is not None for nested in _models(field.annotation)]
        if engine is not None and loc[:1] == ["training"] and part == "training":
            models = [
                m
                for m in models
                if "engine" in _fields(m) and typing.get_args(_fields(m)["engine"].annotation) == (engine,)
            ]
    return sorted({key for model in models for key in _fields(model)})


def _fields(model: type[BaseModel]) -> dict:
    return {(field.alias or name): field for name, field in model.model_fields.items()}


def _unknown_key(loc: list, engine: str | None = None) -> str:
    key, section = str(loc[-1]), loc[:-1]
    known = _keys_at(section, engine)
    near = difflib.get_close_matches(key, known, n=1)
    where = ".".join(str(p) for p in section)
    text = f"unknown key '{key}'" + (f" in section {where}" if where else "")
    if engine is not None:
        other = [e for e in ENGINES if e != engine and key in _keys_at(section, e)]
        if other:
            text += f" (a setting of engine {other[0]}; this section's engine is {engine})"
    return text + (f"; did you mean '{near[0]}'?" if near else f"; known keys: {', '.join(known)}")


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for item in error.errors():
        # The training union's tag (training.tff.rounds) is not a key the user wrote: name the field as written.
        loc = [
            part
            for i, part in enumerate(item["loc"])
            if not (i == 1 and item["loc"][0] == "training" and part in ENGINES)
        ]
        engine = (
            item["loc"][1]
            if item["loc"][:1] == ("training",) and len(item["loc"]) > 1 and item["loc"][1] in ENGINES
            else None
        )
        if item["type"] == "extra_forbidden":
            lines.append(f"  {_unknown_key(loc, engine)}")
            continue
        where = ".".join(str(part) for part in loc) or "(top level)"
        value = item.get("input")
        shown = "" if isinstance(value, dict) or item["type"] == "missing" else f" (got {value!r})"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}{shown}")
    return "\n".join(lines)


def parse_config(
    data: dict,
    base_dir: Path,
    source: str = "<dict>",
    schemas_dir: Path = SCHEMAS_DIR,
    expectations_dir: Path | None = None,
) -> RunConfig:
    """Validate a config mapping; resolve institution paths against `base_dir`. Given `expectations_dir`,
    also confirm that the committed suite is the one the schema describes (else a version bump is due)."""
    try:
        config = RunConfig.model_validate(data, context={"schemas_dir": schemas_dir})
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None
    except SchemaError as error:
        raise ConfigError(f"invalid config {source}: schema: {error}") from None
    if expectations_dir is not None:
        try:
            require_current_suite(config.data_schema, expectations_dir)
        except SuiteOutOfDate as error:
            raise ConfigError(f"invalid config {source}: {error}") from None
    for institution in config.institutions:
        if institution.path is not None and not institution.path.is_absolute():
            institution.path = (base_dir / institution.path).resolve()
        if institution.monitoring_path is not None and not institution.monitoring_path.is_absolute():
            institution.monitoring_path = (base_dir / institution.monitoring_path).resolve()
    if config.tls is not None:
        for name in ("ca", "cert", "key"):
            if not getattr(config.tls, name).is_absolute():
                setattr(config.tls, name, (base_dir / getattr(config.tls, name)).resolve())
    return config


def apply_overrides(data: dict, overrides: dict[str, object]) -> dict:
    """A copy of a config mapping with dotted keys set (`training.rounds: 3`), as a deployment run asks."""
    data = copy.deepcopy(data)
    for key, value in overrides.items():
        parts = str(key).split(".")
        if not all(parts):
            raise ConfigError(f"override {key!r}: not a dotted config key like training.rounds")
        section = data
        for depth, part in enumerate(parts[:-1]):
            section = section.setdefault(part, {})
            if not isinstance(section, dict):
                raise ConfigError(f"override {key!r}: {'.'.join(parts[: depth + 1])} is a value, not a section")
        section[parts[-1]] = value
    return data


def load_config(
    path: Path,
    overrides: dict[str, object] | None = None,
    schemas_dir: Path = SCHEMAS_DIR,
    expectations_dir: Path | None = None,
) -> RunConfig:
    """Read and validate a YAML run config, with dotted-key `overrides` applied before validation."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} cannot be read: {error}") from None
    try:
        data = read_yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of settings, got {type(data).__name__}")
    source = str(path)
    if overrides:
        data = apply_overrides(data, overrides)
        source += " with overrides " + ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    config = parse_config(data, path.resolve().parent, source, schemas_dir, expectations_dir)
    config._source_file = path.resolve()
    return config
