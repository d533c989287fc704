"""The record of each retraining in MLflow: the registry and its aliases, the promotion policy, lineage, the model
card and plots, reading versions for a person, and the privacy ledger."""
