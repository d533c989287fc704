"""contract.schema: how a schema's figures are said."""

from contract.schema import Missing, load_schema


def test_small_rates_are_said_as_they_are_not_as_0_percent():
    from contract.schema import percent
    from contract.suites import expected_checks

    assert [percent(r) for r in (0.2, 0.05, 0.125, 0.004, 0.0005, 1.0)] == [
        "20%",
        "5%",
        "12.5%",
        "0.4%",
        "0.05%",
        "100%",
    ]
    schema = load_schema("german_credit")
    savings = schema.features["savings_account_and_bonds"].model_copy(update={"missing": Missing(max_rate=0.004)})
    rare = schema.model_copy(update={"features": {**schema.features, "savings_account_and_bonds": savings}})
    assert "savings_account_and_bonds missing in at most 0.4% of rows" in [
        c["description"] for c in expected_checks(rare)
    ]


def test_levels_that_name_the_label_or_copy_its_values_are_refused():
    import pytest

    from contract.schema import SchemaError, parse_schema

    base = {
        "name": "loans",
        "version": 1,
        "output": "bad_probability",
        "label": {"column": "outcome", "positive": "bad", "negative": "good", "meaning": "bad"},
        "features": {"purpose": {"type": "categorical", "levels": ["car", "outcome", "home"]}},
    }
    with pytest.raises(SchemaError, match="features.purpose.levels: a level is the label column's name"):
        parse_schema(base, "loans.yaml")
    base["features"]["purpose"]["levels"] = ["good", "bad"]
    with pytest.raises(SchemaError, match="are exactly the label's values .*would leak the outcome"):
        parse_schema(base, "loans.yaml")
    base["features"]["purpose"]["levels"] = ["good", "bad", "fair"]  # an attribute that shares words: fine
    assert parse_schema(base, "loans.yaml").features["purpose"].levels == ["good", "bad", "fair"]
