"""The training engines behind one interface (engines.base.Engine); engines.registry is the only place where a
run's `training.engine` picks one. fed_models/ (TFF) and fed_trees/ (XGBoost) are their implementations."""
