"""Tasks: what a task is, its data, its metrics."""
