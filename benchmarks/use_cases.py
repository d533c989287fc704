"""The two shipped use cases on real data: the federated model against the same model on pooled rows.

    uv run python benchmarks/use_cases.py [--cases german_credit,card_fraud] [--seeds 0,1,2]

For each seed the real file is split into three banks (stratified and seeded, as `fedrisk data split`
does) and each bank holds out its config's share (stratified, seeded). The federated model is trained by
the pipeline's own code with the shipped config's settings (configs/NAME.yaml): federated statistics ->
feature layout (one-hot, rare levels folded) -> TFF rounds with early stopping on federated validation.
The pooled model is the same architecture, layout and standardization trained centrally on the union
of the banks' fit rows (the pipeline's pooled baseline: Adam, early stopping). Both are scored on the union
of the banks' holdouts. For reference, scikit-learn on the same rows: one-hot logistic regression and
histogram gradient boosting. Targets: German credit federated within 0.02 ROC AUC of pooled, card fraud
within 0.01 PR AUC. With `--engines tff,xgboost` (the default) the XGBoost engine runs beside it on the same
rows and layout: federated trees (one worker process per bank, the default tree settings), the same trees
on the pooled rows, and each bank's own trees (mean over banks); wall time per run is recorded for both.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import ROOT, mean_std, write_json

from consortium.local import LocalConsortium
from contract.data import Extract, Split, labels, load_part, load_parts
from contract.synthetic import split_file
from engines.tff import federated_training
from engines.xgboost import tree_baseline, tree_training
from flows.config import load_config
from institution.evaluation import binary_metrics
from institution.statistics import FeatureSpace, feature_space
from riskmodel import model as exported
from runconfig import TreeTrainingConfig
from tasks.training import train_pooled_baseline

SOURCES = {
    "german_credit": ROOT.parent / "shared" / "data" / "german_credit" / "germancredit.csv",
    "card_fraud": ROOT.parent / "shared" / "data" / "ulb_fraud_subset" / "creditcard_subset.csv",
}
TARGETS = {"german_credit": ("roc_auc", 0.02), "card_fraud": ("pr_auc", 0.01)}
BANKS = ["bank_a", "bank_b", "bank_c"]


def sklearn_references(x_train, y_train, x_test, y_test) -> dict[str, dict[str, float]]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    found = {}
    for name, model in {
        "sklearn_logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
        "sklearn_boosting": HistGradientBoostingClassifier(random_state=0),
    }.items():
        model.fit(x_train, y_train)
        found[name] = binary_metrics(y_test, model.predict_proba(x_test)[:, 1])
    return found


def run_trees(consortium, extracts, space: FeatureSpace, holdout, weight: float, work: Path) -> dict:
    """Federated XGBoost, the same trees on the pooled rows, and each bank's own (mean over banks)."""
    training = TreeTrainingConfig(engine="xgboost")
    y = labels(holdout, space.schema)
    started = time.perf_counter()
    federated = tree_training(consortium, space, training, weight, work / "trees-federated")
    seconds = time.perf_counter() - started
    parts = [load_parts(e, space.schema, space.split, ("fit", "validation")) for e in extracts]
    started = time.perf_counter()
    pooled = tree_baseline(
        pd.concat(p["fit"] for p in parts),
        pd.concat(p["validation"] for p in parts),
        space,
        training,
        weight,
        work / "trees-pooled",
    )
    pooled_seconds = time.perf_counter() - started
    local = [
        binary_metrics(
            y,
            exported.load(
                Path(tree_baseline(p["fit"], p["validation"], space, training, weight, work / f"trees-{e.institution}"))
            ).predict_proba(holdout),
        )
        for e, p in zip(extracts, parts)
    ]
    return {
        "xgboost_federated": binary_metrics(y, exported.load(Path(federated.model_path)).predict_proba(holdout)),
        "xgboost_pooled": binary_metrics(y, exported.load(Path(pooled)).predict_proba(holdout)),
        "xgboost_local": {k: float(np.mean([m[k] for m in local])) for k in ("roc_auc", "pr_auc")},
        "xgboost_federated_seconds": seconds,
        "xgboost_pooled_seconds": pooled_seconds,
        "xgboost_trees": federated.best_round,
    }


def run_case(case: str, seed: int, work: Path, engines: list[str]) -> dict:
    config = load_config(ROOT / "configs" / f"{case}.yaml")
    schema = config.data_schema
    paths = split_file(
        pd.read_csv(SOURCES[case]), schema.label.column, BANKS, seed=seed, id_column=schema.id, out_dir=work / "data"
    )
    extracts = [Extract(bank, paths[bank]) for bank in BANKS]
    consortium = LocalConsortium(tuple(extracts))
    split = Split(config.holdout_fraction, config.training.validation_fraction, seed)
    features = config.feature_names
    statistics = [consortium.statistics(bank, schema, features, split) for bank in BANKS]
    space = feature_space(schema, features, split, statistics)
    layout = space.layout
    weight = space.positive_weight(config.training.positive_class_weight)
    started = time.perf_counter()
    federated = federated_training(consortium, space, config.training, weight, model_dir=work / "federated")
    seconds = time.perf_counter() - started
    pooled = train_pooled_baseline.fn(extracts, space, config.training, config.baselines, weight, work / "pooled")
    holdout = pd.concat(load_part(e, schema, split, "holdout") for e in extracts)
    train = pd.concat(load_parts(e, schema, split, ("train",))["train"] for e in extracts)
    y = labels(holdout, schema)
    result = {
        "federated": binary_metrics(y, exported.load(Path(federated.model_path)).predict_proba(holdout)),
        "pooled": binary_metrics(y, exported.load(Path(pooled)).predict_proba(holdout)),
        **sklearn_references(layout.encode(train), labels(train, schema), layout.encode(holdout), y),
        "federated_seconds": seconds,
        "rounds": len(federated.rounds),
        "best_round": federated.best_round,
        "holdout_rows": int(len(y)),
    }
    if "xgboost" in engines:
        result.update(run_trees(consortium, extracts, space, holdout, weight, work))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="german_credit,card_fraud")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--engines", default="tff,xgboost", help="xgboost adds the tree engine's rows beside TFF's")
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/use_cases.json")
    args = parser.parse_args()
    results = {}
    for case in args.cases.split(","):
        if not SOURCES[case].is_file():
            raise SystemExit(f"{SOURCES[case]} not found; see ../shared/data/README.md")
        runs = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            with tempfile.TemporaryDirectory() as work:
                runs.append(run_case(case, seed, Path(work), args.engines.split(",")))
            r = runs[-1]
            print(
                f"{case} seed {seed}: federated ROC AUC {r['federated']['roc_auc']:.4f} PR AUC "
                f"{r['federated']['pr_auc']:.4f} ({r['rounds']} rounds, {r['federated_seconds']:.0f} s) | pooled "
                f"{r['pooled']['roc_auc']:.4f} / {r['pooled']['pr_auc']:.4f} | scikit-learn LR "
                f"{r['sklearn_logistic']['roc_auc']:.4f} / {r['sklearn_logistic']['pr_auc']:.4f}, boosting "
                f"{r['sklearn_boosting']['roc_auc']:.4f} / {r['sklearn_boosting']['pr_auc']:.4f}",
                flush=True,
            )
            if "xgboost_federated" in r:
                print(
                    f"  xgboost: federated {r['xgboost_federated']['roc_auc']:.4f} / "
                    f"{r['xgboost_federated']['pr_auc']:.4f} ({r['xgboost_trees']} trees, "
                    f"{r['xgboost_federated_seconds']:.0f} s) | pooled {r['xgboost_pooled']['roc_auc']:.4f} / "
                    f"{r['xgboost_pooled']['pr_auc']:.4f} | local-only {r['xgboost_local']['roc_auc']:.4f} / "
                    f"{r['xgboost_local']['pr_auc']:.4f}",
                    flush=True,
                )
        metric, tolerance = TARGETS[case]
        gap = float(np.mean([r["federated"][metric] - r["pooled"][metric] for r in runs]))
        results[case] = {"runs": runs, "metric": metric, "gap": gap, "tolerance": tolerance}
        print(
            f"{case}: {metric} federated {mean_std([r['federated'][metric] for r in runs])} vs pooled "
            f"{mean_std([r['pooled'][metric] for r in runs])} (gap {gap:+.4f}; target within {tolerance}) -> "
            f"{'met' if abs(gap) <= tolerance or gap > 0 else 'MISSED'}",
            flush=True,
        )
        for name in ("roc_auc", "pr_auc"):
            print(
                f"  {name}: "
                + ", ".join(
                    f"{model} {mean_std([r[model][name] for r in runs])}"
                    for model in (
                        "federated",
                        "pooled",
                        "sklearn_logistic",
                        "sklearn_boosting",
                        "xgboost_federated",
                        "xgboost_pooled",
                        "xgboost_local",
                    )
                    if model in runs[0]
                )
            )
        print(
            f"  wall time per run: federated TFF {mean_std([r['federated_seconds'] for r in runs])} s"
            + (
                f", federated XGBoost {mean_std([r['xgboost_federated_seconds'] for r in runs])} s"
                if "xgboost_federated" in runs[0]
                else ""
            )
        )
    print(f"wrote {write_json(args.json, 'use_cases', args, results)}")


if __name__ == "__main__":
    main()
