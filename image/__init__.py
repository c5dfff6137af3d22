"""The image builders (rpm, kickstart, iso, packer, ami; the frozen binary's entry point),
their one kit (``buildutil``; ``artifacts``, what each step hands to the next) and the
rootfs overlay shared by the appliance and the lab. Build tooling, not part of a node."""
