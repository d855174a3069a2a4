"""Metric providers (the only code that queries Prometheus) and the operator's own metrics."""
