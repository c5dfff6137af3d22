"""The PBX processes: the catalogue of units and the rule that decides which run
(``catalogue``) and the subsystem that starts and stops them (``subsystem``)."""
