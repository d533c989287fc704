"""The XGBoost engine: federated gradient-boosted trees over the consortium (fed_trees), exported like any model
(a riskmodel directory), and the same trees on pooled or local rows (baselines)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from contract.data import labels
from engines.base import Architecture, TrainingOutcome
from institution.monitoring import development_bins
from institution.statistics import FeatureSpace
from riskmodel import model as exported
from runconfig import RunConfig, TreeTrainingConfig


def tree_spec(training: TreeTrainingConfig, space: FeatureSpace, positive_weight: float):
    """The run config's tree settings as fed_trees' TreeSpec, for the space's columns: the one place they are
    mapped (XGBoost calls the positive weight scale_pos_weight)."""
    from fed_trees.spec import TreeSpec

    stopping = training.early_stopping
    return TreeSpec(
        rounds=training.rounds,
        max_depth=training.max_depth,
        learning_rate=training.learning_rate,
        min_child_weight=training.min_child_weight,
        subsample=training.subsample,
        reg_lambda=training.reg_lambda,
        max_bin=training.max_bin,
        scale_pos_weight=positive_weight,
        early_stopping_rounds=stopping.patience if stopping else None,
        feature_types=tuple(space.layout.native_types()),
        monotone=tuple(training.monotone.get(name, 0) for name in space.layout.raw_features),
        seed=space.split.seed,
    )


def lineage(spec) -> dict[str, str]:
    """The tags that say how the trees were grown."""
    return {
        "training.engine": "xgboost",
        **{f"xgboost.{k}": str(v) for k, v in spec.params().items() if k not in ("nthread", "eval_metric")},
        "xgboost.early_stopping_rounds": str(spec.early_stopping_rounds),
    }


def export(booster: Path, space: FeatureSpace, directory: Path) -> str:
    """Write an exported model: the booster and the space's feature layout."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(booster, directory / exported.XGBOOST_FILE)
    exported.save(
        directory,
        engine="xgboost",
        layout=space.layout,
        output=space.schema.output,
        bins=development_bins(space),
        engine_file=exported.XGBOOST_FILE,
    )
    return str(directory)


def tree_training(
    consortium,
    space: FeatureSpace,
    training: TreeTrainingConfig,
    positive_weight: float,
    model_dir: Path,
    isolation=None,
    on_round=None,
    run_key: str = "",
):
    """Federated trees over the consortium's institutions (one XGBoost worker each, in this process's children
    in simulation, at their nodes across silos); the exported model."""
    from fed_trees.training import train_federated
    from hostguard.loopback import isolation as loopback_isolation

    spec = tree_spec(training, space, positive_weight)
    isolation = isolation or loopback_isolation(False)
    with tempfile.TemporaryDirectory(prefix="fedrisk-trees-") as work:
        if consortium.cross_silo:
            result, rows, kept = _across_silos(consortium, space, spec, Path(work), isolation, run_key, on_round)
        else:
            data = consortium.tree_data(space)
            result = train_federated(data, spec, Path(work), isolation=isolation, on_round=on_round)
            rows = {d.institution: int(len(d.y_fit)) for d in data}
            kept = f"XGBoost's federated server and workers on loopback ({isolation.mechanism}), mutual TLS"
        path = export(result.booster, space, model_dir)
    return TrainingOutcome(
        model_path=path,
        rounds=result.rounds,
        examples=rows,
        best_round=result.best_round,
        stopped_early=result.stopped_early and len(result.rounds) < training.rounds,  # before its limit
        resumed_from_round=0,
        positive_class_weight=positive_weight,
        rounds_trained={name: len(result.rounds) for name in rows},
        engine="xgboost",
        lineage={**lineage(spec), "security.worker_isolation": kept},
        max_rounds=training.rounds,
    )


def _across_silos(consortium, space: FeatureSpace, spec, work: Path, isolation, run_key: str, on_round=None):
    """The federated server here on loopback, reached only through fed_trees.gate on the configured address: mutual
    TLS with the consortium's CA, the run's institutions from their nodes' addresses; each node starts its own
    worker. Returns the result, each institution's rows, and what kept the server private (for the lineage)."""
    import socket

    from fed_trees.gate import Gate, node_addresses
    from fed_trees.training import TreeResult, TreeTrainingFailed, start_server
    from hostguard.processes import stop

    if isolation.exposed:
        raise TreeTrainingFailed(
            "XGBoost's federated server cannot be kept on loopback on this host "
            f"({isolation.mechanism}), and across silos it admits any certificate of the "
            f"consortium from anywhere: trees are not trained across silos here"
        )
    try:
        bind = consortium.trees_bind or socket.gethostbyname(consortium.server_host)
        admitted = {n.institution: node_addresses(n.address) for n in consortium.nodes}
    except OSError as error:
        raise TreeTrainingFailed(
            f"cannot resolve the coordinator's host {consortium.server_host!r} (tls.host) or a node's address: {error}"
        ) from None
    server, upstream = start_server(len(consortium.names), None, work, isolation)
    gate = None
    try:
        try:
            gate = Gate(
                bind, upstream, admitted, Path(consortium.tls.ca), Path(consortium.tls.cert), Path(consortium.tls.key)
            )
        except OSError as error:
            raise TreeTrainingFailed(
                f"the gate to XGBoost's federated server cannot listen on {bind} "
                f"(tls.trees_bind, or tls.host's address): {error}"
            ) from None
        trained = consortium.tree_training(space, spec, run_key, f"{consortium.server_host}:{gate.port}", on_round)
    finally:
        if gate is not None:
            gate.close()
        stop(server)
    answer = trained["answer"]
    (work / "booster.json").write_bytes(bytes(answer["booster"]))
    kept = (
        f"XGBoost's federated server on loopback ({isolation.mechanism}), reached only through fedrisk's "
        f"admission gate on {bind}:{gate.port}: mutual TLS, the run's institutions from their "
        f"nodes' addresses" + (f"; refused {len(gate.refused)} connection(s)" if gate.refused else "")
    )
    return (
        TreeResult(work / "booster.json", answer["rounds"], answer["best_round"], answer["stopped_early"]),
        trained["rows"],
        kept,
    )


def tree_baseline(
    fit: pd.DataFrame,
    validation: pd.DataFrame,
    space: FeatureSpace,
    training: TreeTrainingConfig,
    positive_weight: float,
    model_dir: Path,
) -> str:
    """The same trees trained on rows in one place (pooled, or one institution's own)."""
    from fed_trees.training import train_centralized

    layout, schema = space.layout, space.schema
    with tempfile.TemporaryDirectory(prefix="fedrisk-trees-") as work:
        result = train_centralized(
            layout.encode_native(fit),
            labels(fit, schema),
            layout.encode_native(validation),
            labels(validation, schema),
            tree_spec(training, space, positive_weight),
            Path(work) / "booster.json",
        )
        return export(result.booster, space, model_dir)


class TreeEngine:
    """Gradient-boosted trees grown with XGBoost's federated mode (fed_trees)."""

    name = "xgboost"
    modules: tuple[str, ...] = ("xgboost", "fed_trees.training")

    def describe(self, training: TreeTrainingConfig) -> str:
        return "federated gradient-boosted trees (XGBoost)"

    def architecture(self, config: RunConfig) -> Architecture:
        t = config.training
        assert isinstance(t, TreeTrainingConfig)
        return Architecture(
            model=(
                f"gradient-boosted trees (XGBoost, histogram method; depth {t.max_depth}, eta {t.learning_rate:g}, "
                f"min child weight {t.min_child_weight:g}" + (f", monotone {t.monotone}" if t.monotone else "") + ")"
            ),
            algorithm="XGBoost's federated mode (histogram method)",
            aggregation="gradient histograms summed by XGBoost's federated server",
            kind="gradient_boosted_trees",
        )

    def train(self, consortium, space, training, positive_weight, model_dir, **options: Any) -> TrainingOutcome:
        """Only isolation, on_round and run_key apply to trees: the run config refuses differential privacy and
        secure aggregation for this engine, scorecard points are a logistic regression's, trees keep no checkpoints."""
        isolation, on_round, run_key = options.get("isolation"), options.get("on_round"), options.get("run_key", "")
        return tree_training(consortium, space, training, positive_weight, model_dir, isolation, on_round, run_key)

    def baseline(self, fit, validation, space, training, baselines, positive_weight, model_dir) -> str:
        return tree_baseline(fit, validation, space, training, positive_weight, model_dir)


XGBOOST = TreeEngine()
