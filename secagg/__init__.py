"""Secure aggregation (Bonawitz et al., CCS 2017): the coordinator learns the sum of the institutions' vectors
and nothing else. Pure Python on `cryptography` and numpy; no TFF, Prefect or MLflow."""
