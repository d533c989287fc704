"""Fair-lending counts (institution.fairness) and figures (fairness.figures) on the real German credit data split
into three banks: every figure from the banks' summed counts equals the same figure computed independently on the
pooled rows (fairlearn's group metrics, scikit-learn's AUC, numpy), exactly for the counts."""

import math

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame, selection_rate, true_positive_rate
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from contract.schema import SchemaError, load_schema, parse_schema
from fairness.figures import fairness_figures, judged_groups
from institution.fairness import MISSING, SCORE_EDGES, add_fairness, fairness_counts, protected_groups
from institution.scoring import band_index
from tests.conftest import SHARED_DATA

GERMAN = SHARED_DATA / "german_credit" / "germancredit.csv"
SCHEMA = load_schema("german_credit")
CUTOFF = 0.3


@pytest.fixture(scope="module")
def scored():
    """The pooled rows, their outcomes (1: bad), a model's probabilities (any model serves: the counts are under
    test), and three banks' row positions."""
    if not GERMAN.is_file():
        pytest.skip(f"real German credit data not found at {GERMAN} (../shared/data is absent)")
    rows = pd.read_csv(GERMAN)
    bad = (rows[SCHEMA.label.column] == SCHEMA.label.positive).to_numpy(dtype=int)
    inputs = rows[["duration_in_month", "credit_amount", "installment_rate_in_percentage_of_disposable_income"]]
    probabilities = LogisticRegression(max_iter=1000).fit(inputs, bad).predict_proba(inputs)[:, 1]
    banks = np.array_split(np.random.default_rng(0).permutation(len(rows)), 3)
    return rows, bad, probabilities, banks


def _pooled_groups(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each row's group, worked out here independently of institution.fairness."""
    sex = np.where(rows["personal_status_and_sex"].str.startswith("female"), "female", "male")
    age = pd.cut(
        rows["age_in_years"], [-np.inf, 25, 61, np.inf], right=False, labels=["under 25", "25 to 60", "over 60"]
    )
    return {"sex": sex, "age": age.astype(str).to_numpy()}


def test_the_banks_summed_counts_are_the_pooled_rows_counts(scored):
    rows, bad, probabilities, banks = scored
    parts = [fairness_counts(probabilities[b], rows.iloc[b], bad[b], SCHEMA, CUTOFF) for b in banks]
    summed, pooled = add_fairness(parts), fairness_counts(probabilities, rows, bad, SCHEMA, CUTOFF)
    assert list(summed.attributes) == ["sex", "age"]
    assert list(summed.attributes["age"]) == ["under 25", "25 to 60", "over 60"]  # none missing in this file
    for attribute, groups in pooled.attributes.items():
        for group, expected in groups.items():
            got = summed.attributes[attribute][group]
            for field in ("rows", "bads", "approved", "approved_goods", "grade_rows", "grade_bads", "bin_goods"):
                assert getattr(got, field) == getattr(expected, field), (attribute, group, field)
            assert got.score_sum == pytest.approx(expected.score_sum, rel=1e-12)
            assert got.score_squares == pytest.approx(expected.score_squares, rel=1e-12)


def test_every_figure_is_the_same_figure_on_the_pooled_rows(scored):
    rows, bad, probabilities, banks = scored
    summed = add_fairness([fairness_counts(probabilities[b], rows.iloc[b], bad[b], SCHEMA, CUTOFF) for b in banks])
    figures = {f.attribute: f for f in fairness_figures(summed, SCHEMA.protected_references)}
    approved, good = probabilities < CUTOFF, bad == 0
    for attribute, groups in _pooled_groups(rows).items():
        frame = MetricFrame(
            metrics={"approval": selection_rate, "opportunity": true_positive_rate},
            y_true=good.astype(int),
            y_pred=approved.astype(int),
            sensitive_features=groups,
        ).by_group
        reference = figures[attribute].reference
        for g in figures[attribute].groups:
            mine = groups == g.group
            assert g.rows == mine.sum() and g.approved == approved[mine].sum() and g.bads == bad[mine].sum()
            assert g.approval_rate == pytest.approx(frame.loc[g.group, "approval"], abs=1e-12)
            assert g.equal_opportunity == pytest.approx(frame.loc[g.group, "opportunity"], abs=1e-12)
            ratio = frame.loc[g.group, "approval"] / frame.loc[reference, "approval"]
            assert g.adverse_impact_ratio == pytest.approx(ratio, abs=1e-12)
            base = groups == reference
            spread = math.sqrt((probabilities[mine].var(ddof=1) + probabilities[base].var(ddof=1)) / 2)
            smd = (probabilities[mine].mean() - probabilities[base].mean()) / spread
            assert g.standardized_mean_difference == pytest.approx(smd, abs=1e-9)
            # The AUC of the group's probabilities on the shared grid: exactly scikit-learn's on the binned
            # probabilities, and within a few thousandths of the unbinned AUC.
            binned = np.searchsorted(SCORE_EDGES, probabilities[mine], side="right")
            assert g.auc == pytest.approx(roc_auc_score(bad[mine], binned), abs=1e-12)
            assert g.auc == pytest.approx(roc_auc_score(bad[mine], probabilities[mine]), abs=0.005)
            assert g.auc_interval[0] < g.auc < g.auc_interval[1]
            grades = band_index(probabilities[mine])
            for index, (grade, count, bads, mean) in enumerate(g.calibration):
                assert count == (grades == index).sum() and bads == bad[mine][grades == index].sum(), grade
                if count:
                    assert mean == pytest.approx(probabilities[mine][grades == index].mean(), rel=1e-9)
            # The approval rate's interval is Wilson's, computed here by hand.
            n, p = g.rows, g.approval_rate
            centre, half = (p + 1.96**2 / (2 * n)), 1.96 * math.sqrt(p * (1 - p) / n + 1.96**2 / (4 * n * n))
            low, high = (centre - half) / (1 + 1.96**2 / n), (centre + half) / (1 + 1.96**2 / n)
            assert g.approval_interval == pytest.approx((low, high), abs=1e-4)
            if g.group != reference:
                assert g.adverse_impact_interval[0] < g.adverse_impact_ratio < g.adverse_impact_interval[1]
        assert figures[attribute].group(reference).adverse_impact_ratio == 1.0


def test_a_missing_or_unknown_protected_value_is_its_own_group_and_never_judged():
    rows = pd.DataFrame(
        {
            "personal_status_and_sex": ["male : single", "female : single", None, "male : single"],
            "age_in_years": [22, np.nan, 70, 40],
        }
    )
    groups = protected_groups(rows["age_in_years"], SCHEMA.protected["age"])
    assert groups.tolist() == ["under 25", MISSING, "over 60", "25 to 60"]
    counts = fairness_counts(np.array([0.1, 0.5, 0.2, 0.4]), rows, np.array([0, 1, 0, 1]), SCHEMA, CUTOFF)
    assert list(counts.attributes["sex"]) == ["male", "female", MISSING]
    [sex, _] = fairness_figures(counts, SCHEMA.protected_references)
    judged, small = judged_groups(sex, min_rows=1)
    assert [g.group for g in judged] == ["female"] and small == []
    assert [g.group for g in judged_groups(sex, min_rows=2)[1]] == ["female"]  # reported, too few rows to judge


def test_a_protected_attribute_names_a_declared_feature_and_places_every_value_in_one_group():
    base = load_schema("german_credit").model_dump(by_alias=True)

    def with_protected(**attribute):
        return parse_schema({**base, "protected": {"sex": attribute}}, "german_credit.yaml")

    groups = {"male": ["male : single"], "female": ["female : single"]}
    for attribute, error in [
        ({"column": "sex", "groups": groups, "reference": "male"}, "protected.sex.column 'sex' is not a declared"),
        ({"column": "personal_status_and_sex", "groups": groups, "reference": "male"}, "must place each of"),
        ({"column": "age_in_years", "cuts": [25], "bands": ["young"], "reference": "young"}, "bands must name the 2"),
        ({"column": "age_in_years", "cuts": [25, 61], "bands": ["a", "b", "c"], "reference": "d"}, "reference 'd'"),
        ({"column": "purpose", "cuts": [1], "bands": ["a", "b"], "reference": "a"}, "cuts need a numeric column"),
    ]:
        with pytest.raises(SchemaError, match=error):
            with_protected(**attribute)


def test_each_features_association_with_a_protected_attribute_is_cramers_v_on_the_pooled_rows(scored):
    from scipy.stats.contingency import association

    from fairness.figures import proxy_strengths
    from institution.fairness import with_proxies
    from riskmodel.bins import FeatureBins

    rows, bad, probabilities, banks = scored
    bins = [
        FeatureBins("duration_in_month", edges=(12.0, 24.0, 36.0)),
        FeatureBins("housing", levels=("rent", "own", "for free")),
    ]
    parts = [
        with_proxies(
            fairness_counts(probabilities[b], rows.iloc[b], bad[b], SCHEMA, CUTOFF), rows.iloc[b], bins, SCHEMA
        )
        for b in banks
    ]
    strengths = proxy_strengths(add_fairness(parts))
    groups = _pooled_groups(rows)
    duration = np.searchsorted([12.0, 24.0, 36.0], rows["duration_in_month"], side="right")
    for attribute, feature, binned in (("sex", "duration_in_month", duration), ("age", "housing", rows["housing"])):
        table = pd.crosstab(binned, groups[attribute]).to_numpy()
        assert strengths[attribute][feature] == pytest.approx(association(table, method="cramer"), abs=1e-12)
    assert 0 < strengths["sex"]["housing"] < 1 and list(strengths["sex"]) == sorted(
        strengths["sex"], key=lambda f: -strengths["sex"][f]
    )
    # A feature that is the attribute under another name is a perfect proxy.
    coded = rows.assign(housing=np.where(groups["sex"] == "female", "rent", "own"))
    perfect = proxy_strengths(
        with_proxies(fairness_counts(probabilities, coded, bad, SCHEMA, CUTOFF), coded, bins, SCHEMA)
    )
    assert perfect["sex"]["housing"] == pytest.approx(1.0)


def test_a_secure_sum_of_the_fairness_vectors_is_the_summed_counts(scored):
    """What the nodes add under secure aggregation (node.service, consortium.nodes.secure_fairness): one vector per
    bank in a fixed layout, summed in the protocol's fixed-point ring, decoded to the counts add_fairness gives."""
    from institution.fairness import fairness_from_vector, fairness_vector, with_proxies
    from node.secure import SUMS
    from riskmodel.bins import FeatureBins
    from secagg import ring
    from secagg.ring import VectorSpec

    rows, bad, probabilities, banks = scored
    bins = [FeatureBins("duration_in_month", edges=(12.0, 24.0)), FeatureBins("housing", levels=("rent", "own"))]
    parts = [
        with_proxies(
            fairness_counts(probabilities[b], rows.iloc[b], bad[b], SCHEMA, CUTOFF), rows.iloc[b], bins, SCHEMA
        )
        for b in banks
    ]
    vectors = [fairness_vector(part, SCHEMA, bins) for part in parts]
    spec = VectorSpec(len(vectors[0]), **SUMS)
    total = ring.zeros(spec)
    for vector in vectors:
        total = ring.add(total, ring.encode(vector, spec), spec)
    summed, having = fairness_from_vector(ring.decode(total, spec), SCHEMA, bins)
    expected = add_fairness(parts)
    assert having == 3 and summed.proxies == expected.proxies
    for attribute, groups in expected.attributes.items():
        assert list(summed.attributes[attribute]) == list(groups)  # no MISSING group: no row had one
        for group, counts in groups.items():
            got = summed.attributes[attribute][group]
            assert (got.rows, got.bads, got.approved, got.approved_goods, got.bin_bads, got.grade_rows) == (
                counts.rows, counts.bads, counts.approved, counts.approved_goods, counts.bin_bads, counts.grade_rows
            )  # fmt: skip
            assert got.score_sum == pytest.approx(counts.score_sum, abs=3 * 2.0**-24)
    # A bank without counts adds zeros and says so: the sum is then not the consortium's.
    missing = [fairness_vector(None, SCHEMA, bins), *vectors[1:]]
    assert fairness_from_vector(np.sum(missing, axis=0), SCHEMA, bins)[1] == 2


def test_an_evaluation_with_its_counts_by_group_crosses_from_a_node_intact(scored):
    from dataclasses import asdict

    from institution.evaluation import InstitutionEvaluation
    from institution.fairness import with_proxies
    from node import wire
    from riskmodel.bins import FeatureBins

    rows, bad, probabilities, _ = scored
    counts = fairness_counts(probabilities, rows, bad, SCHEMA, CUTOFF)
    counts = with_proxies(counts, rows, [FeatureBins("housing", levels=("rent", "own"))], SCHEMA)
    evaluation = InstitutionEvaluation("bank_a", 1000, 300, {}, fairness={"challenger": counts, "champion": counts})
    assert InstitutionEvaluation.from_wire(wire.decode(wire.encode(asdict(evaluation)))) == evaluation
