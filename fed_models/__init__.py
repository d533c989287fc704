"""Everything TensorFlow Federated: model builders, client data, algorithms, the TFF runtime.

Takes plain values (numpy arrays, paths, dataclasses) and returns weights and metrics, so the
orchestration never touches TFF. Imports no prefect, mlflow or great_expectations.
"""
