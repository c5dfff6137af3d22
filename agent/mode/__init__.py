"""The working mode: its table of derived settings (``table``), the files it renders
(``render``) and the subsystem that converges them (``subsystem``)."""
