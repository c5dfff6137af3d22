"""Desired state: the typed document, its validation, migrations and revision store."""
