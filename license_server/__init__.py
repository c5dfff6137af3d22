"""voxnode-license-server: the vendor's licence server (serials, activation by emailed
code, signed licences bound to a node fingerprint, checks and releases).

The licence format is ``agent.licence.document``, shared with the agent.
"""
