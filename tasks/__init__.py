"""fedrisk: tasks."""
