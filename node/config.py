"""A node's configuration, kept at the institution: who it is, where its extract is, its schema, its TLS
material, which coordinator it answers, and what it agrees to (rounds, model kinds, privacy)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contract.schema import SCHEMAS_DIR, Schema, SchemaError, load_schema, read_yaml
from errors import ExitCode, FedriskError


class NodeConfigError(FedriskError, ValueError):
    """A node config that cannot be used; the message names the file and field."""

    exit_code = ExitCode.USAGE


class TlsFiles(BaseModel):
    """PEM files: the consortium CA, this party's certificate and its private key."""

    model_config = ConfigDict(extra="forbid")

    ca: Path
    cert: Path
    key: Path

    def resolved(self, base: Path) -> TlsFiles:
        return TlsFiles(**{k: (v if v.is_absolute() else (base / v).resolve()) for k, v in self})

    def read(self) -> tuple[bytes, bytes, bytes]:
        return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()


class ExtractConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path
    columns: dict[str, str] = Field(default_factory=dict, description="Name in the file -> schema name.")


class NodePolicy(BaseModel):
    """What the institution agrees to; a request outside it is refused, whatever the coordinator says."""

    model_config = ConfigDict(extra="forbid")

    max_rounds: int = Field(1000, ge=1, le=100_000)
    model_kinds: list[Literal["logistic_regression", "mlp", "gradient_boosted_trees"]] = Field(
        default_factory=lambda: ["logistic_regression", "mlp", "gradient_boosted_trees"]
    )
    require_privacy: Literal["none", "record_level"] = Field(
        "none", description="record_level: train only with DP-SGD (every customer protected)."
    )
    privacy_budget: float | None = Field(
        None, gt=0, le=1000, description="Total epsilon this institution allows over every training on its rows."
    )
    require_secure_aggregation: bool = Field(
        False, description="Send statistics, updates and validation metrics only masked, in secure sums."
    )
    max_delta: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="The DP delta this node accounts at (at most, whatever the coordinator asks); default 1/rows.",
    )
    min_noise_multiplier: float | None = Field(
        None, gt=0, le=100, description="DP-SGD at this node only with at least this noise multiplier."
    )
    max_epsilon_per_run: float | None = Field(
        None, gt=0, le=1000, description="The most epsilon one training may spend on this node's rows."
    )
    max_evaluations_per_run: int = Field(
        3,
        ge=1,
        le=100,
        description="Evaluate requests answered per training (retries included), for its own models only.",
    )

    @property
    def trains_networks(self) -> bool:
        """Whether this node trains TFF networks: only then does it load TensorFlow and TFF (a node for trees
        imports neither; it loads TensorFlow only if asked to score a network champion)."""
        return any(kind != "gradient_boosted_trees" for kind in self.model_kinds)


NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class ConsortiumConfig(BaseModel):
    """Who this institution sums with: the consortium's members (their certificate names), and what any secure sum
    must satisfy, whatever the coordinator asks."""

    model_config = ConfigDict(extra="forbid")

    members: list[str] = Field(
        min_length=3,
        description="Every member institution's certificate name (CN), this one included; never the coordinator.",
    )
    fingerprints: dict[str, str] = Field(
        default_factory=dict,
        description="Optional: member -> SHA-256 of its "
        "certificate (hex); its keys are then accepted from that certificate only.",
    )
    min_threshold: int | None = Field(
        None, ge=2, description="The lowest threshold t accepted. Default: a strict majority of the members."
    )
    min_inputs: int = Field(3, ge=3, description="The fewest inputs any released sum may contain.")

    @field_validator("members")
    @classmethod
    def _names(cls, members: list[str]) -> list[str]:
        for name in members:
            if not re.match(NAME, name):
                raise ValueError(f"member {name!r} is not an institution name (lowercase letters, digits, _ and -)")
        if len(set(members)) != len(members):
            raise ValueError("a member is listed twice")
        return members

    @field_validator("fingerprints")
    @classmethod
    def _fingerprints(cls, fingerprints: dict[str, str]) -> dict[str, str]:
        for name, value in fingerprints.items():
            if not re.fullmatch(r"[0-9a-f]{64}", value.lower().replace(":", "")):
                raise ValueError(f"the fingerprint of {name!r} is not a SHA-256 in hex")
        return fingerprints

    @model_validator(mode="after")
    def _sizes(self) -> ConsortiumConfig:
        unknown = sorted(set(self.fingerprints) - set(self.members))
        if unknown:
            raise ValueError(f"fingerprints for {unknown}, who are not members")
        if self.min_threshold is not None and self.min_threshold > len(self.members):
            raise ValueError(f"min_threshold {self.min_threshold} is more than the {len(self.members)} members")
        if self.min_inputs > len(self.members):
            raise ValueError(f"min_inputs {self.min_inputs} is more than the {len(self.members)} members")
        return self

    def threshold_floor(self) -> int:
        from secagg.protocol import default_threshold

        return self.min_threshold or default_threshold(len(self.members))


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    institution: str = Field(pattern=NAME)
    listen: str = Field(
        "127.0.0.1:7100",
        pattern=r"^[^:\s]+:\d{1,5}$",
        description="host:port to listen on; 0.0.0.0 for every interface (TLS is required).",
    )
    schema_name: str = Field(alias="schema")
    extract: ExtractConfig
    monitoring: ExtractConfig | None = Field(
        None,
        description="This period's extract of the scoring population (replaced each month), which monitoring of "
        "the champion counts; with the label column, its matured outcomes too.",
    )
    tls: TlsFiles
    coordinator: str = Field("coordinator", description="The certificate name (CN) of the only client answered.")
    work_dir: Path = Field(Path("node_state"), description="The node's round log and privacy ledger.")
    policy: NodePolicy = Field(default_factory=NodePolicy)
    consortium: ConsortiumConfig | None = Field(
        None, description="The members it takes part in secure sums with; without it, it takes part in none."
    )
    max_message_mb: int = Field(64, ge=1, le=2000)

    @model_validator(mode="after")
    def _membership(self) -> NodeConfig:
        if self.consortium is None:
            if self.policy.require_secure_aggregation:
                raise ValueError(
                    "policy.require_secure_aggregation needs consortium.members: the node takes part "
                    "in secure sums only with the members it lists"
                )
            return self
        if self.institution not in self.consortium.members:
            raise ValueError(f"consortium.members must include this institution ({self.institution!r})")
        if self.coordinator in self.consortium.members:
            raise ValueError(
                f"consortium.members must not include the coordinator ({self.coordinator!r}): the "
                f"coordinator never takes part in a secure sum"
            )
        return self

    def secure_rules(self):
        """The rules this node applies to every secure sum (secagg.protocol.Rules); None without a consortium."""
        from secagg.protocol import Rules

        if self.consortium is None:
            return None
        return Rules(
            frozenset(self.consortium.members),
            self.coordinator,
            self.consortium.threshold_floor(),
            self.consortium.min_inputs,
            tuple(sorted(self.consortium.fingerprints.items())),
        )

    @field_validator("listen")
    @classmethod
    def _port(cls, value: str) -> str:
        if not 0 <= int(value.rsplit(":", 1)[1]) < 65536:
            raise ValueError("port must be 0-65535 (0: any free port)")
        return value

    def schema(self, schemas_dir: Path = SCHEMAS_DIR) -> Schema:
        return load_schema(self.schema_name, schemas_dir)


NAME_HINT = "; a name is lower-case letters, digits, '_' and '-', starting with a letter or digit (e.g. cedar_savings)"


def load_node_config(path: Path) -> NodeConfig:
    """Read a node's YAML config; relative paths are relative to the file."""
    path = Path(path)
    try:
        data = read_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NodeConfigError(f"node config {path} not found") from None
    except (OSError, yaml.YAMLError) as error:
        raise NodeConfigError(f"node config {path} cannot be read: {error}") from None
    try:
        config = NodeConfig.model_validate(data)
        config.schema()
    except ValidationError as error:
        lines = [f"invalid node config {path}:"] + [
            f"  {'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg'].removeprefix('Value error, ')}"
            + ("" if isinstance(e.get("input"), dict) or e["type"] == "missing" else f" (got {e.get('input')!r})")
            + (NAME_HINT if e["loc"][-1:] == ("institution",) else "")
            for e in error.errors()
        ]
        raise NodeConfigError("\n".join(lines)) from None
    except SchemaError as error:
        raise NodeConfigError(f"invalid node config {path}: schema: {error}") from None
    base = path.resolve().parent
    config.tls = config.tls.resolved(base)
    for extract in (config.extract, config.monitoring):
        if extract is not None and not extract.path.is_absolute():
            extract.path = (base / extract.path).resolve()
    if not config.work_dir.is_absolute():
        config.work_dir = (base / config.work_dir).resolve()
    return config
