"""The consortium as the coordinator sees it: the typed run config, and where each institution's rows are (the
in-process stand-in for simulation, and the institutions' nodes across silos) behind one protocol."""
