"""Failover of the node IP and replication to the peer (active/standby pair)."""
