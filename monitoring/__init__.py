"""Monitoring a champion in production: the report's statistics, from the institutions' counts."""
