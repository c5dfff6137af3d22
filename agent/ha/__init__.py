"""The agent's side of fault tolerance: the ``ha`` section's subsystem and the pair role
as the services see it. The failover itself (heartbeats, decisions, node IP) is ``ha/``."""
