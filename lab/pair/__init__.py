"""The namespace pair harness: failover pairs in throwaway network namespaces (root).

``harness`` builds the lab (two nodes, a bridge, a client), its faults and probes and runs
keepalived as the anchor pair; ``voxnode`` runs two real agents as the pair. Used by
``tests/netns`` and ``bench/pairbench.py``.
"""
