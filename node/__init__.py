"""An institution's fedrisk node: a mutual-TLS gRPC service next to its data that performs fedrisk's own
fixed per-institution operations (validate, statistics, training rounds, federated validation, holdout
evaluation) and returns only reports, aggregates, updates and metrics; the client the coordinator's flow
calls; and a development certificate authority."""
