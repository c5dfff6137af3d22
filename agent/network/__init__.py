"""The node's network: the files that persist it (``render``), the plan of a change
(``plan``) and the subsystem that converges the kernel and the files (``subsystem``)."""
