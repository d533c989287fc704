"""tasks.per_institution: the pipeline's per-institution Prefect tasks, run in a flow on the real Prefect API."""

import shutil

import pandas as pd
import pytest

from consortium.local import LocalConsortium
from contract.data import Extract
from contract.schema import load_schema
from tasks.per_institution import validate_institution
from tests.conftest import TEST_EXPECTATIONS_DIR

CREDIT = load_schema("credit_default")
BROKEN_NAME = "cedar_savings"


@pytest.fixture
def extract(small_consortium, tmp_path):
    """A writable copy of a valid institution extract."""
    path = tmp_path / "cedar.csv"
    shutil.copy(small_consortium["cedar_savings"], path)
    return path


def _rewrite(path, change) -> None:
    change(pd.read_csv(path)).to_csv(path, index=False)


@pytest.mark.usefixtures("prefect_api")
def test_unchanged_data_is_not_revalidated(extract):
    from prefect import flow

    @flow
    def check_twice():
        consortium = LocalConsortium((Extract(BROKEN_NAME, extract),))
        return [
            validate_institution(
                consortium, BROKEN_NAME, CREDIT, expectations_dir=TEST_EXPECTATIONS_DIR, return_state=True
            )
            for _ in range(2)
        ]

    _rewrite(extract, lambda f: f.sample(frac=1, random_state=20261125))  # content no other test has
    first, second = check_twice()
    assert first.name == "Completed" and second.name == "Cached"
    assert second.result() == first.result()
    _rewrite(extract, lambda f: f.assign(AGE=f["AGE"] + 1))
    [changed, _] = check_twice()
    assert changed.name == "Completed"
