from pathlib import Path

import pytest

from contract.schema import load_schema
from flows.config import ConfigError, load_config, parse_config
from flows.settings import PROJECT_ROOT

FEATURE_COLUMNS = list(load_schema("credit_default").features)

BASE = {"model_name": "m", "institutions": [{"name": "a", "path": "a.csv"}, {"name": "b", "path": "/abs/b.csv"}]}


def _error(data) -> str:
    with pytest.raises(ConfigError) as error:
        parse_config(data, Path("/cfg"), "test.yaml")
    return str(error.value)


def test_shipped_configs_load():
    demo = load_config(PROJECT_ROOT / "configs" / "demo.yaml")
    assert [i.name for i in demo.institutions] == ["alder_bank", "birch_credit_union", "cedar_savings", "dune_finance"]
    # SEX and AGE are protected attributes of the schema: tested for fair lending, never the model's inputs.
    assert demo.feature_names == [f for f in FEATURE_COLUMNS if f not in ("SEX", "AGE")]
    assert demo.quorum == 3 and demo.suite == "credit_default_v2"
    uci = load_config(PROJECT_ROOT / "configs" / "uci_default_credit.yaml")
    assert uci.institutions[0].path == (PROJECT_ROOT.parent / "shared/data/uci_default_credit/bank_a.csv").resolve()


def test_defaults_and_relative_paths():
    config = parse_config(BASE, Path("/cfg"))
    assert config.institutions[0].path == Path("/cfg/a.csv") and config.institutions[1].path == Path("/abs/b.csv")
    assert config.training.rounds == 10 and config.holdout_fraction == 0.2 and config.promotion.metric == "roc_auc"
    assert config.training.algorithm == "fedavg" and config.training.aggregation == "robust"
    assert config.training.server_learning_rate == 1.0 and config.training.early_stopping is None


@pytest.mark.parametrize(
    "algorithm, rate", [("fedavg", 1.0), ("fedadam", 0.01), ("fedyogi", 0.01), ("fedadagrad", 0.1)]
)
def test_server_learning_rate_defaults_by_algorithm(algorithm, rate):
    config = parse_config({**BASE, "training": {"algorithm": algorithm}}, Path("/cfg"))
    assert config.training.server_learning_rate == rate
    explicit = parse_config({**BASE, "training": {"algorithm": algorithm, "server_learning_rate": 0.5}}, Path("/cfg"))
    assert explicit.training.server_learning_rate == 0.5


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"training": {"rounds": 0}}, "training.rounds: Input should be greater than or equal to 1 (got 0)"),
        (
            {"training": {"client_learning_rate": "fast"}},
            "training.client_learning_rate: Input should be a valid number, unable to parse string as"
            " a number (got 'fast')",
        ),
        ({"quorum": 3}, "quorum 3 is more than the 2 institutions configured"),
        (
            {"promotion": {"metric": "accuracy"}},
            "promotion.metric: Input should be 'roc_auc', 'pr_auc', 'ks', 'gini', "
            "'log_loss', 'brier', 'ece', 'recall_at_fpr' or 'recall_at_alert_rate' (got 'accuracy')",
        ),
        (
            {"promotion": {"max_institution_drop": -0.1}},
            "promotion.max_institution_drop: Input should be greater than or equal to 0 (got -0.1)",
        ),
        ({"evaluation": {"threshold": 1.5}}, "evaluation.threshold: Input should be less than 1 (got 1.5)"),
        ({"features": ["AGE", "INCOME"]}, "features ['INCOME'] are not features of schema credit_default"),
        (
            {"features": ["LIMIT_BAL", "SEX"]},
            "features SEX (protected attribute sex) are protected in schema credit_default: used only to test the "
            "model for fair lending, never as its inputs",
        ),
        ({"schema": "no_such_schema"}, "schema: unknown schema 'no_such_schema'"),
        (
            {"institutions": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]},
            "institution names must be unique; repeated: ['a']",
        ),
        ({"institutions": [{"name": "Bank A", "path": "x"}]}, "institutions.0.name: String should match pattern"),
        ({"rounds": 5}, "invalid config test.yaml:\n  unknown key 'rounds'; known keys: baselines, drift_checks"),
        ({"trainig": {}}, "unknown key 'trainig'; did you mean 'training'?"),
        (
            {"training": {"engine": "xgboost", "max_dept": 3}},
            "unknown key 'max_dept' in section training; did you mean 'max_depth'?",
        ),
        (
            {"training": {"learning_rate": 0.1}},
            "unknown key 'learning_rate' in section training (a setting of engine "
            "xgboost; this section's engine is tff); did you mean "
            "'server_learning_rate'?",
        ),
        (
            {"training": {"engine": "xgboost", "client_learning_rate": 0.1}},
            "unknown key 'client_learning_rate' in "
            "section training (a setting of engine tff; this section's engine is xgboost); did you"
            " mean 'learning_rate'?",
        ),
        (
            {"training": {"algorithm": "fedsgd"}},
            "training.algorithm: Input should be 'fedavg', 'fedprox', 'fedadam', 'fedyogi' or"
            " 'fedadagrad' (got 'fedsgd')",
        ),
        ({"training": {"algorithm": "fedprox"}}, "training: fedprox needs proximal_strength > 0 (e.g. 0.01)"),
        ({"training": {"proximal_strength": 0.1}}, "training: proximal_strength applies to fedprox only, not fedavg"),
        ({"training": {"model": {"kind": "mlp"}}}, "training.model: an mlp needs hidden_units, e.g. [32, 16]"),
        (
            {"training": {"model": {"hidden_units": [8]}}},
            "training.model: a logistic_regression has no hidden_units or dropout; use kind: mlp",
        ),
        (
            {"training": {"model": {"kind": "mlp", "hidden_units": [0]}}},
            "training.model.hidden_units.0: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            {"training": {"model": {"kind": "mlp", "hidden_units": [8], "dropout": 1.0}}},
            "training.model.dropout: Input should be less than 1 (got 1.0)",
        ),
        (
            {"training": {"clients_per_round": 3}},
            "training.clients_per_round 3 is more than the 2 institutions configured",
        ),
        (
            {"training": {"positive_class_weight": "auto"}},
            "training.positive_class_weight.literal['balanced']: Input should be 'balanced' (got 'auto')",
        ),
        (
            {"training": {"positive_class_weight": -2}},
            "training.positive_class_weight: must be 'balanced' or a number in (0, 10000] (got -2)",
        ),
        (
            {"training": {"aggregation": "median"}},
            "training.aggregation: Input should be 'robust', 'plain' or 'compression' (got 'median')",
        ),
        (
            {"training": {"early_stopping": {"patience": 0}}},
            "training.early_stopping.patience: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            {"privacy": {"mechanism": "record_level"}},
            "privacy: record_level privacy needs exactly one of noise_multiplier or target_epsilon",
        ),
        (
            {"privacy": {"mechanism": "client_level", "noise_multiplier": 1, "target_epsilon": 3}},
            "privacy: client_level privacy needs exactly one of noise_multiplier or target_epsilon",
        ),
        (
            {"privacy": {"target_epsilon": 3}},
            "privacy: target_epsilon given but mechanism is none; set mechanism: record_level or client_level",
        ),
        (
            {"privacy": {"mechanism": "record_level", "noise_multiplier": 1, "adaptive_clipping": True}},
            "privacy: adaptive_clipping applies to client_level privacy only",
        ),
        (
            {"privacy": {"mechanism": "record_level", "target_epsilon": 0}},
            "privacy.target_epsilon: Input should be greater than 0 (got 0)",
        ),
        (
            {"privacy": {"mechanism": "laplace"}},
            "privacy.mechanism: Input should be 'none', 'record_level' or 'client_level' (got 'laplace')",
        ),
        (
            {
                "privacy": {"mechanism": "record_level", "noise_multiplier": 1},
                "training": {"algorithm": "fedprox", "proximal_strength": 0.1},
            },
            "record_level privacy trains locally with DP-SGD; use fedavg or an adaptive server optimizer",
        ),
        (
            {"institutions": [{"name": "a", "path": "x", "privacy_budget": 5}]},
            "institutions ['a'] set a privacy_budget, but privacy.mechanism is none",
        ),
        (
            {"institutions": [{"name": "a", "path": "x", "privacy_budget": -1}]},
            "institutions.0.privacy_budget: Input should be greater than 0 (got -1)",
        ),
    ],
)
def test_bad_values_name_the_field_and_value(change, expected):
    message = _error({**BASE, **change})
    assert message.startswith("invalid config test.yaml:")
    assert expected in message


def test_privacy_budgets_are_each_institutions_own_else_the_configs():
    config = parse_config(
        {
            **BASE,
            "institutions": [{"name": "a", "path": "a.csv", "privacy_budget": 4}, {"name": "b", "path": "b.csv"}],
            "privacy": {"mechanism": "record_level", "target_epsilon": 1, "budget_epsilon": 9},
        },
        Path("/cfg"),
    )
    assert config.privacy_budgets() == {"a": 4, "b": 9}
    assert parse_config(BASE, Path("/cfg")).privacy_budgets() == {"a": None, "b": None}


def test_missing_required_field():
    assert "model_name: Field required" in _error({"institutions": BASE["institutions"]})


def test_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping of settings, got list"):
        load_config(bad)


def test_dotted_overrides_apply_before_validation():
    demo = PROJECT_ROOT / "configs" / "demo.yaml"
    config = load_config(
        demo,
        {
            "training.rounds": 3,
            "baselines.enabled": False,
            "training.model.kind": "mlp",
            "training.model.hidden_units": [8],
        },
    )
    assert config.training.rounds == 3 and not config.baselines.enabled
    assert config.training.model.kind == "mlp" and config.training.model.hidden_units == [8]
    assert config.institutions[0].path == (PROJECT_ROOT / "data/demo/alder_bank/credit.csv").resolve()
    assert load_config(demo).training.rounds == 15  # the file is read afresh, not changed


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            {"training.roundz": 3},
            "with overrides training.roundz=3:\n  unknown key 'roundz' in section training; did you mean 'rounds'?",
        ),
        ({"training.rounds": 0}, "training.rounds: Input should be greater than or equal to 1 (got 0)"),
        ({"seed.value": 1}, "override 'seed.value': seed is a value, not a section"),
        ({"training..rounds": 1}, "override 'training..rounds': not a dotted config key like training.rounds"),
    ],
)
def test_bad_overrides_name_the_key(overrides, expected):
    with pytest.raises(ConfigError) as error:
        load_config(PROJECT_ROOT / "configs" / "demo.yaml", overrides)
    assert expected in str(error.value)


def test_every_shipped_config_names_a_schema_whose_suite_is_committed():
    for path in sorted((PROJECT_ROOT / "configs").glob("*.yaml")):
        config = load_config(path, expectations_dir=PROJECT_ROOT / "expectations")
        assert config.suite == f"{config.data_schema.name}_v{config.data_schema.version}"


def test_a_schema_change_without_a_version_bump_is_refused(tmp_path):
    import shutil

    schemas = tmp_path / "schemas"
    shutil.copytree(PROJECT_ROOT / "schemas", schemas)
    source = schemas / "credit_default.yaml"
    source.write_text(
        source.read_text().replace(
            "AGE: {type: numeric, dtype: int, min: 18, max: 100", "AGE: {type: numeric, dtype: int, min: 21, max: 100"
        )
    )
    with pytest.raises(ConfigError) as error:
        parse_config(
            BASE, Path("/cfg"), "run.yaml", schemas_dir=schemas, expectations_dir=PROJECT_ROOT / "expectations"
        )
    assert str(error.value) == (
        "invalid config run.yaml: schema credit_default version 2 no longer matches its committed suite "
        "credit_default_v2 (new or changed: AGE between 21 and 100; no longer in the schema: AGE between 18 and 100): "
        "a change to a check needs a new schema version (set version: 3, then `uv run python "
        "expectations/build_suites.py`); a draft no registered model was trained on can instead be rewritten in "
        "place: `uv run python expectations/build_suites.py --redraft credit_default`"
    )
    source.write_text(source.read_text().replace("version: 2", "version: 3"))
    with pytest.raises(ConfigError, match="schema credit_default version 3 has no committed suite"):
        parse_config(
            BASE, Path("/cfg"), "run.yaml", schemas_dir=schemas, expectations_dir=PROJECT_ROOT / "expectations"
        )


NODES = {
    "model_name": "m",
    "baselines": {"enabled": False},
    "tls": {"ca": "ca.crt", "cert": "c.crt", "key": "c.key"},
    "institutions": [{"name": n, "node": f"{n}.example:7100"} for n in ("a", "b", "c")],
}


def test_secure_aggregation_is_a_switch_with_settings():
    config = parse_config({**NODES, "secure_aggregation": True}, Path("/cfg"))
    assert config.secure_aggregation.clip_norm == 10.0 and config.secure_threshold(3) == 2
    assert parse_config({**NODES, "secure_aggregation": False}, Path("/cfg")).secure_aggregation is None
    tuned = parse_config({**NODES, "secure_aggregation": {"threshold": 3, "clip_norm": 2.5}}, Path("/cfg"))
    assert tuned.secure_threshold(3) == 3 and tuned.secure_aggregation.clip_norm == 2.5


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            {"institutions": BASE["institutions"] + [{"name": "c", "path": "c.csv"}], "tls": None, "baselines": {}},
            "secure_aggregation needs institutions at nodes (node: addresses)",
        ),
        (
            {"institutions": NODES["institutions"][:2], "quorum": 1},
            "secure_aggregation needs at least 3 institutions (min_institutions); 2 configured",
        ),
        ({"secure_aggregation": {"threshold": 4}}, "secure_aggregation.threshold 4 is more than the 3 institutions"),
        (
            {"secure_aggregation": {"threshold": 1}},
            "secure_aggregation.threshold: Input should be greater than or equal to 2",
        ),
        (
            {"secure_aggregation": {"min_institutions": 2}},
            "secure_aggregation.min_institutions: Input should be greater",
        ),
        ({"training": {"aggregation": "compression"}}, "does not combine with training.aggregation: compression"),
        ({"training": {"engine": "xgboost"}}, "secure_aggregation covers the TFF engine"),
        (
            {"privacy": {"mechanism": "client_level", "noise_multiplier": 1.0}},
            "does not combine with privacy.mechanism client_level",
        ),
    ],
)
def test_secure_aggregation_refuses_what_it_cannot_protect(change, expected):
    data = {**NODES, "secure_aggregation": True, **change}
    assert expected in _error({k: v for k, v in data.items() if v is not None})


def test_a_key_repeated_in_a_schema_or_a_config_is_refused_not_silently_replaced(tmp_path):
    """PyYAML keeps a repeated key's last value: a schema whose AGE appeared twice quarantined every bank with a
    confusing reason. The file is refused where it is read, naming the key and both lines."""
    from contract.schema import SchemaError, load_schema, schema_file
    from flows.config import ConfigError, load_config

    shipped = schema_file("credit_default").read_text()
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "credit_default.yaml").write_text(
        shipped.replace("features:\n", "features:\n  AGE: {type: numeric, dtype: int, min: 0, max: 5}\n", 1)
    )
    with pytest.raises(
        SchemaError,
        match=r"cannot be read: key 'AGE' appears twice \(lines \d+ and \d+\): the "
        r"second would silently replace the first",
    ):
        load_schema("credit_default", schemas)
    config = tmp_path / "run.yaml"
    config.write_text("model_name: m\nquorum: 1\ninstitutions: []\nquorum: 2\n")
    with pytest.raises(ConfigError, match=r"key 'quorum' appears twice \(lines 2 and 4\)"):
        load_config(config)


def test_a_scorecards_decision_in_points_is_the_probability_with_that_score():
    """600 points are the base odds of 50 good to 1 bad: a bad probability of 1/51; 20 points fewer double the odds
    of bad (the default scorecard scaling)."""
    config = parse_config({**BASE, "evaluation": {"approve_at_points": 600}}, Path("/cfg"))
    assert config.evaluation.threshold == pytest.approx(1 / 51)
    lower = parse_config({**BASE, "evaluation": {"approve_at_points": 580}}, Path("/cfg"))
    assert lower.evaluation.threshold == pytest.approx(1 / 26)


def test_partial_participation_is_a_number_or_a_fraction_of_institutions():
    config = parse_config({**NODES, "training": {"clients_fraction": 0.5}}, Path("/cfg"))
    assert config.training.sampled(3) == 2 and config.training.sampled(10) == 5
    assert parse_config({**NODES, "training": {"clients_per_round": 2}}, Path("/cfg")).training.sampled(3) == 2
    assert parse_config(NODES, Path("/cfg")).training.sampled(3) is None  # all


def test_a_schedule_waits_on_nodes_with_its_settings():
    config = parse_config(
        {**NODES, "training": {"schedule": {"mode": "deadline", "deadline_seconds": 30}}}, Path("/cfg")
    )
    schedule = config.training.schedule
    assert (schedule.min_share, schedule.late_updates, schedule.max_staleness) == (0.5, "discount", 4)


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            {"training": {"clients_per_round": 2, "clients_fraction": 0.5}},
            "set clients_per_round or clients_fraction, not both",
        ),
        ({"training": {"clients_fraction": 1.5}}, "training.clients_fraction: Input should be less than or equal to 1"),
        (
            {"training": {"schedule": {"mode": "deadline"}}},
            "training.schedule: training.schedule.mode deadline needs deadline_seconds (e.g. 30)",
        ),
        (
            {"training": {"schedule": {"mode": "deadline", "deadline_seconds": 5}}, **BASE, "tls": None},
            "training.schedule.mode deadline waits on institutions' nodes (node: addresses); in simulation every "
            "institution trains in this process, one after another",
        ),
        (
            {"training": {"schedule": {"mode": "buffered", "buffer_size": 4}}},
            "training.schedule.buffer_size 4 is more than the 3 institutions that train at once",
        ),
        (
            {"training": {"clients_per_round": 2, "schedule": {"mode": "buffered", "buffer_size": 3}}},
            "training.schedule.buffer_size 3 is more than the 2 institutions that train at once",
        ),
        (
            {"training": {"schedule": {"mode": "sometimes"}}},
            "training.schedule.mode: Input should be 'synchronous', 'deadline' or 'buffered' (got 'sometimes')",
        ),
        (
            {"training": {"schedule": {"mode": "deadline", "deadline_seconds": 5}}, "secure_aggregation": True},
            "under secure_aggregation a late update cannot be applied later: alone in a sum it would be read; set "
            "training.schedule.late_updates: drop",
        ),
        (
            {"training": {"schedule": {"mode": "buffered", "buffer_size": 2}}, "secure_aggregation": True},
            "under secure_aggregation a buffer is one secure sum: training.schedule.buffer_size 2 is fewer than the "
            "3 institutions a sum needs",
        ),
    ],
)
def test_a_schedule_refuses_what_it_cannot_do(change, expected):
    data = {**NODES, **change}
    assert expected in _error({k: v for k, v in data.items() if v is not None})


def test_tuning_searches_the_engines_settings_unless_the_config_names_its_own():
    from runconfig import search_space

    trees = parse_config({**BASE, "training": {"engine": "xgboost"}, "tuning": {"trials": 8}}, Path("/cfg"))
    assert trees.tuning is not None and trees.tuning.pruning and trees.tuning.trials == 8
    assert list(search_space(trees.tuning, trees.training)) == [
        "max_depth",
        "learning_rate",
        "min_child_weight",
        "subsample",
        "reg_lambda",
    ]
    mlp = parse_config(
        {
            **BASE,
            "training": {"algorithm": "fedadam", "model": {"kind": "mlp", "hidden_units": [8]}},
            "tuning": {"trials": 4},
        },
        Path("/cfg"),
    )
    assert "server_learning_rate" in search_space(mlp.tuning, mlp.training)
    assert "model.hidden_units" in search_space(mlp.tuning, mlp.training)
    named = parse_config(
        {**BASE, "tuning": {"trials": 3, "parameters": {"batch_size": {"choices": [32, 128]}}}}, Path("/cfg")
    )
    assert list(search_space(named.tuning, named.training)) == ["batch_size"]


@pytest.mark.parametrize(
    "tuning, expected",
    [
        ({"trials": 1}, "tuning.trials: Input should be greater than or equal to 2 (got 1)"),
        (
            {"trials": 4, "parameters": {"max_depth": {"low": 2, "high": 6}}},
            "tuning.parameters.max_depth: the tff engine has no setting training.max_depth",
        ),
        (
            {"trials": 4, "parameters": {"batch_size": {"low": 0, "high": 64}}},
            "tuning.parameters.batch_size: 0.0 is no valid training.batch_size: Input should be greater than or "
            "equal to 1",
        ),
        (
            {"trials": 4, "parameters": {"validation_fraction": {"low": 0.1, "high": 0.3}}},
            "tuning.parameters.validation_fraction: training.validation_fraction is not tuned",
        ),
        (
            {"trials": 4, "parameters": {"client_learning_rate": {"low": 0.1, "high": 0.01}}},
            "tuning.parameters.client_learning_rate: give low < high (or choices)",
        ),
        (
            {"trials": 4, "parameters": {"client_learning_rate": {"low": 0, "high": 0.1, "log": True}}},
            "a log scale needs low > 0",
        ),
    ],
)
def test_tuning_refuses_a_setting_it_cannot_search(tuning, expected):
    assert expected in _error({**BASE, "tuning": tuning})


def test_tuning_under_differential_privacy_shares_a_target_epsilon_never_a_fixed_noise():
    message = _error({**BASE, "privacy": {"mechanism": "record_level", "noise_multiplier": 1}, "tuning": {"trials": 3}})
    assert "tuning under differential privacy needs privacy.target_epsilon: the run's epsilon, shared by its" in message
