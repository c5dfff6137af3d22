"""The working mode: its table of derived settings (``table``), the files it renders
(``render``), the plan of a change (``plan``) and the subsystem that converges them
(``subsystem``)."""
