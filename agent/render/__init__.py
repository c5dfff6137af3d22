"""Pure renderers: desired state in, file contents out (no I/O)."""
