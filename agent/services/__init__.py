"""Service management data: the catalogue of units and the rule that decides which run."""
