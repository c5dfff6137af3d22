"""Ports: every contact with the machine goes through one of these small interfaces."""
