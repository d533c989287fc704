"""A node's configuration, kept at the institution: who it is, where its extract is, its schema, its TLS
material, which coordinator it answers, and what it agrees to (rounds, model kinds, privacy)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.schema import SCHEMAS_DIR, Schema, SchemaError, load_schema


class NodeConfigError(ValueError):
    """A node config that cannot be used; the message names the file and field."""


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
        default_factory=lambda: ["logistic_regression", "mlp", "gradient_boosted_trees"])
    require_privacy: Literal["none", "record_level"] = Field(
        "none", description="record_level: train only with DP-SGD (every customer protected).")
    privacy_budget: float | None = Field(None, gt=0, le=1000, description="Total epsilon this institution allows "
                                                                          "over every training on its rows.")
    require_secure_aggregation: bool = Field(
        False, description="Send statistics, updates and validation metrics only masked, in secure sums.")


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    institution: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    listen: str = Field("127.0.0.1:7100", pattern=r"^[^:\s]+:\d{1,5}$",
                        description="host:port to listen on; 0.0.0.0 for every interface (TLS is required).")
    schema_name: str = Field(alias="schema")
    extract: ExtractConfig
    tls: TlsFiles
    coordinator: str = Field("coordinator", description="The certificate name (CN) of the only client answered.")
    work_dir: Path = Field(Path("node_state"), description="The node's round log and privacy ledger.")
    policy: NodePolicy = Field(default_factory=NodePolicy)
    max_message_mb: int = Field(64, ge=1, le=2000)

    @field_validator("listen")
    @classmethod
    def _port(cls, value: str) -> str:
        if not 0 <= int(value.rsplit(":", 1)[1]) < 65536:
            raise ValueError("port must be 0-65535 (0: any free port)")
        return value

    def schema(self, schemas_dir: Path = SCHEMAS_DIR) -> Schema:
        return load_schema(self.schema_name, schemas_dir)


def load_node_config(path: Path) -> NodeConfig:
    """Read a node's YAML config; relative paths are relative to the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NodeConfigError(f"node config {path} not found") from None
    except (OSError, yaml.YAMLError) as error:
        raise NodeConfigError(f"node config {path} cannot be read: {error}") from None
    try:
        config = NodeConfig.model_validate(data)
        config.schema()
    except ValidationError as error:
        lines = [f"invalid node config {path}:"] + [
            f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
        raise NodeConfigError("\n".join(lines)) from None
    except SchemaError as error:
        raise NodeConfigError(f"invalid node config {path}: schema: {error}") from None
    base = path.resolve().parent
    config.tls = config.tls.resolved(base)
    if not config.extract.path.is_absolute():
        config.extract.path = (base / config.extract.path).resolve()
    if not config.work_dir.is_absolute():
        config.work_dir = (base / config.work_dir).resolve()
    return config
