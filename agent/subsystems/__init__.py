"""Subsystems: one module per concern of the desired state, each with plan() and apply()."""
