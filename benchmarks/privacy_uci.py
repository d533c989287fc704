"""What record-level differential privacy costs in accuracy, and what it buys against an attacker,
on the real UCI credit data.

    uv run python benchmarks/privacy_uci.py [--epsilons 1,3,8] [--seeds 0,1,2] [--json out.json]

Utility: bank_a/b/c train a federated logistic regression and MLP(64, 32) with FedAvg, without DP
and with DP-SGD in every bank calibrated to each epsilon (delta = 1/n per bank, clip 1, expected
batch 256, a fixed number of rounds; the noise is calibrated to them); holdout.csv scores. Mean and
std of holdout AUC over seeds (DP noise comes from the OS, so seeds vary the splits and
initialisation and the noise varies anyway).

Attack: a loss-threshold membership-inference attack (Yeom et al. 2018) guesses whether a customer
was in training from the model's loss on that customer. Its advantage (true-positive minus
false-positive rate at the best threshold, over the banks' training rows against as many
holdout.csv rows) is measured twice: on the utility models above, and on a setting built to
memorize (400 customers per bank, MLP(64, 64), 20 local epochs per round), without DP and at each
epsilon. 0 means the model tells an attacker nothing about who was in training.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import (
    UCI_DIR,
    Institution,
    arrays,
    mean_std,
    partition_uci,
    require_uci,
    split_institutions,
    standardize,
    write_json,
)

from engines.privacy import membership_advantage, plan_privacy
from institution.evaluation import binary_metrics
from runconfig import PrivacyConfig, TrainingConfig

UTILITY_MODELS = {"logistic_regression": (), "mlp": (64, 32)}
MEMORIZING = (64, 64)  # without dropout or DP, it learns 400 customers per bank by heart


def plan_noise(plan) -> dict[str, float]:
    """Each institution's noise multiplier in a privacy plan."""
    return {i.institution: i.noise_multiplier for i in plan.institutions}


def _train(
    institutions: list[Institution],
    mean,
    std,
    hidden: tuple[int, ...],
    *,
    epsilon: float | None,
    rounds: int,
    local_epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    privacy_rng: np.random.Generator | None = None,
):
    """Weights of a FedAvg model over `institutions`, with DP-SGD at `epsilon` (None: no DP), and the plan.
    `privacy_rng` fixes the DP sampling and noise (tests); by default they come from the OS."""
    from fed_models.keras_models import ModelSpec
    from fed_models.training import ClientData, RecordLevelPrivacy, TrainingSpec, train

    plan = None
    if epsilon is not None:
        plan = plan_privacy(
            PrivacyConfig(mechanism="record_level", clip_norm=1.0, target_epsilon=epsilon),
            TrainingConfig(rounds=rounds, batch_size=batch_size, local_epochs=local_epochs),
            {i.name: len(i.y_fit) for i in institutions},
        )
    model = ModelSpec("mlp" if hidden else "logistic_regression", hidden, 0.0, seed=seed)
    spec = TrainingSpec(
        model=model,
        rounds=rounds,
        local_epochs=local_epochs,
        batch_size=batch_size,
        client_learning_rate=learning_rate,
        seed=seed,
        privacy=RecordLevelPrivacy(1.0, plan_noise(plan)) if plan else None,
    )
    result = train(
        [ClientData(i.name, i.x_fit, i.y_fit) for i in institutions], mean, std, spec, privacy_rng=privacy_rng
    )
    return model, result.weights, plan


def _score(model_spec, weights, mean, std, institutions: list[Institution], x_out, y_out) -> tuple[float, float]:
    """The model's ROC AUC on the unseen rows, and the membership advantage of the loss-threshold attack:
    the institutions' training rows against as many unseen rows."""
    from fed_models.keras_models import WeightedBinaryCrossentropy, build_model, predict_proba

    model = build_model(model_spec, mean, std)
    model.set_weights(weights)
    loss = WeightedBinaryCrossentropy().call
    x_in = np.concatenate([i.x_fit for i in institutions])
    y_in = np.concatenate([i.y_fit for i in institutions])
    n = min(len(x_in), len(x_out))

    def losses(x, y):
        return loss(y.reshape(-1, 1).astype(np.float32), predict_proba(model, x).reshape(-1, 1)).numpy()

    return (
        binary_metrics(y_out, predict_proba(model, x_out))["roc_auc"],
        membership_advantage(losses(x_in[:n], y_in[:n]), losses(x_out[:n], y_out[:n])),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=UCI_DIR)
    parser.add_argument("--epsilons", default="1,3,8")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--models", default=",".join(UTILITY_MODELS), help=f"of {list(UTILITY_MODELS)} (mlp is 64, 32)")
    parser.add_argument("--rounds", type=int, default=30, help="rounds of the utility models (DP and not)")
    parser.add_argument("--batch-size", type=int, default=256, help="expected batch of DP-SGD (and of SGD)")
    parser.add_argument(
        "--dp-learning-rate", type=float, default=1.0, help="SGD with DP (noisy steps take larger rates)"
    )
    parser.add_argument("--learning-rate", type=float, default=0.2, help="SGD without DP")
    parser.add_argument("--attack-rows", type=int, default=400, help="customers per bank in the memorizing setting")
    parser.add_argument("--attack-rounds", type=int, default=10)
    parser.add_argument("--attack-epochs", type=int, default=20)
    parser.add_argument("--attack-dp-learning-rate", type=float, default=0.2)
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/privacy_uci.json")
    args = parser.parse_args()
    require_uci(args.data_dir)
    epsilons = [None, *[float(e) for e in args.epsilons.split(",")]]
    frames, holdout = partition_uci(args.data_dir, "iid")
    x_test, y_test = arrays(holdout)
    rows = []

    def record(setting: str, model: str, epsilon, seed: int, auc: float, advantage: float, plan, seconds: float):
        rows.append(
            {
                "setting": setting,
                "model": model,
                "epsilon": epsilon,
                "seed": seed,
                "holdout_auc": auc,
                "attack_advantage": advantage,
                "seconds": round(seconds, 1),
                "noise_multipliers": plan_noise(plan) if plan else None,
                "epsilon_spent": {i.institution: i.epsilon for i in plan.institutions} if plan else None,
            }
        )
        print(
            f"  {setting} {model} epsilon {epsilon or 'none':>4} seed {seed}: holdout AUC {auc:.4f}, attack "
            f"advantage {advantage:.4f} ({seconds:.0f} s)",
            flush=True,
        )

    for seed in [int(s) for s in args.seeds.split(",")]:
        institutions = split_institutions(frames, 0.1, seed)
        mean, std = standardize(institutions)
        for name in args.models.split(","):
            for epsilon in epsilons:
                started = time.perf_counter()
                spec, weights, plan = _train(
                    institutions,
                    mean,
                    std,
                    UTILITY_MODELS[name],
                    epsilon=epsilon,
                    rounds=args.rounds,
                    local_epochs=1,
                    batch_size=args.batch_size,
                    seed=seed,
                    learning_rate=args.dp_learning_rate if epsilon else args.learning_rate,
                )
                label = f"mlp{list(UTILITY_MODELS[name])}" if UTILITY_MODELS[name] else name
                record(
                    "utility",
                    label,
                    epsilon,
                    seed,
                    *_score(spec, weights, mean, std, institutions, x_test, y_test),
                    plan,
                    time.perf_counter() - started,
                )
        small = [
            Institution(
                i.name, i.x_fit[: args.attack_rows], i.y_fit[: args.attack_rows], i.x_validation, i.y_validation
            )
            for i in institutions
        ]
        for epsilon in epsilons:
            started = time.perf_counter()
            spec, weights, plan = _train(
                small,
                mean,
                std,
                MEMORIZING,
                epsilon=epsilon,
                rounds=args.attack_rounds,
                local_epochs=args.attack_epochs,
                batch_size=64,
                seed=seed,
                learning_rate=args.attack_dp_learning_rate if epsilon else 0.5,
            )
            record(
                "memorizing",
                f"mlp{list(MEMORIZING)}",
                epsilon,
                seed,
                *_score(spec, weights, mean, std, small, x_test, y_test),
                plan,
                time.perf_counter() - started,
            )

    print(f"\n{'setting':<11} {'model':<20} {'epsilon':>8} {'holdout AUC':>17} {'attack advantage':>17}")
    for setting, model in dict.fromkeys((r["setting"], r["model"]) for r in rows):
        for epsilon in epsilons:
            runs = [r for r in rows if (r["setting"], r["model"], r["epsilon"]) == (setting, model, epsilon)]
            print(
                f"{setting:<11} {model:<20} {epsilon or 'none':>8} {mean_std([r['holdout_auc'] for r in runs]):>17} "
                f"{mean_std([r['attack_advantage'] for r in runs]):>17}"
            )
    print(f"wrote {write_json(args.json, 'privacy_uci', args, rows)}")


if __name__ == "__main__":
    main()
