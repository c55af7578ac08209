"""Metrics, the ablation summary and the report's plots."""
