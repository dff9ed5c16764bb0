"""Metric families for /metrics: each collector reads one source and renders it."""
