"""The subsystem contract (``base``): what every capability's subsystem (``agent.network``,
``agent.mode``, ``agent.ha``, ``agent.services``) exposes to the engine."""
