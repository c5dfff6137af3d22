"""Replication to the peer: the slave keeps the master's database and files, so that a
failover loses nothing (requirements §5).

``config`` holds the rules of ``ha.replication`` (document validation) and what the node's
file system must offer (the subsystem's check); ``mariadb`` drives the PBX's database
server: its replication settings, its role (primary or read-only replica) and what it
reports (positions, lag, semi-synchronous state).
"""
