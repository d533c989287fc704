"""The data contract: what an institution's extract must be (schemas under schemas/, the Great Expectations suites
generated from them), how it is read and split, drafting a schema from extracts, and synthetic extracts."""
