"""Benchmark suites, metrics and reports (Markdown + PNG plots)."""
