"""`python -m flows.cli`, as the cross-silo demo and the tests start nodes and retrainings."""

from flows.cli import run

run()
