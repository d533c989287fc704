"""The monitoring report's statistics, from the institutions' summed counts, against independent computations on
the pooled rows: the federated figures equal the pooled ones (exactly for the counts, to rounding for the rest)."""

import math

import numpy as np
import pytest
from scipy import integrate, stats
from sklearn.metrics import roc_auc_score

from contract.data import Extract, Split, load_part
from contract.schema import load_schema
from institution.monitoring import (
    GRADES,
    DevelopmentReference,
    add_counts,
    counts_from_vector,
    counts_vector,
    development_bins,
    monitoring_counts,
)
from institution.scoring import band_index
from institution.statistics import feature_space, local_statistics
from monitoring.statistics import (
    auc_drop_p_value,
    grade_auc,
    herfindahl_index,
    jeffreys_p_value,
    ks_distance,
    stability_index,
    stability_p_value,
)
from riskmodel import model as exported
from riskmodel.bins import FeatureBins
from riskmodel.layout import Layout

LIMIT = FeatureBins("LIMIT_BAL", edges=(50_000.0, 150_000.0, 300_000.0))
EDUCATION = FeatureBins("EDUCATION", levels=("graduate", "university", "high_school"))


def _month(rng: np.random.Generator, n: int, shift: float = 0.0) -> dict:
    """A month of one institution's scored rows: probabilities, outcomes drawn from them, two features."""
    risk = rng.normal(shift, 1.0, n)
    probability = 1 / (1 + np.exp(-(risk - 1.8)))
    limit = np.exp(rng.normal(11.5 - 0.3 * risk, 0.6))
    limit[rng.random(n) < 0.02] = np.nan
    education = rng.choice(["graduate", "university", "high_school", "others", None], n, p=[0.3, 0.4, 0.2, 0.05, 0.05])
    return {
        "probability": probability,
        "outcome": (rng.random(n) < probability).astype(float),
        "features": {"LIMIT_BAL": limit, "EDUCATION": education},
    }


@pytest.fixture(scope="module")
def months():
    rng = np.random.default_rng(7)
    return [_month(rng, n) for n in (3000, 1200, 500)]


def _counts(month):
    return monitoring_counts(month["probability"], month["features"], [LIMIT, EDUCATION], month["outcome"])


def _pooled(months, key):
    if key == "features":
        return {name: np.concatenate([m["features"][name] for m in months]) for name in ("LIMIT_BAL", "EDUCATION")}
    return np.concatenate([m[key] for m in months])


def test_the_institutions_summed_counts_are_the_pooled_rows_counts(months):
    summed = add_counts([_counts(m) for m in months])
    pooled = monitoring_counts(
        _pooled(months, "probability"), _pooled(months, "features"), [LIMIT, EDUCATION], _pooled(months, "outcome")
    )
    assert summed.rows == pooled.rows and summed.defaults == pooled.defaults and summed.features == pooled.features
    np.testing.assert_allclose(summed.predicted, pooled.predicted, rtol=1e-12)
    assert summed.total == 4700 and len(summed.rows) == len(GRADES)
    assert len(summed.features["LIMIT_BAL"]) == len(LIMIT.labels) == 5
    assert len(summed.features["EDUCATION"]) == len(EDUCATION.labels) == 5


def test_without_matured_outcomes_there_are_no_defaults_and_the_sum_has_none(months):
    month = months[0]
    unlabelled = monitoring_counts(month["probability"], month["features"], [LIMIT])
    assert unlabelled.defaults is None
    assert add_counts([unlabelled, _counts(months[1])]).defaults is None
    with pytest.raises(ValueError, match="outcomes must be 0 or 1"):
        monitoring_counts(month["probability"], month["features"], [LIMIT], month["outcome"] * 2)


def test_bins_put_an_edge_value_above_it_and_missing_and_unknown_values_apart():
    assert LIMIT.counts(np.array([10.0, 50_000.0, 149_999.0, 300_000.0, 1e7, np.nan])) == [1, 2, 0, 2, 1]
    assert EDUCATION.counts(["graduate", "others", None, float("nan"), "university", "graduate"]) == [2, 1, 0, 1, 2]
    assert LIMIT.labels[0] == "[-inf, 50000)" and LIMIT.labels[-1] == "(missing)"
    assert EDUCATION.labels[-2:] == ("(other)", "(missing)")


def test_grade_auc_is_the_auc_of_the_grade_as_a_score_on_the_pooled_rows(months):
    summed = add_counts([_counts(m) for m in months])
    auc, _ = grade_auc(summed.defaults, summed.rows)
    y, grade = _pooled(months, "outcome"), band_index(_pooled(months, "probability"))
    assert auc == pytest.approx(roc_auc_score(y, grade), abs=1e-12)


def test_the_auc_standard_error_is_delongs_on_the_pooled_rows():
    rng = np.random.default_rng(3)
    month = _month(rng, 400)
    counts = monitoring_counts(month["probability"], month["features"], [], month["outcome"])
    _, error = grade_auc(counts.defaults, counts.rows)
    # DeLong's variance, row by row: each defaulter against each non-defaulter.
    grade, y = band_index(month["probability"]), month["outcome"] == 1
    x, z = grade[y][:, None], grade[~y][None, :]
    psi = (x > z) + 0.5 * (x == z)
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    expected = math.sqrt(v10.var(ddof=1) / len(v10) + v01.var(ddof=1) / len(v01))
    assert error == pytest.approx(expected, rel=1e-10)


def test_ks_is_the_two_sample_distance_of_the_grades_on_the_pooled_rows(months):
    summed = add_counts([_counts(m) for m in months])
    y, grade = _pooled(months, "outcome") == 1, band_index(_pooled(months, "probability"))
    assert ks_distance(summed.defaults, summed.rows) == pytest.approx(stats.ks_2samp(grade[y], grade[~y]).statistic)


def test_stability_is_the_symmetrised_relative_entropy_and_reads_a_shifted_month(months):
    development = add_counts([_counts(m) for m in months])
    rng = np.random.default_rng(11)
    same = add_counts([_counts(_month(rng, n)) for n in (3000, 1200, 500)])
    shifted = add_counts([_counts(_month(rng, n, shift=0.8)) for n in (3000, 1200, 500)])
    for current in (same, shifted):
        d, c = np.asarray(development.rows) / development.total, np.asarray(current.rows) / current.total
        assert stability_index(development.rows, current.rows) == pytest.approx(
            stats.entropy(c, d) + stats.entropy(d, c), rel=1e-9
        )
    assert stability_index([50, 50], [60, 40]) == pytest.approx(0.1 * math.log(1.2) - 0.1 * math.log(0.8))
    assert stability_index(development.rows, development.rows) == 0.0
    assert stability_index(development.rows, same.rows) < 0.10  # another month of the same population
    assert stability_index(development.rows, shifted.rows) > 0.25  # a riskier population
    assert stability_index(development.features["LIMIT_BAL"], shifted.features["LIMIT_BAL"]) > 0.10
    assert math.isfinite(stability_index([10, 0, 5], [0, 10, 5]))  # an empty bin is floored, not infinite
    with pytest.raises(ValueError, match="same bins"):
        stability_index([1, 2], [1, 2, 3])


def test_jeffreys_p_value_is_the_posteriors_probability_below_the_prediction():
    def posterior_below(pd, defaults, rows):  # Beta(D + 1/2, N - D + 1/2) density integrated from 0 to the PD
        a, b = defaults + 0.5, rows - defaults + 0.5
        log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
        return integrate.quad(lambda t: math.exp(log_norm + (a - 1) * math.log(t) + (b - 1) * math.log1p(-t)), 0, pd)[0]

    for defaults, rows, pd in ((12, 400, 0.02), (3, 400, 0.02), (40, 1000, 0.05), (0, 50, 0.01)):
        assert jeffreys_p_value(defaults, rows, pd) == pytest.approx(posterior_below(pd, defaults, rows), rel=1e-6)
    assert jeffreys_p_value(30, 400, 0.02) < 0.001 < 0.5 < jeffreys_p_value(4, 400, 0.02)  # more defaults: smaller p
    assert jeffreys_p_value(0, 0, 0.02) == 1.0  # an empty grade: nothing to test
    with pytest.raises(ValueError):
        jeffreys_p_value(5, 4, 0.02)


def test_the_auc_drop_test_and_concentration():
    assert auc_drop_p_value(0.75, 0.75, 0.01) == pytest.approx(0.5)
    assert auc_drop_p_value(0.75, 0.73, 0.01) == pytest.approx(stats.norm.sf(2.0))  # two standard errors lower
    assert auc_drop_p_value(0.75, 0.78, 0.01) > 0.99
    assert herfindahl_index([10] * 6) == pytest.approx(1 / 6)
    assert herfindahl_index([0, 0, 60, 0, 0, 0]) == 1.0


def test_discriminatory_power_needs_both_outcomes():
    with pytest.raises(ValueError, match="both defaults and non-defaults"):
        grade_auc([0, 0, 0, 0, 0, 0], [5, 5, 5, 5, 5, 5])
    with pytest.raises(ValueError, match="at most the rows"):
        ks_distance([6, 0, 0, 0, 0, 0], [5, 5, 5, 5, 5, 5])


def test_development_bins_come_from_the_federated_statistics_and_cut_the_pooled_rows_near_deciles(small_consortium):
    schema, split = load_schema("credit_default"), Split(0.2, 0.1, 7)
    features = ["LIMIT_BAL", "AGE", "PAY_0", "EDUCATION"]
    parts = {n: load_part(Extract(n, p), schema, split, "train") for n, p in small_consortium.items()}
    space = feature_space(
        schema, features, split, [local_statistics(n, rows, schema, features) for n, rows in parts.items()]
    )
    bins = {b.name: b for b in development_bins(space)}
    pooled = np.concatenate([rows["AGE"].to_numpy(dtype=float) for rows in parts.values()])
    age = bins["AGE"]
    assert len(age.edges) == 9 and list(age.edges) == sorted(age.edges)
    # The deciles of a normal with the pooled mean and deviation, to three figures: from the counts alone.
    expected = [float(f"{stats.norm.ppf(k / 10, pooled.mean(), pooled.std()):.3g}") for k in range(1, 10)]
    assert list(age.edges) == pytest.approx(expected, rel=1e-3)
    shares = np.asarray(age.counts(pooled)[:-1]) / len(pooled)
    assert shares.min() > 0.02 and shares.max() < 0.25  # every bin holds a share of the development rows
    categorical = next(f for f in space.layout.features if f.name == "EDUCATION")
    assert bins["EDUCATION"].levels == categorical.levels and bins["EDUCATION"].coded == categorical.coded


def test_an_exported_model_keeps_its_bins_in_its_manifest(tmp_path):
    bins = (LIMIT, EDUCATION, FeatureBins("SEX", levels=("1", "2"), coded=True))
    exported.save(tmp_path, engine="xgboost", layout=Layout(), output="p", engine_file="booster.json", bins=bins)
    assert exported.load_manifest_bins(tmp_path) == bins
    assert bins[2].counts([1.0, 2, "2", 3, None]) == [1, 2, 1, 1]  # codes compared as whole numbers


def test_the_development_reference_is_each_institutions_counts_and_their_sum(months):
    reference = DevelopmentReference({name: _counts(m) for name, m in zip("abc", months, strict=True)})
    again = DevelopmentReference.from_json(reference.to_json())
    assert again == reference and again.consortium.total == 4700
    assert again.consortium.rows == add_counts([_counts(m) for m in months]).rows


def _secure_sum(vectors: list[np.ndarray]) -> np.ndarray:
    """What a secure sum releases: the vectors encoded in the protocol's fixed-point ring, added there, decoded."""
    from node.secure import SUMS
    from secagg import ring
    from secagg.ring import VectorSpec

    spec = VectorSpec(len(vectors[0]), **SUMS)
    total = ring.zeros(spec)
    for vector in vectors:
        total = ring.add(total, ring.encode(vector, spec), spec)
    return ring.decode(total, spec)


def test_a_secure_sum_of_the_counts_vectors_is_the_pooled_rows_counts_exactly(months):
    bins = [LIMIT, EDUCATION]
    summed = counts_from_vector(_secure_sum([counts_vector(_counts(m), bins) for m in months]), bins, len(months))
    pooled = monitoring_counts(
        _pooled(months, "probability"), _pooled(months, "features"), bins, _pooled(months, "outcome")
    )
    assert summed.rows == pooled.rows and summed.defaults == pooled.defaults and summed.features == pooled.features
    np.testing.assert_allclose(summed.predicted, pooled.predicted, atol=3 * 2.0**-24)  # the ring's resolution
    # One institution without matured outcomes: the consortium back-tests nothing (its zeros are not outcomes).
    unlabelled = monitoring_counts(months[0]["probability"], months[0]["features"], bins)
    vectors = [counts_vector(c, bins) for c in (unlabelled, _counts(months[1]), _counts(months[2]))]
    assert counts_from_vector(_secure_sum(vectors), bins, 3).defaults is None
    with pytest.raises(ValueError, match="where the model's grades and bins make"):
        counts_from_vector(_secure_sum(vectors)[:-1], bins, 3)
    # A secure development reference holds the sum alone, and keeps it through its JSON.
    reference = DevelopmentReference({}, summed, ("a", "b", "c"))
    assert DevelopmentReference.from_json(reference.to_json()) == reference and reference.consortium == summed


def test_the_stability_p_value_is_uniform_between_samples_of_one_population_and_small_for_a_shifted_one():
    rng = np.random.default_rng(17)
    shares = np.array([0.05, 0.1, 0.2, 0.3, 0.2, 0.1, 0.05])
    p = [stability_p_value(rng.multinomial(2000, shares), rng.multinomial(500, shares)) for _ in range(400)]
    assert 0.02 < np.mean(np.array(p) < 0.05) < 0.09  # about 5 % below 0.05, as a test's size should be
    moved = np.roll(shares, 1)
    assert stability_p_value(rng.multinomial(2000, shares), rng.multinomial(500, moved)) < 1e-6
    assert stability_p_value([10, 0, 5], [0, 0, 5]) == stability_p_value([10, 5], [0, 5])  # empty bins left out
