"""Benchmarks: scripts that print a table and write JSON (not tests; conventions item 11)."""
