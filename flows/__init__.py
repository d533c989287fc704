"""fedrisk: flows."""
