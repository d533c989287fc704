"""`fedrisk trigger --param` parsing: flow parameters by name, anything else a dotted run-config override."""

import pytest

from flows.trigger import parse_params

FLOW_PARAMETERS = {"config_file", "overrides"}


def test_flow_parameters_and_dotted_overrides():
    assert parse_params(
        [
            "config_file=configs/demo.yaml",
            "training.rounds=5",
            "baselines.enabled=false",
            "training.model.hidden_units=[32, 16]",
            "intended_use=Scoring: cards",
            "suite=1",
        ],
        FLOW_PARAMETERS,
    ) == {
        "config_file": "configs/demo.yaml",
        "overrides": {
            "training.rounds": 5,
            "baselines.enabled": False,
            "training.model.hidden_units": [32, 16],
            "intended_use": "Scoring: cards",
            "suite": 1,
        },
    }
    assert parse_params([], FLOW_PARAMETERS) == {}


def test_a_whole_overrides_mapping_merges_with_single_keys():
    assert parse_params(['overrides={"seed": 3}', "training.rounds=2"], FLOW_PARAMETERS) == {
        "overrides": {"seed": 3, "training.rounds": 2}
    }


@pytest.mark.parametrize(
    "given, message",
    [
        ("training.rounds", "--param 'training.rounds': expected KEY=VALUE, e.g. training.rounds=5"),
        ("=5", "--param '=5': expected KEY=VALUE"),
    ],
)
def test_malformed_params_are_refused(given, message):
    with pytest.raises(ValueError) as error:
        parse_params([given], FLOW_PARAMETERS)
    assert str(error.value).startswith(message)


def test_a_deployment_without_overrides_refuses_unknown_keys():
    with pytest.raises(ValueError, match=r"--param training.rounds: not a parameter of this deployment \(\['name'\]\)"):
        parse_params(["training.rounds=5"], {"name"})
