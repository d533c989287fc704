"""The retraining flow: validate each institution -> federated statistics -> train -> evaluate -> register."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from consortium.protocol import Consortium
from contract.data import Split, fit_rows
from contract.schema import schema_file
from engines.base import TrainingOutcome
from engines.privacy import PrivacyPlan, composed, plan_privacy, privacy_tags, spent_privacy
from engines.tuning import Tuning
from errors import FedriskError, first_line
from flows.config import load_config
from flows.lock import LockHold, model_lock
from flows.monitor import MonitoringBreach
from flows.settings import PROJECT_ROOT, Settings
from flows.tune import tune
from flows.validate import consortium_of, validate_consortium
from hostguard.credentials import masked
from institution.evaluation import InstitutionEvaluation, weighted_metrics
from institution.monitoring import DevelopmentReference
from institution.statistics import FeatureSpace, feature_space
from institution.validation import (
    REFUSED_AT_START,
    QuorumNotMet,
    ValidationReport,
    admitted_institutions,
    refused_at_start,
)
from riskmodel.scaling import Scaling
from runconfig import RunConfig
from tasks.per_institution import (
    compute_local_statistics,
    compute_secure_statistics,
    evaluate_institution,
    sum_development_counts,
    sum_fairness_counts,
)
from tasks.privacy import record_ledger_version, reserve_privacy_budget, settle_privacy_budget
from tasks.registry import find_champion, register_model
from tasks.reporting import publish_summary, publish_validation_table, summary_markdown
from tasks.retries import service_retries
from tasks.training import train_federated, train_local_baseline, train_pooled_baseline, worker_isolation
from tracking.fairness import summed_fairness
from tracking.lineage import git_state, lineage_tags, suite_digest, suite_file, uncounted
from tracking.monitoring import cooldown_left
from tracking.promotion import decide_promotion
from tracking.registry import Registration, run_name
from tracking.tuning import tuning_tags


@dataclass(frozen=True)
class RetrainSummary:
    model_name: str
    validation: list[ValidationReport]
    training: TrainingOutcome
    evaluations: list[InstitutionEvaluation]
    weighted: dict[str, float]
    registration: Registration
    privacy: PrivacyPlan | None = None


def run_key(config: RunConfig, admitted: list[ValidationReport], space: FeatureSpace) -> str:
    """What decides the trained weights: training settings, schema, data split, each admitted extract's
    digest and the feature layout. A retraining with the same key resumes the checkpoints of an interrupted one.
    """
    decided_by = {
        "training": config.training.model_dump(mode="json"),
        "privacy": config.privacy.model_dump(mode="json"),
        "schema": [config.data_schema.name, config.data_schema.version],
        "features": config.feature_names,
        "seed": config.seed,
        "holdout_fraction": config.holdout_fraction,
        "extracts": {r.institution: r.digest for r in admitted},
        "layout": space.layout.to_json(),
        "mean": list(space.mean),
        "std": list(space.std),
    }
    return hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()[:16]


def training_id(run_dir: Path, key: str) -> str:
    """This training's identity at the nodes: kept beside its checkpoints, so a resumed or retried training
    is the same training (a node answers a round it trained again, and charges it once), while a later
    retraining of the same inputs is a new one."""
    import uuid

    path = Path(run_dir) / "training_id"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{key}-{uuid.uuid4().hex[:12]}")
    return path.read_text().strip()


def flow_run_url(flow_run_id) -> str | None:
    """A flow run's page in the Prefect UI, when runs go to a Prefect server (not a temporary API)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL
    from prefect.utilities.urls import url_for

    from flows.prefect_api import is_temporary

    api_url = PREFECT_API_URL.value()
    if not api_url or not PREFECT_UI_URL.value() or is_temporary(api_url):
        return None
    return url_for("flow-run", obj_id=flow_run_id)


def _trigger() -> str:
    """How this run started: `scheduled` (a deployment's schedule), `triggered` (a deployment run on demand:
    `fedrisk trigger`, the Prefect UI) or `manual` (`fedrisk retrain`, `demo`)."""
    from prefect.runtime import deployment

    if not deployment.id:
        return "manual"
    return "scheduled" if "auto-scheduled" in (flow_run.tags or []) else "triggered"


def _deployment_name() -> str | None:
    """`flow/deployment` when a deployment (schedule or trigger) started this run."""
    from prefect.runtime import deployment

    return f"{flow_run.flow_name}/{deployment.name}" if deployment.id else None


def name_flow_run(model_name: str, version: str | None = None, trigger: str | None = None) -> None:
    """Name this retraining's Prefect flow run as its MLflow run is named, the model first (`credit_default_demo
    manual`, once registered `credit_default_demo v8 manual`, `... v9 scheduled credit-default-weekly`), and tag
    it with the model, what started it and the version, so that runs can be told apart and filtered."""
    from prefect.client.orchestration import get_client

    trigger, deployment = trigger or _trigger(), _deployment_name()
    words = run_name(version, {"prefect.trigger": trigger, "prefect.deployment": deployment or ""})
    tags = {*flow_run.tags, f"model:{model_name}", f"trigger:{trigger}", *([f"version:{version}"] if version else [])}
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=f"{model_name} {words}", tags=sorted(tags))
    except Exception as error:  # a name is for people: the retraining goes on without it
        get_run_logger().warning("the Prefect flow run could not be renamed (%s)", error)


@flow(name="retrain", flow_run_name="{config.model_name}")
def retrain(config: RunConfig) -> RetrainSummary:
    """Retrain `config.model_name` on the institutions that pass validation, and register it."""
    settings = Settings()  # read once per flow run, from the environment of the process that runs it
    with model_lock(config.model_name, settings.lock_wait_seconds) as lock:
        return run_retraining(config, lock, settings)


def _run_name_from_parameters() -> str:
    from prefect.runtime import flow_run as current

    config_file = str(current.parameters.get("config_file", "config"))
    try:
        model_name = yaml.safe_load(Path(resolve_config_file(config_file)).read_text())["model_name"]
    except Exception:  # the flow itself reports a bad config file; this only names the run
        model_name = Path(config_file).stem
    return model_name  # renamed with what started it, and then its version (name_flow_run)


def resolve_config_file(config_file: str) -> Path:
    """A deployment's config file: absolute, or relative to the project root (where deployments run)."""
    path = Path(config_file)
    return path if path.is_absolute() else PROJECT_ROOT / path


@flow(name="retrain-from-config", flow_run_name=_run_name_from_parameters)
def retrain_from_config(
    config_file: str, overrides: dict[str, Any] | None = None, monitoring: MonitoringBreach | None = None
) -> dict[str, Any]:
    """The deployments' entry point: retrain what a committed config file describes, with dotted-key
    overrides (`{"training.rounds": 5}`) applied, and return what was registered. `monitoring`: the breach
    that started it (the automation of the retrain-on-breach deployment), recorded in the version's lineage; within
    the config's monitoring.cooldown_hours of the last such retraining nothing is trained.

    `config_file` is relative to the project root unless absolute. A bad file or override fails
    the run at once with the config error (no retry).
    """
    settings = Settings()  # read once per flow run, from the environment of the process that runs it
    config = load_config(resolve_config_file(config_file), overrides or {}, expectations_dir=settings.expectations_dir)
    with model_lock(config.model_name, settings.lock_wait_seconds) as lock:
        if monitoring is not None:
            waiting = cooldown_left(settings.mlflow_tracking_uri, config.model_name, config.monitoring.cooldown_hours)
            if waiting:
                get_run_logger().warning(
                    "not retrained: %s; the breach (%s, %s) is in monitoring run %s",
                    waiting,
                    monitoring.period,
                    monitoring.reason,
                    monitoring.mlflow_run_id,
                )
                return {"model_name": config.model_name, "skipped": waiting}
        summary = run_retraining(config, lock, settings, monitoring)
    registration = summary.registration
    return {
        "model_name": registration.model_name,
        "version": registration.version,
        "aliases": registration.aliases,
        "promoted": registration.promoted,
        "reason": registration.reason,
        "mlflow_run_id": registration.run_id,
    }


def run_retraining(
    config: RunConfig, lock: LockHold, settings: Settings, monitoring: MonitoringBreach | None = None
) -> RetrainSummary:
    """The retraining itself, inside whichever flow runs it, holding the model's lock: verified at each round
    and before every write to the registry or the ledger; `settings` as the flow read them; `monitoring` the
    breach that started it, if one did. A short list of stages, each returning what the next needs."""
    started = time.time()
    trigger = "monitoring" if monitoring is not None else _trigger()
    name_flow_run(config.model_name, trigger=trigger)
    isolation = worker_isolation(settings.allow_exposed_worker)  # refused here: nothing read or trained
    admission = admit(config, settings)
    logger = get_run_logger()
    with tempfile.TemporaryDirectory(prefix="fedrisk-") as work_dir:
        logger.info("looking up the champion of %s in MLflow", config.model_name)
        # The registry is consulted before training so an unreachable one costs no training.
        champion = find_champion(settings.mlflow_tracking_uri, config.model_name, Path(work_dir))
        features = prepare_features(config, admission, settings)
        key = run_key(config, admission.admitted_reports, features.space)
        run_dir = settings.runs_dir / config.model_name / key
        budget = reserve_privacy(config, settings, lock, features, key)
        evaluated = champion if champion is not None and champion.features == config.feature_names else None
        # Each node is told the training's id and the champion it will score; it evaluates no other model.
        training_key = training_id(run_dir, key)
        scored_champion = Path(evaluated.path) if evaluated else None
        tuning = None
        if config.tuning is not None:  # trials, each a training; the best one's model is the challenger
            tuning, consortium = tune(
                config,
                admission.consortium,
                scored_champion,
                features,
                run_dir,
                isolation,
                training_key,
                lock,
                private=budget.plan is not None,
            )
            assert tuning.best.outcome is not None and tuning.best.training is not None
            training = tuning.best.outcome
            # The version was trained with the best trial's settings: its config (lineage, baselines) says so.
            config = config.model_copy(update={"training": tuning.best.training})
        else:
            consortium = admission.consortium.for_run(training_key, scored_champion)
            training = train_federated(
                config.model_name,
                consortium,
                features.space,
                training=config.training,
                positive_weight=features.positive_weight,
                model_dir=run_dir / "model",
                checkpoint_dir=run_dir / "checkpoints",
                privacy=budget.plan,
                isolation=isolation,
                scaling=Scaling(**config.scorecard.model_dump()),
                run_key=training_key,
                lock_check=lock.verify,
            )
        validation = admission.validation
        if any(why.startswith(REFUSED_AT_START) for why in training.lost.values()):
            validation = refused_at_start(validation, training.lost)  # the table shows who refused, and why
            publish_validation_table(config.model_name, validation)
        spent = settle_privacy(settings, lock, budget, training, tuning)
        evaluations = evaluate(config, consortium, features, training, evaluated, champion, Path(work_dir))
        reference = development_reference(consortium, training, evaluations)
        fairness = consortium_fairness_counts(config, consortium, training, evaluations)
        protected = config.data_schema.protected_references
        decision = decide_promotion(
            config.promotion,
            evaluations,
            champion.version if champion else None,
            training.lost,
            protected,
            fairness,
            uncounted(getattr(training, "participation", {})),
        )
        registration = register(
            config,
            settings,
            lock,
            validation=validation,
            admitted=consortium.names,
            features=features,
            training=training,
            budget=budget,
            spent=spent,
            evaluations=evaluations,
            decision=decision,
            isolation=isolation,
            started=started,
            trigger=trigger,
            monitoring=monitoring,
            reference=reference,
            fairness=fairness,
            tuning=tuning,
        )
    shutil.rmtree(run_dir, ignore_errors=True)  # registered: nothing left to resume
    name_flow_run(config.model_name, registration.version, trigger=trigger)
    logger.info(
        "registered %s version %s (aliases: %s)",
        registration.model_name,
        registration.version,
        ", ".join(registration.aliases),
    )
    publish_summary(
        config.model_name,
        summary_markdown(
            config.model_name,
            validation,
            evaluations,
            registration,
            settings.mlflow_ui_url,
            training=training,
            privacy=spent,
            protected=config.data_schema.protected_references,
            fairness=fairness,
        ),
    )
    return RetrainSummary(
        model_name=config.model_name,
        validation=validation,
        training=training,
        evaluations=evaluations,
        weighted=weighted_metrics(evaluations, "challenger"),
        registration=registration,
        privacy=spent,
    )


@dataclass(frozen=True)
class Admission:
    """Validation's outcome: every institution's report, and the consortium of those admitted (each pinned to
    the digest validation saw: every later read of an extract, or request to a node, checks it)."""

    validation: list[ValidationReport]
    consortium: Consortium

    @property
    def admitted_reports(self) -> list[ValidationReport]:
        reports = {r.institution: r for r in self.validation}
        return [reports[name] for name in self.consortium.names]


def admit(config: RunConfig, settings: Settings) -> Admission:
    """Validate every institution; QuorumNotMet (published as the run's summary) when too few pass, or too few
    for secure aggregation's threshold."""
    consortium = consortium_of(config)
    validation = validate_consortium(config, consortium)
    try:
        passed = admitted_institutions(validation, config.quorum, config.quorum_row_share)
        secure = config.secure_aggregation
        if secure is not None and len(passed) < max(secure.min_institutions, consortium.secure_threshold):
            raise QuorumNotMet(
                f"secure aggregation needs at least {max(secure.min_institutions, consortium.secure_threshold)} "
                f"institutions (min_institutions {secure.min_institutions}, threshold {consortium.secure_threshold}); "
                f"{len(passed)} passed validation; nothing was trained or registered"
            )
    except QuorumNotMet as error:
        publish_summary(
            config.model_name,
            summary_markdown(config.model_name, validation, [], None, settings.mlflow_ui_url, failure=str(error)),
        )
        raise
    return Admission(validation, consortium.admit(validation))


@dataclass(frozen=True)
class PreparedFeatures:
    """The feature space the admitted institutions' statistics give, each one's training rows (public, as in its
    validation report), and the run's positive-class weight resolved from them."""

    space: FeatureSpace
    counts: dict[str, int]
    positive_weight: float


def prepare_features(config: RunConfig, admission: Admission, settings: Settings) -> PreparedFeatures:
    """Federated statistics (counts, sums and sums of squares; a secure sum under secure aggregation) -> the
    feature space."""
    consortium, schema, features = admission.consortium, config.data_schema, config.feature_names
    split = Split(config.holdout_fraction, config.training.validation_fraction, config.seed)
    get_run_logger().info(
        "federated statistics of %d institutions (counts, sums and sums of squares; no rows)%s",
        len(consortium.names),
        " by secure aggregation" if config.secure_aggregation is not None else "",
    )
    if config.secure_aggregation is not None:
        summed, counts = compute_secure_statistics(
            consortium, schema, features, split, settings.runs_dir / "secure_statistics"
        )
        statistics = [summed]
    else:
        statistics = [compute_local_statistics(consortium, name, schema, features, split) for name in consortium.names]
        counts = {s.institution: s.count for s in statistics}
    space = feature_space(schema, features, split, statistics)
    return PreparedFeatures(space, counts, space.positive_weight(config.training.positive_class_weight))


@dataclass(frozen=True)
class PrivacyBudget:
    """What differential privacy will spend per institution (None: none), and the ledger entry reserving it."""

    plan: PrivacyPlan | None
    ledger_run: str | None


def reserve_privacy(
    config: RunConfig, settings: Settings, lock: LockHold, features: PreparedFeatures, key: str
) -> PrivacyBudget:
    """Privacy is planned, and the ledger consulted and reserved, before anything is trained."""
    fit = {name: fit_rows(count, config.training.validation_fraction) for name, count in features.counts.items()}
    plan = plan_privacy(config.privacy, config.training, fit, config.seed)
    if not plan:
        return PrivacyBudget(None, None)
    lock.verify("before reserving the privacy budget")
    ledger_run = reserve_privacy_budget(
        settings.mlflow_tracking_uri, config.model_name, key, str(flow_run.id), plan, config.privacy_budgets()
    )
    return PrivacyBudget(plan, ledger_run)


def settle_privacy(
    settings: Settings, lock: LockHold, budget: PrivacyBudget, training: TrainingOutcome, tuning: Tuning | None = None
) -> PrivacyPlan | None:
    """What the training spent (the rounds each node reports it trained, at its own account), settled in the
    ledger; under tuning, what every trial spent, added up; None without differential privacy."""
    if budget.plan is None:
        return None
    if tuning is not None:
        spent = composed(tuning.spent)
    else:
        spent = spent_privacy(budget.plan, training.rounds_trained, training.charged)
    lock.verify("before settling the privacy ledger")
    settle_privacy_budget.with_options(**service_retries(settings.registry_retry_seconds))(
        settings.mlflow_tracking_uri, budget.ledger_run, spent
    )
    return spent


def evaluate(
    config: RunConfig,
    consortium: Consortium,
    features: PreparedFeatures,
    training: TrainingOutcome,
    evaluated,
    champion,
    work_dir: Path,
) -> list[InstitutionEvaluation]:
    """Each institution that trained scores the new model (and the champion, `evaluated`, when it has the same
    features) on its holdout; in simulation, also the pooled-data and local-only baselines."""
    logger = get_run_logger()
    models = {"challenger": training.model_path}
    if evaluated is not None:
        models["champion"] = evaluated.path
    per_institution = {name: dict(models) for name in consortium.names}
    if config.baselines.enabled and consortium.extracts:
        logger.info("simulation baselines: the same model on the pooled rows, and on each institution's own")
        common = dict(training=config.training, baselines=config.baselines, positive_weight=features.positive_weight)
        pooled = train_pooled_baseline(
            list(consortium.extracts), features.space, model_dir=work_dir / "pooled", **common
        )
        for e in consortium.extracts:
            logger.info("local-only baseline of %s: the same model on its rows alone", e.institution)
            local = train_local_baseline(
                e,
                config.data_schema,
                config.feature_names,
                features.space.split,
                model_dir=work_dir / f"local-{e.institution}",
                **common,
            )
            per_institution[e.institution].update(local_only=local, pooled=pooled)
    trained = [name for name in consortium.names if name not in training.lost]
    roles = {
        "challenger": "the new model",
        "champion": f"champion version {champion.version if champion else ''}",
        "local_only": "the local-only baselines",
        "pooled": "the pooled-data baseline",
    }
    logger.info(
        "evaluating %s on each institution's holdout: %s",
        ", ".join(roles[role] for role in per_institution[trained[0]]) if trained else "nothing",
        ", ".join(trained),
    )
    return [
        evaluate_institution(
            consortium, name, config.data_schema, features.space.split, per_institution[name], config.evaluation
        )
        for name in trained
    ]


def development_reference(
    consortium: Consortium, training: TrainingOutcome, evaluations: list[InstitutionEvaluation]
) -> DevelopmentReference | None:
    """What the new version's monitoring compares later months with: each institution's counts of its development
    rows, sent with its evaluation; under secure aggregation, which keeps them back, their secure sum. None (and a
    warning) when there is none: the version is registered all the same, and monitoring it says why it cannot."""
    references = {e.institution: e.reference for e in evaluations if e.reference is not None}
    if references:
        return DevelopmentReference(references)
    if not (consortium.cross_silo and consortium.secure):
        return None
    try:
        counts, summed_over, completed = sum_development_counts(consortium, training.model_path)
    except FedriskError as error:
        get_run_logger().warning("no development reference for monitoring: %s", first_line(error))
        return None
    return DevelopmentReference({}, counts, tuple(summed_over))


def consortium_fairness_counts(
    config: RunConfig, consortium: Consortium, training: TrainingOutcome, evaluations: list[InstitutionEvaluation]
) -> dict:
    """The consortium's counts by protected group per role (challenger, champion): the institutions' as they sent
    them, summed; under secure aggregation, which keeps them at the nodes, their secure sum. Empty (and the
    promotion then says fair lending could not be tested) when there are none."""
    if not config.data_schema.protected:
        return {}
    if not (consortium.cross_silo and consortium.secure):
        return summed_fairness(evaluations)
    try:
        return sum_fairness_counts(consortium, config.data_schema, training.model_path)
    except FedriskError as error:
        get_run_logger().warning("no fair-lending counts: %s", first_line(error))
        return {}


def register(
    config: RunConfig,
    settings: Settings,
    lock: LockHold,
    *,
    validation: list[ValidationReport],
    admitted: list[str],
    features: PreparedFeatures,
    training: TrainingOutcome,
    budget: PrivacyBudget,
    spent: PrivacyPlan | None,
    evaluations: list[InstitutionEvaluation],
    decision,
    isolation,
    started: float,
    trigger: str,
    monitoring: MonitoringBreach | None = None,
    reference: DevelopmentReference | None = None,
    fairness: dict | None = None,
    tuning: Tuning | None = None,
) -> Registration:
    """The new version in MLflow with its lineage (flow run, code, config, suite, data, privacy, tuning), then its
    version recorded in the privacy ledger. `started`: when the retraining began (its MLflow run's start)."""
    after_training = service_retries(settings.registry_retry_seconds)  # a trained model rides out a restart
    inputs = [
        schema_file(config.data_schema.name),
        suite_file(settings.expectations_dir, config.suite),
        *([config.source_file] if config.source_file else []),
    ]
    commit, dirty, uncommitted = git_state(PROJECT_ROOT, inputs)
    lineage = lineage_tags(
        flow_run_id=str(flow_run.id),
        flow_run_url=flow_run_url(flow_run.id),
        deployment=_deployment_name(),
        commit=commit,
        dirty=dirty,
        config=config,
        uncommitted=uncommitted,
        suite_sha256=suite_digest(settings.expectations_dir, config.suite),
        validation=validation,
        admitted=admitted,
        privacy=privacy_tags(spent, budget.ledger_run),
        worker_isolation=isolation.mechanism,
        lost=training.lost,
        engine=training.lineage,
        participation=getattr(training, "participation", {}),
    )
    lineage["prefect.trigger"] = trigger
    if tuning is not None:
        lineage |= tuning_tags(tuning)
    if monitoring is not None:  # the breach that started it: what a reviewer asks first of such a version
        lineage |= {
            "monitoring.reason": monitoring.reason[:5000],
            "monitoring.period": monitoring.period,
            "monitoring.version": monitoring.version,
            "monitoring.run_id": monitoring.mlflow_run_id,
        }
    get_run_logger().info(
        "%s; registering the new version of %s in MLflow (%s)",
        decision.reason,
        config.model_name,
        masked(settings.mlflow_tracking_uri),
    )
    registration = register_model.with_options(**after_training)(
        settings.mlflow_tracking_uri,
        config,
        training=training,
        space=features.space,
        evaluations=evaluations,
        validation=validation,
        decision=decision,
        lineage=lineage,
        privacy=spent,
        lock_check=lock.verify,
        started=started,
        reference=reference,
        fairness=fairness,
        tuning=tuning,
    )
    if spent is not None:
        lock.verify("before recording the version in the privacy ledger")
        record_ledger_version.with_options(**after_training)(
            settings.mlflow_tracking_uri, budget.ledger_run, registration.version, registration.run_id
        )
    return registration
