"""The exported risk model: a directory of data (feature layout, engine weights or trees) and the one
code that scores raw rows with it. Imports numpy and pandas, and the engine's runtime when loading;
it is shipped with every registered model (MLflow code_paths), so scoring needs nothing else of ours."""
