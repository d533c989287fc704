from pathlib import Path

import pytest

from flows.config import ConfigError, load_config, parse_config
from flows.settings import PROJECT_ROOT
from tasks.schema import FEATURE_COLUMNS

BASE = {"model_name": "m", "institutions": [{"name": "a", "path": "a.csv"}, {"name": "b", "path": "/abs/b.csv"}]}


def _error(data) -> str:
    with pytest.raises(ConfigError) as error:
        parse_config(data, Path("/cfg"), "test.yaml")
    return str(error.value)


def test_shipped_configs_load():
    demo = load_config(PROJECT_ROOT / "configs" / "demo.yaml")
    assert [i.name for i in demo.institutions] == ["alder_bank", "birch_credit_union", "cedar_savings", "dune_finance"]
    assert demo.features == FEATURE_COLUMNS and demo.quorum == 3
    uci = load_config(PROJECT_ROOT / "configs" / "uci_default_credit.yaml")
    assert uci.institutions[0].path == (PROJECT_ROOT.parent / "shared/data/uci_default_credit/bank_a.csv").resolve()


def test_defaults_and_relative_paths():
    config = parse_config(BASE, Path("/cfg"))
    assert config.institutions[0].path == Path("/cfg/a.csv") and config.institutions[1].path == Path("/abs/b.csv")
    assert config.training.rounds == 10 and config.holdout_fraction == 0.2 and config.promotion_metric == "roc_auc"


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"training": {"rounds": 0}}, "training.rounds: Input should be greater than or equal to 1 (got 0)"),
        ({"training": {"client_learning_rate": "fast"}}, "training.client_learning_rate: Input should be a valid number, unable to parse string as a number (got 'fast')"),
        ({"quorum": 3}, "quorum 3 is more than the 2 institutions configured"),
        ({"promotion_metric": "accuracy"}, "promotion_metric: Input should be 'roc_auc', 'ks', 'log_loss' or 'brier' (got 'accuracy')"),
        ({"features": ["AGE", "INCOME"]}, "features: not features of the schema: ['INCOME']"),
        ({"institutions": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]}, "institution names must be unique; repeated: ['a']"),
        ({"institutions": [{"name": "Bank A", "path": "x"}]}, "institutions.0.name: String should match pattern"),
        ({"rounds": 5}, "rounds: Extra inputs are not permitted (got 5)"),
    ],
)
def test_bad_values_name_the_field_and_value(change, expected):
    message = _error({**BASE, **change})
    assert message.startswith("invalid config test.yaml:")
    assert expected in message


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
