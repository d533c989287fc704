"""tasks.schema: how a schema's figures are said."""

from tasks.schema import Missing, load_schema


def test_small_rates_are_said_as_they_are_not_as_0_percent():
    from tasks.schema import percent
    from tasks.suites import expected_checks

    assert [percent(r) for r in (0.2, 0.05, 0.125, 0.004, 0.0005, 1.0)] == ["20%", "5%", "12.5%", "0.4%", "0.05%", "100%"]
    schema = load_schema("german_credit")
    savings = schema.features["savings_account_and_bonds"].model_copy(update={"missing": Missing(max_rate=0.004)})
    rare = schema.model_copy(update={"features": {**schema.features, "savings_account_and_bonds": savings}})
    assert "savings_account_and_bonds missing in at most 0.4% of rows" in [c["description"] for c in expected_checks(rare)]
