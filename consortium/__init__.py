"""The consortium as the coordinator sees it: where each institution's rows are (the in-process stand-in for
simulation, the institutions' nodes across silos) behind one protocol (consortium.protocol)."""
