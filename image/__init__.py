"""Image pipeline: build orchestration, rootfs overlay shared by the appliance and the lab."""
