"""One institution's XGBoost federated worker, as its own process: `python -m fed_trees.worker JOB.json`.

It reads only its institution's rows (an .npz of its fit and validation parts, encoded by the run's
layout), joins the federated server over mutual TLS, and trains; the server sums the workers' gradient
histograms, so every worker ends with the same trees. Each boosting round's federated validation figures
are printed as a JSON line (the coordinator's progress); every rank saves the trees, rank 0 the history too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import xgboost

from fed_trees.spec import TreeSpec


class _Rounds(xgboost.callback.TrainingCallback):
    """Prints each round's validation log loss and AUC (aggregated over every worker's validation rows)."""

    def after_iteration(self, model, epoch, evals_log) -> bool:
        validation = evals_log.get("validation", {})
        print(
            json.dumps(
                {
                    "round": epoch + 1,
                    "validation_loss": validation.get("logloss", [float("nan")])[-1],
                    "validation_auc": validation.get("auc", [float("nan")])[-1],
                }
            ),
            flush=True,
        )
        return False


def booster_name(rank: int) -> str:
    """The file a worker of `rank` saves the trees to (rank 0's is the training's result)."""
    return "booster.json" if rank == 0 else f"booster.rank{rank}.json"


def main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    spec = TreeSpec.from_dict(job["spec"])
    with np.load(job["data"], allow_pickle=False) as data:
        parts = {name: data[name] for name in data.files}
    matrices = {
        part: xgboost.DMatrix(
            parts[f"x_{part}"],
            label=parts[f"y_{part}"],
            feature_types=list(spec.feature_types) or None,
            enable_categorical=True,
        )
        for part in ("fit", "validation")
    }
    communicator = {
        "dmlc_communicator": "federated",
        "federated_server_address": job["server"],
        "federated_world_size": job["world_size"],
        "federated_rank": job["rank"],
    }
    if job.get("tls"):  # the CA verifies the server; the server verifies this worker's certificate
        communicator.update(
            federated_secure=True,
            federated_server_cert_path=job["tls"]["ca"],
            federated_client_key_path=job["tls"]["key"],
            federated_client_cert_path=job["tls"]["cert"],
        )
    with xgboost.collective.CommunicatorContext(**communicator):
        history: dict = {}
        booster = xgboost.train(
            spec.params(),
            matrices["fit"],
            num_boost_round=spec.rounds,
            evals=[(matrices["validation"], "validation")],
            evals_result=history,
            early_stopping_rounds=spec.early_stopping_rounds,
            callbacks=[_Rounds()] if job["rank"] == 0 else [],
            verbose_eval=False,
        )
        out = Path(job["output"])
        booster.save_model(str(out / booster_name(job["rank"])))  # every rank: a node ties its evaluations to it
        if job["rank"] == 0:
            best = getattr(booster, "best_iteration", booster.num_boosted_rounds() - 1)
            (out / "history.json").write_text(
                json.dumps({"history": history.get("validation", {}), "best_iteration": int(best)})
            )


if __name__ == "__main__":
    main(sys.argv[1])
