"""voxnode's development lab, never part of a node (not in the node's wheel or RPM).

- ``voxnode-lab`` (``lab.lifecycle``, ``lab.rootfs``, ``lab.net``, ``lab.util``): two
  systemd-nspawn nodes booting the lab rootfs, a bridge and a client, in network
  namespaces on 10.77.0.0/24 (``make lab``).
- ``lab.pair``: the namespace pair harness of the failover tests and benchmarks: two
  nodes, a bridge and a client in throwaway namespaces (10.88.0.0/24), faults, probes,
  keepalived as the anchor and a voxnode pair of real agents.

Installed, with the image builders and the vendor's licence server, by the development
tools' distribution ``lab/pyproject.toml`` (``make venv``).
"""
