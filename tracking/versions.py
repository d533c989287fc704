"""Reading the model registry for a person: each version with its aliases and headline figures, and what a
reference (NAME@ALIAS, NAME/VERSION) resolves to. MLflow only -- no Prefect, scikit-learn or TensorFlow --
so the CLI's read-only commands start in a few seconds."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hostguard.credentials import masked

CONFIG_ARTIFACT = "config/run_config.yaml"
MODEL_CARD_ARTIFACT = "model_card.html"


CHAMPION = "champion"
CHALLENGER = "challenger"
# How far a version's registration got (tracking.registry): only complete versions are shown, scored or promoted.
REGISTRATION_TAG = "fedrisk.registration"
INCOMPLETE, ALIASES_PENDING, COMPLETE = "incomplete", "aliases pending", "complete"


def registration_state(version) -> str:
    """A version's registration state; versions registered before the tag existed are complete."""
    return version.tags.get(REGISTRATION_TAG, COMPLETE)


def registration_complete(version, aliases: dict) -> bool:
    """Whether users may see the version: complete, or its aliases were moving and the final one (the champion
    for a promoted version, else the challenger) had landed on it."""
    state = registration_state(version)
    if state == ALIASES_PENDING:
        final = CHAMPION if version.tags.get("promotion.decision") == "promoted" else CHALLENGER
        return str(aliases.get(final)) == str(version.version)
    return state == COMPLETE


def validation_page_artifact(institution: str) -> str:
    """Where a run keeps an institution's validation page (institution.validation_page) among its artifacts."""
    return f"validation/data_docs/{institution}/validation.html"


def experiment_page_url(mlflow_ui_url: str, experiment_id: str) -> str:
    """The MLflow UI's page of an experiment, in its model-training view: the UI's GenAI/model-training switch
    is global and starts on GenAI (an overview of traces), whatever the experiment's kind tag says."""
    return f"{mlflow_ui_url.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def run_page_url(mlflow_ui_url: str, experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """The MLflow UI's page of a run, or of one of its artifacts (shown in the UI's viewer, which a browser
    opens from an http page, unlike a file:// link)."""
    page = f"{mlflow_ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{page}/artifactPath/{artifact}" if artifact else page


def version_page_url(mlflow_ui_url: str, name: str, version: str) -> str:
    """The MLflow UI's page of a registered model version."""
    return f"{mlflow_ui_url.rstrip('/')}/#/models/{name}/versions/{version}"


def resolve_version(tracking_uri: str, name: str, alias: str | None, version: str | None):
    """The registered model version an alias (or number) points at."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri)
    reference = f"{name}@{alias}" if alias else f"{name}/{version}"
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as error:
        raise LookupError(
            f"{reference}: no such model version in {masked(tracking_uri)} ({error.error_code})"
            + _what_exists(client, name)
        ) from None
    if not registration_complete(found, client.get_registered_model(name).aliases):
        raise LookupError(
            f"{reference}: version {found.version}'s registration did not finish "
            f"({registration_state(found)}: its retraining failed while registering it); it is not "
            f"used, and the next retraining of {name} deletes it" + _what_exists(client, name)
        )
    return found


def _what_exists(client, name: str) -> str:
    """For an error about a reference that does not resolve: the model's aliases and versions that do."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return f"; there is no registered model {name}"
    aliases = ", ".join(f"{name}@{alias} (version {v})" for alias, v in sorted(model.aliases.items()))
    latest = max((int(v.version) for v in client.search_model_versions(f"name = '{name}'")), default=0)
    return f"; aliases: {aliases or 'none'}" + (f"; versions 1 to {latest}" if latest else "; no versions")


@dataclass(frozen=True)
class VersionSummary:
    """One registered version as `fedrisk models list` shows it."""

    version: str
    created: str
    aliases: list[str]
    decision: str
    metrics: dict[str, float]
    run_id: str
    epsilon: str = "none"
    lost: tuple[str, ...] = ()  # institutions left out mid-training: trained and evaluated without them
    registration: str = COMPLETE  # how far the registration got (only complete versions are shown as versions)
    monitoring: str = "-"  # its latest monitoring: status and period (`act 2026-11`), or - when never monitored


SUMMARY_METRICS = ("roc_auc", "pr_auc", "ks", "ece")


def list_versions(tracking_uri: str, model_name: str) -> list[VersionSummary]:
    """Every version of `model_name`, newest first, with its aliases, decision and weighted holdout metrics; one
    whose registration did not finish is marked so (`registration`), for the caller to set apart."""
    import datetime

    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    try:
        model = client.get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":  # a clear error for an unknown name
            raise LookupError(f"no registered model {model_name!r} in {masked(tracking_uri)}") from None
        raise
    aliases: dict[str, list[str]] = {}
    for alias, number in model.aliases.items():
        aliases.setdefault(str(number), []).append(alias)
    summaries = []
    for v in client.search_model_versions(f"name='{model_name}'", order_by=["version_number DESC"]):
        metrics = client.get_run(v.run_id).data.metrics if v.run_id else {}
        summaries.append(
            VersionSummary(
                version=str(v.version),
                created=datetime.datetime.fromtimestamp(v.creation_timestamp / 1000).strftime("%Y-%m-%d %H:%M"),
                aliases=sorted(aliases.get(str(v.version), [])),
                decision=v.tags.get("promotion.decision", "-"),
                # The run's headline figures: ECE pooled over institutions (what the policy checks), the others
                # example-weighted (runs before they were headlined: their challenger's figures).
                metrics={
                    m: metrics.get(m, metrics.get(f"challenger.{'pooled' if m == 'ece' else 'weighted'}.{m}", math.nan))
                    for m in SUMMARY_METRICS
                },
                run_id=v.run_id or "-",
                epsilon=v.tags.get("privacy.epsilon", "none").split(" ")[0],
                lost=tuple(
                    sorted(
                        key.split(".")[1] for key in v.tags if key.startswith("institution.") and key.endswith(".lost")
                    )
                ),
                registration=COMPLETE if registration_complete(v, model.aliases) else registration_state(v),
                monitoring=" ".join(v.tags[key] for key in ("monitoring.status", "monitoring.period") if key in v.tags)
                or "-",
            )
        )
    return summaries
