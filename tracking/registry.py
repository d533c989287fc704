"""Registry stage: track one retraining in MLflow, register its model, move the aliases.

Promotion is all-or-nothing: if anything fails after the model version exists, the version is
deleted again and the champion alias is left where it was. A version says how far its registration got
(tag `fedrisk.registration`): `incomplete` while its card and tags are written, `aliases pending` while its
aliases move, `complete` at the end. Only complete versions are shown, scored or promoted; what a failure
could not withdraw (the server gone) the next retraining settles (`settle_unfinished`).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from prefect import get_run_logger

from contract.data import spreadsheet_safe
from contract.schema import Schema
from engines.tuning import Tuning
from errors import first_line
from fed_models.schedule import PARTICIPATION
from hostguard.credentials import masked
from institution.evaluation import (
    InstitutionEvaluation,
    pooled_confusion,
    pooled_ece,
    weighted_metrics,
)
from institution.monitoring import REFERENCE_ARTIFACT, DevelopmentReference
from institution.statistics import FeatureSpace
from institution.validation import ValidationReport
from riskmodel import model as exported
from runconfig import RunConfig
from tracking.fairness import (
    FAIRNESS_ARTIFACT,
    consortium_fairness,
    consortium_proxies,
    fairness_metrics,
    institution_fairness,
)
from tracking.promotion import Decision
from tracking.tuning import log_trials
from tracking.versions import (
    ALIASES_PENDING,
    CHALLENGER,
    CHAMPION,
    COMPLETE,
    CONFIG_ARTIFACT,
    INCOMPLETE,
    MODEL_CARD_ARTIFACT,
    REGISTRATION_TAG,
    registration_complete,
    registration_state,
    validation_page_artifact,
)

PROFILES_ARTIFACT = "validation/profiles.json"
PARTICIPATION_ARTIFACT = "training/participation.json"  # under a deadline or a buffer
PROFILES_TAG = "fedrisk.profiles"
CHECKOUT = Path(__file__).resolve().parents[1]  # the fedrisk checkout a retraining runs from
RISKMODEL_PACKAGE = CHECKOUT / "riskmodel"
# MLflow's own tags: the experiment's page opens on its training runs (not the GenAI overview), and the
# experiment and each run carry a description (MLflow's "note").
EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT = "mlflow.experimentKind", "custom_model_development"
NOTE_TAG = "mlflow.note.content"
SCORING_MODEL = str(RISKMODEL_PACKAGE / "pyfunc.py")


@dataclass(frozen=True)
class Champion:
    """The current champion: its version, the features it scores, and a local copy of it."""

    version: str
    features: list[str]
    path: str


@dataclass(frozen=True)
class Registration:
    run_id: str
    experiment_id: str
    model_name: str
    version: str
    aliases: list[str]
    promoted: bool
    reason: str
    checks: list[str]


def experiment_name(model_name: str) -> str:
    return f"fedrisk-{model_name}"


def artifact_location(tracking_uri: str) -> str | None:
    """A new experiment's artifact location: with a sqlite store, `artifacts/` beside the database (absolute, so
    runs and models resolve from any working directory); else the server's default."""
    if urlparse(tracking_uri).scheme != "sqlite":
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    return (database.parent / "artifacts").resolve().as_uri()


def use_tracking(tracking_uri: str, model_name: str) -> str:
    """Point MLflow at `tracking_uri`; return the model's experiment id (created on first use).

    With a sqlite store, artifacts go to `artifacts/` beside the database as an absolute
    location, so runs and models resolve from any working directory.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    name = experiment_name(model_name)
    tags = {EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT, NOTE_TAG: experiment_description(model_name)}
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        return mlflow.create_experiment(name, artifact_location=artifact_location(tracking_uri), tags=tags)
    client = mlflow.MlflowClient()
    for key, value in tags.items():  # an experiment made by an earlier release, or a description edited away
        if key not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def experiment_description(model_name: str) -> str:
    """What the model's experiment page says first (MLflow's experiment note, Markdown)."""
    return (
        f"Federated retrainings of **{model_name}**: one run per retraining, named by the version it registered "
        "and what started it (`v8 manual`, `v9 scheduled credit-default-weekly`). Each run holds the run config, "
        "every institution's validation, the per-round training metrics, the holdout metrics per institution "
        f"(`challenger/weighted/roc_auc` first), plots and the model card. The versions: Models > {model_name}."
    )


def find_champion(tracking_uri: str, model_name: str, download_dir: Path) -> Champion | None:
    """The version holding the champion alias, downloaded to `download_dir`, or None.

    A local copy is what each institution scores on its holdout (and what a remote
    institution would be sent), so evaluation never depends on registry access.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    use_tracking(tracking_uri, model_name)
    client = mlflow.MlflowClient()
    try:
        version = client.get_registered_model(model_name).aliases.get(CHAMPION)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    if version is None:  # registered, but no version has passed the promotion policy yet
        return None
    uri = f"models:/{model_name}/{version}"
    signature = mlflow.models.get_model_info(uri).signature
    path = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(Path(download_dir) / f"champion-v{version}")))
    return Champion(
        version=str(version), features=list(signature.inputs.input_names()), path=str(exported_model_dir(path))
    )


def exported_model_dir(mlflow_model: Path) -> Path:
    """The exported model (riskmodel: data) inside a downloaded MLflow model; the pyfunc around it is for
    serving. A model registered before riskmodel existed is returned whole."""
    from riskmodel.model import MANIFEST

    return next((p.parent for p in Path(mlflow_model).glob(f"artifacts/*/{MANIFEST}")), Path(mlflow_model))


def find_reference_profiles(tracking_uri: str, model_name: str, lookback: int = 50) -> dict[str, dict]:
    """Each institution's extract profile from the latest registered retraining that admitted it."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(experiment_name(model_name))
    if experiment is None:
        return {}
    runs = mlflow.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{PROFILES_TAG}` = 'logged'",
        order_by=["attributes.start_time DESC"],
        max_results=lookback,
        output_format="list",
    )
    found: dict[str, dict] = {}
    for run in runs:
        for institution, profile in mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{PROFILES_ARTIFACT}").items():
            found.setdefault(institution, profile)
    return found


def _flatten(prefix: str, value) -> dict[str, str]:
    if isinstance(value, dict):
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat.update(_flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return flat
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        flat = {}
        for item in value:
            name = item.get("name", str(len(flat)))
            flat.update(_flatten(f"{prefix}.{name}", {k: v for k, v in item.items() if k != "name"}))
        return flat
    if value is None:
        return {}  # a setting left unset is not a parameter ("None" said nothing)
    if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_relative_to(CHECKOUT):
        return {prefix: str(Path(value).relative_to(CHECKOUT))}  # where in the checkout, not on this machine
    return {prefix: json.dumps(value) if isinstance(value, list) else str(value)}


# Per-round metric names in MLflow (step = round).
ROUND_METRICS = {
    "loss": "train_loss",
    "auc": "train_auc",
    "validation_loss": "validation_loss",
    "validation_auc": "validation_auc",
    "client_update_norm": "client_update_norm",
    "server_update_norm": "server_update_norm",
    "non_finite_updates": "non_finite_updates",
    "bytes_sent": "bytes_sent",
    "institutions": "institutions",
    "num_examples": "train_examples",
}


def _log_institution_input(report: ValidationReport) -> None:
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    class InstitutionExtract(MetaDataset):
        """An institution's extract as metadata only: name, source, digest and row count."""

        @property
        def profile(self):
            return {"num_rows": report.rows}

    with warnings.catch_warnings():  # a local path matches two equivalent local source types
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(report.path)
    dataset = InstitutionExtract(source, name=report.institution, digest=report.digest[:16])
    mlflow.log_input(dataset, context="training", tags={"institution": report.institution})


ROLES = ("challenger", "champion", "local_only", "pooled")
# How each model's figures are named in MLflow: grouped by prefix (the UI groups on "/"), never doubled.
METRIC_PREFIX = {
    "challenger": "challenger",
    "champion": "champion",
    "local_only": "baseline_local_only",
    "pooled": "baseline_pooled_data",
}


def metric_name(role: str, scope: str, key: str) -> str:
    """`challenger/weighted/roc_auc`, `baseline_pooled_data/all_holdouts/ece`, `champion/institution/bank_a/ks`:
    scope is `weighted` (mean over institutions by holdout rows), `all_holdouts` (pooled rows) or an institution."""
    where = scope if scope in ("weighted", "all_holdouts") else f"institution/{scope}"
    return f"{METRIC_PREFIX[role]}/{where}/{key}"


def headline_metrics(evaluations: list[InstitutionEvaluation]) -> dict[str, float]:
    """The new model's figures a reader looks for first: weighted ROC AUC, PR AUC and KS, and the pooled ECE
    the promotion guardrail checks."""
    weighted = weighted_metrics(evaluations, CHALLENGER)
    return {
        "roc_auc": weighted["roc_auc"],
        "pr_auc": weighted["pr_auc"],
        "ks": weighted["ks"],
        "ece": pooled_ece(evaluations, CHALLENGER),
    }


def run_name(version: str | None, lineage: dict[str, str]) -> str:
    """`v7 scheduled credit-default-weekly`, `v8 manual`: the version (once there is one) and what started the
    run. The MLflow run's name; its Prefect flow run's follows the model's name."""
    deployment = lineage.get("prefect.deployment", "").split("/")[-1]
    version_word = f"v{version}" if version else ""
    return " ".join(part for part in (version_word, lineage.get("prefect.trigger", "manual"), deployment) if part)


def run_description(
    model_name: str,
    version: str,
    lineage: dict[str, str],
    decision: Decision,
    training,
    evaluations: list[InstitutionEvaluation],
) -> str:
    """What the run's page says first (MLflow's run note, Markdown): what this retraining made and how."""
    headline = headline_metrics(evaluations)
    started_by = lineage.get("prefect.deployment", "").split("/")[-1] or "by hand (fedrisk retrain)"
    return "\n".join(
        [
            f"Retraining of **{model_name}** that registered **version {version}**: "
            f"{'promoted to champion' if decision.promoted else 'not promoted'} ({decision.reason}).",
            "",
            f"- Started: {lineage.get('prefect.trigger', 'manual')}, {started_by}",
            f"- Institutions: {', '.join(e.institution for e in evaluations)}",
            f"- Training: {lineage.get('training.algorithm', '-')} of {lineage.get('model.kind', '-')}, "
            f"{len(training.rounds)} rounds, exported round {training.best_round}",
            f"- Holdouts (weighted): ROC AUC {headline['roc_auc']:.4f}, PR AUC {headline['pr_auc']:.4f}, "
            f"KS {headline['ks']:.4f}; pooled ECE {headline['ece']:.4f}",
            f"- Privacy: {lineage.get('privacy.mechanism', 'none')}; code: git {lineage.get('git.commit', 'unknown')}",
            "- The model card, the checks pages and the plots are this run's artifacts.",
        ]
    )


def version_description(decision: Decision) -> str:
    """What the version's page says first: the promotion decision, its reason and each check."""
    return "\n".join(
        [
            f"{'Promoted to champion' if decision.promoted else 'Not promoted'}: {decision.reason}",
            "",
            *[f"- {check}" for check in decision.checks],
        ]
    )


def _withdraw(client, model_name: str, version: str, previous_aliases: dict) -> None:
    """Delete a half-registered version and point the challenger alias back where it was."""
    client.delete_model_version(model_name, version)
    if CHALLENGER in previous_aliases:
        client.set_registered_model_alias(model_name, CHALLENGER, str(previous_aliases[CHALLENGER]))


def _fail_registration(client, model_name: str, version: str | None, previous_aliases: dict) -> None:
    """After a failure: withdraw the version (if created) and end the MLflow run FAILED. What cannot be done now
    (the server away) is logged; the version stays marked unfinished, hidden from users, and the run RUNNING,
    until the next retraining settles both."""
    import mlflow

    logger = get_run_logger()
    if version is not None:
        try:
            _withdraw(client, model_name, version, previous_aliases)
        except Exception as error:
            logger.warning(
                "version %s of %s could not be withdrawn (%s); it stays marked unfinished (%s), hidden "
                "from `fedrisk models list`, scoring and promotion, until the next retraining of %s "
                "deletes it",
                version,
                model_name,
                first_line(error),
                REGISTRATION_TAG,
                model_name,
            )
    try:
        mlflow.end_run("FAILED")
    except Exception as error:
        logger.warning(
            "the MLflow run of this registration could not be ended (%s); the next retraining of %s ends it FAILED",
            first_line(error),
            model_name,
        )


def settle_unfinished(client, model_name: str) -> list[str]:
    """Settle what failed registrations could not clean up (the server was away): a version whose registration
    did not finish is completed when its final alias had moved (the registration had landed) and deleted when not;
    the model's MLflow runs still RUNNING end FAILED. Only the holder of the model's retraining lock calls it:
    then no registration is in progress. Returns one line per version settled."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    settled = []
    for v in client.search_model_versions(f"name='{model_name}'"):
        state = registration_state(v)
        if state == COMPLETE:
            continue
        if registration_complete(v, model.aliases):
            client.set_model_version_tag(model_name, v.version, REGISTRATION_TAG, COMPLETE)
            if v.run_id and client.get_run(v.run_id).info.status == "RUNNING":
                client.set_terminated(v.run_id, "FINISHED")
            settled.append(f"version {v.version} marked complete (its final alias had moved before the failure)")
        else:
            client.delete_model_version(model_name, v.version)
            settled.append(
                f"version {v.version} deleted (registration {state}: its retraining failed while registering it)"
            )
    experiment = client.get_experiment_by_name(experiment_name(model_name))
    if experiment is not None:
        for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'"):
            client.set_terminated(run.info.run_id, "FAILED")  # its retraining died while registering
            settled.append(f"MLflow run {run.info.run_id} ended FAILED (its retraining died while registering)")
    aliases = client.get_registered_model(model_name).aliases
    if CHALLENGER not in aliases:  # deleted with a withdrawn version: the challenger is the newest complete one
        newest = max((int(v.version) for v in client.search_model_versions(f"name='{model_name}'")), default=None)
        if newest is not None:
            client.set_registered_model_alias(model_name, CHALLENGER, str(newest))
    return settled


def signature_types(schema: Schema, features: list[str]) -> dict[str, str]:
    """Each input's MLflow type, as the schema declares it: whole numbers `long`, other numbers `double`
    (also whole numbers that may be missing), text levels `string`."""
    types = {}
    for name in features:
        feature = schema.features[name]
        if feature.type == "categorical" and not feature.coded:
            types[name] = "string"
        elif feature.missing is None and (
            feature.type == "boolean" or feature.type == "categorical" or feature.dtype == "int"
        ):
            types[name] = "long"
        else:
            types[name] = "double"
    return types


def input_example(space: FeatureSpace, types: dict[str, str]):
    """An example input built from aggregates only (the consortium's mean, its most common kept level):
    no customer row serves as the example."""
    import pandas as pd

    mean = space.mean
    values, position = {}, 0
    for f in space.layout.features:
        if f.kind == "categorical":
            level = f.levels[0] if f.levels else "(other)"
            values[f.name] = int(level) if f.coded and level.lstrip("-").isdigit() else level
        else:
            values[f.name] = round(mean[position]) if types[f.name] == "long" else float(mean[position])
        position += len(f.columns())
    frame = pd.DataFrame([values])
    return frame.astype({name: "int64" for name, kind in types.items() if kind == "long" and name in frame})


def register_model(
    tracking_uri: str,
    config: RunConfig,
    training,
    space: FeatureSpace,
    evaluations: list[InstitutionEvaluation],
    validation: list[ValidationReport],
    decision: Decision,
    lineage: dict[str, str],
    privacy=None,
    lock_check=None,
    started: float | None = None,
    reference: DevelopmentReference | None = None,
    fairness: dict | None = None,
    tuning: Tuning | None = None,
) -> Registration:
    """Log the retraining as one MLflow run, register its model with its lineage and model card,
    set challenger (and champion when the decision says so).

    `training` is the TrainingOutcome (its model_path an exported model directory); `lineage` the tags
    that trace the version (see tracking.lineage); `privacy` what differential privacy spent (a
    tracking.privacy.PrivacyPlan), or None. If anything fails after the version exists it is deleted again.
    `lock_check(where)` raises when the retraining's lock was lost: called before every registry write that
    creates or changes a version, so a run that lost it registers nothing. `started` (epoch seconds): when the
    retraining began, the run's start, so that its duration is the retraining's. `reference`: the development
    counts later months' monitoring compares with (institution.monitoring.DevelopmentReference), kept with the run;
    `fairness` the consortium's counts by protected group per role (institution.fairness.FairnessCounts); `tuning`
    the study whose best trial this is (a child run per trial).
    """
    import mlflow
    import yaml
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType
    from mlflow.types import Schema as MlflowSchema

    from riskmodel.scorecard import POINTS_TABLE_ARTIFACT, points_table
    from tracking.model_card import model_card_html
    from tracking.plots import (
        calibration_figure,
        convergence_figure,
        fairness_figure,
        importance_figure,
        png,
        roc_figure,
        tuning_figure,
    )

    check = lock_check or (lambda where: None)
    model_name, schema, plain = config.model_name, config.data_schema, config.plain()
    check("before registering")
    experiment_id = use_tracking(tracking_uri, model_name)
    client = mlflow.MlflowClient()
    for line in settle_unfinished(client, model_name):  # this run holds the lock: none is in progress
        get_run_logger().warning("an earlier registration of %s had not finished: %s", model_name, line)
    promotion_tags = {
        "promotion.metric": config.promotion.metric,
        "promotion.decision": "promoted" if decision.promoted else "not promoted",
        "promotion.reason": decision.reason,
        "promotion.checks": "\n".join(decision.checks),
    }
    rounds = training.rounds
    trained = exported.load(Path(training.model_path))
    scorecard = points_table(trained) if trained.scaling is not None else None
    commit = lineage.get("git.commit", "unknown")
    source = {  # MLflow's own fields for what ran (else the venv's `fedrisk` script and no commit)
        "mlflow.source.name": "fedrisk retrain (flows/retrain.py)",
        "mlflow.source.type": "JOB",
        **({"mlflow.source.git.commit": commit} if commit != "unknown" else {}),
    }
    begun = client.create_run(
        experiment_id,
        start_time=int(1000 * started) if started else None,
        tags={**lineage, **source},
        run_name=run_name(None, lineage),
    )
    run = mlflow.start_run(run_id=begun.info.run_id)
    version, previous_aliases = None, {}
    try:
        mlflow.log_params(_flatten("", {k: v for k, v in plain.items() if k != "intended_use"}))
        mlflow.log_text(yaml.safe_dump(plain, sort_keys=False), CONFIG_ARTIFACT)
        mlflow.log_metrics(headline_metrics(evaluations))  # first: MLflow's run page lists metrics as logged
        for r in rounds:
            mlflow.log_metrics(
                {ROUND_METRICS.get(key, key): float(value) for key, value in r.items() if key != "round"},
                step=r["round"],
            )
        if tuning is not None:  # each trial a child run of this one
            log_trials(client, experiment_id, run.info.run_id, tuning)
        if training.participation:  # under a deadline or a buffer: each institution, each round
            mlflow.log_dict(
                {"columns": list(PARTICIPATION), "institutions": training.participation}, PARTICIPATION_ARTIFACT
            )
        mlflow.log_metrics(
            {
                "rounds_run": len(rounds),
                "best_round": training.best_round,
                "resumed_from_round": training.resumed_from_round,
                "positive_class_weight": training.positive_class_weight,
            }
        )
        mlflow.set_tag("training.stopped_early", str(training.stopped_early).lower())
        if privacy is not None:
            for i in privacy.institutions:
                mlflow.log_metrics(
                    {
                        f"privacy/epsilon/{i.institution}": i.epsilon,
                        f"privacy/delta/{i.institution}": i.delta,
                        f"privacy/noise_multiplier/{i.institution}": i.noise_multiplier,
                    }
                )
        for evaluation in evaluations:
            for role, metrics in evaluation.metrics.items():
                mlflow.log_metrics({metric_name(role, evaluation.institution, k): v for k, v in metrics.items()})
            for role, counts in evaluation.confusion.items():
                mlflow.log_metrics({metric_name(role, evaluation.institution, k): v for k, v in counts.items()})
            mlflow.log_metric(f"holdout_rows/{evaluation.institution}", evaluation.examples)
        for role in ROLES:
            if any(role in e.metrics for e in evaluations):
                mlflow.log_metrics(
                    {metric_name(role, "weighted", k): v for k, v in weighted_metrics(evaluations, role).items()}
                )
                mlflow.log_metrics(
                    {metric_name(role, "all_holdouts", k): v for k, v in pooled_confusion(evaluations, role).items()}
                )
                mlflow.log_metric(metric_name(role, "all_holdouts", "ece"), pooled_ece(evaluations, role))
        mlflow.log_dict({"evaluations": [asdict(e) for e in evaluations]}, "evaluation/institutions.json")
        if reference is not None:  # what the champion's monitoring compares each later month with
            mlflow.log_dict(reference.to_json(), REFERENCE_ARTIFACT)
        for report in validation:
            if report.passed:
                _log_institution_input(report)
        mlflow.log_dict({"reports": [asdict(r) for r in validation]}, "validation/summary.json")
        mlflow.log_dict({r.institution: r.profile for r in validation if r.passed}, PROFILES_ARTIFACT)
        for report in validation:
            if report.data_docs and Path(report.data_docs).exists():
                mlflow.log_text(Path(report.data_docs).read_text(), validation_page_artifact(report.institution))
        figures = {
            "convergence": convergence_figure(rounds, training.best_round),
            "roc": roc_figure(evaluations),
            "calibration": calibration_figure(evaluations),
        }
        protected = config.data_schema.protected_references
        fair = consortium_fairness(fairness or {}, protected)
        if fair is not None:  # the fair-lending figures: metrics, their JSON, a plot per protected attribute
            mlflow.log_metrics(
                fairness_metrics(fair, institution_fairness(evaluations, protected), consortium_proxies(fairness or {}))
            )
            mlflow.log_dict({"cutoff": config.evaluation.threshold, "attributes": [asdict(f) for f in fair]},
                            FAIRNESS_ARTIFACT)  # fmt: skip
            for attribute in fair:
                figures[f"fairness_{attribute.attribute}"] = fairness_figure(
                    attribute, config.promotion.min_adverse_impact_ratio
                )
        if tuning is not None:
            figures["tuning"] = tuning_figure(tuning.trials)
        gain = trained.feature_gain()
        if gain:
            figures["feature_importance"] = importance_figure(gain)
            mlflow.log_dict(gain, "feature_importance.json")
        plots = {name: png(figure) for name, figure in figures.items()}  # rendered once: logged, and in the card
        with tempfile.TemporaryDirectory() as folder:
            for name, image in plots.items():
                (Path(folder) / f"{name}.png").write_bytes(image)
            mlflow.log_artifacts(folder, "plots")
        if scorecard is not None:
            mlflow.log_text(spreadsheet_safe(scorecard).to_csv(index=False), POINTS_TABLE_ARTIFACT)
        types = signature_types(schema, space.layout.raw_features)
        signature = ModelSignature(
            inputs=MlflowSchema([ColSpec(getattr(DataType, kind), name) for name, kind in types.items()]),
            outputs=MlflowSchema([ColSpec(DataType.double, schema.output)]),
        )
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=SCORING_MODEL,
            artifacts={"riskmodel": str(training.model_path)},
            code_paths=[str(RISKMODEL_PACKAGE)],
            input_example=input_example(space, types),
            signature=signature,
            pip_requirements=_requirements(trained.engine),
        )
        check("before creating the model version")
        version = str(
            mlflow.register_model(info.model_uri, model_name, tags={**lineage, REGISTRATION_TAG: INCOMPLETE}).version
        )
        previous_aliases = dict(client.get_registered_model(model_name).aliases)
        mlflow.log_text(
            model_card_html(
                model_name=model_name,
                version=version,
                run_id=run.info.run_id,
                config=config,
                decision=decision,
                lineage=lineage,
                validation=validation,
                evaluations=evaluations,
                training=training,
                figures=plots,
                privacy=privacy,
                layout=space.layout,
                scorecard=scorecard,
                fairness=fairness,
            ),
            MODEL_CARD_ARTIFACT,
        )
        # runs:/ resolves wherever the store is (a local path would not, on another machine).
        for key, value in {**promotion_tags, "model_card": f"runs:/{run.info.run_id}/{MODEL_CARD_ARTIFACT}"}.items():
            client.set_model_version_tag(model_name, version, key, value)
        mlflow.set_tags(
            {
                **promotion_tags,
                "model.version": version,
                PROFILES_TAG: "logged",
                "mlflow.runName": run_name(version, lineage),
                NOTE_TAG: run_description(model_name, version, lineage, decision, training, evaluations),
            }
        )
        client.update_model_version(model_name, version, description=version_description(decision))
        client.update_registered_model(model_name, description=config.use)  # the card's intended use
        check(f"before moving the aliases to version {version}")
        client.set_model_version_tag(model_name, version, REGISTRATION_TAG, ALIASES_PENDING)
        client.set_registered_model_alias(model_name, CHALLENGER, version)
        aliases = [CHALLENGER]
        if decision.promoted:  # last: once the champion moves, the version is registered
            client.set_registered_model_alias(model_name, CHAMPION, version)
            aliases.append(CHAMPION)
    except BaseException:
        _fail_registration(client, model_name, version, previous_aliases)
        raise
    # Registered (its final alias moved): what follows only records it, and is completed later if it fails.
    try:
        mlflow.end_run()
        client.set_model_version_tag(model_name, version, REGISTRATION_TAG, COMPLETE)
    except Exception as error:
        get_run_logger().warning(
            "version %s of %s is registered, but marking it complete failed (%s); the next retraining marks it",
            version,
            model_name,
            first_line(error),
        )
    return Registration(
        run_id=run.info.run_id,
        experiment_id=experiment_id,
        model_name=model_name,
        version=version,
        aliases=aliases,
        promoted=decision.promoted,
        reason=decision.reason,
        checks=decision.checks,
    )


def _requirements(model_format: str) -> list[str]:
    """What scoring an exported model of `model_format` needs (pinned to what trained it); inferring them costs
    ~13 s."""
    import importlib.metadata

    import mlflow
    import numpy as np
    import pandas as pd

    runtime = exported.RUNTIME_PACKAGES[model_format]
    return [
        f"{runtime}=={importlib.metadata.version(runtime)}",
        f"mlflow=={mlflow.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
    ]


def promote_manually(tracking_uri: str, model_name: str, version: str, reason: str, user: str) -> str | None:
    """Make `version` the champion by hand (overriding the policy); record who, when, why and what it
    replaced on the version. Returns the previous champion's version (None if there was none)."""
    import datetime

    import mlflow
    from mlflow.exceptions import MlflowException

    if not reason.strip():
        raise ValueError("a manual promotion needs a reason (--reason), recorded with the version")
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    try:
        found = client.get_model_version(model_name, version)
    except MlflowException:
        raise LookupError(f"{model_name} has no version {version} in {masked(tracking_uri)}") from None
    if not registration_complete(found, client.get_registered_model(model_name).aliases):
        raise ValueError(
            f"{model_name} version {version}'s registration did not finish ({registration_state(found)}); "
            f"it cannot be promoted, and the next retraining of {model_name} deletes it"
        )
    try:
        previous = str(client.get_model_version_by_alias(model_name, CHAMPION).version)
    except MlflowException:
        previous = None
    if previous == str(version):
        raise ValueError(f"{model_name} version {version} is already the champion")
    policy_decision = client.get_model_version(model_name, version).tags.get("promotion.decision", "none")
    record = {
        "promotion.override.policy_decision": policy_decision,
        "promotion.override.reason": reason.strip(),
        "promotion.override.by": user,
        "promotion.override.at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "promotion.override.previous_champion": previous or "none",
    }
    for key, value in record.items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_model_version_tag(model_name, version, "promotion.decision", "promoted (manual override)")
    client.set_registered_model_alias(model_name, CHAMPION, version)
    return previous
