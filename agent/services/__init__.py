"""The PBX processes: the catalogue of units and the rule that decides which run
(``catalogue``), the plan of a change (``plan``) and the subsystem that starts and stops
them (``subsystem``)."""
