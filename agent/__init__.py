"""voxnode system agent: owns the node's desired state and converges the machine to it."""

__version__ = "0.1.0"
