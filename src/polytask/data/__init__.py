"""Tabular data for multi-task learning: bundled dataset loaders and synthetic generators."""
