"""What runs where an institution's rows are and returns only counts, sums, metrics or a scored file: validation
(and its checks page), federated statistics, holdout evaluation, scoring. Used by the node and, in simulation, by
the coordinator's own process; it imports neither Prefect nor MLflow."""
