"""Everything XGBoost: federated gradient-boosted trees (XGBoost's federated mode: each institution's worker
computes gradient histograms on its own rows, a federated server sums them), and the same trees trained
centrally for baselines. Takes plain values (arrays, paths, dataclasses); imports no prefect, mlflow,
great_expectations or TFF."""
