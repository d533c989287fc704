"""hostguard.credentials: the one way fedrisk shows a store, lock or API address, its password masked."""

import pytest

from hostguard.credentials import masked


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://u:pw@db.bank:5432/x", "postgresql://u:***@db.bank:5432/x"),
        ("postgresql+psycopg://fedrisk:p%40ss%3Aw@db/mlflow", "postgresql+psycopg://fedrisk:***@db/mlflow"),
        ("https://alice:s3cret@mlflow.bank/", "https://alice:***@mlflow.bank/"),
        ("postgresql://u@db/x", "postgresql://u@db/x"),
        ("sqlite:////srv/mlruns/mlflow.db", "sqlite:////srv/mlruns/mlflow.db"),
        ("http://127.0.0.1:4200/api", "http://127.0.0.1:4200/api"),
    ],
)
def test_a_password_is_never_shown(url, shown):
    assert masked(url) == shown
