"""Node paths that more than one subsystem (or the application layer) agrees on.

Every path here is an absolute path on the node; subsystems hand them to ``FileTree``,
which resolves them under its root (``/`` on a node, a temporary directory in tests).
"""

from __future__ import annotations

# MCS client: the OpenVPN tunnel to the MCS used for smart working in Standard mode.
# Uploaded by the operator (certificate downloaded from the MCS); switching to Pure Cloud
# deletes both, irrecoverably.
MCS_CLIENT_CONF = "/etc/openvpn/client/mcs.conf"
MCS_CERT_DIR = "/etc/voxnode/mcs"
MCS_CLIENT_PATHS = (MCS_CLIENT_CONF, MCS_CERT_DIR)

# Node TLS certificate and key (PEM), installed by the certificates subsystem; the SIP TLS
# transport for extensions (Pure Cloud) points at them.
NODE_TLS_CERT = "/etc/voxnode/tls/node.crt"
NODE_TLS_KEY = "/etc/voxnode/tls/node.key"

# Shared secret of the co-resident TURN server (coturn ``use-auth-secret``): generated once
# on the node, mode 0600; the application layer reads it to mint time-limited TURN
# credentials for WebRTC and mobile clients. Never logged.
TURN_SECRET = "/etc/voxnode/secrets/turn.secret"

# Files rendered by the working-mode subsystem. The PBX engine's pjsip.conf includes the
# fragment; the application layer (web console, provisioning) reads the JSON.
PJSIP_VOXNODE_CONF = "/etc/asterisk/pjsip_voxnode.conf"
COTURN_CONF = "/etc/coturn/turnserver.conf"
WORKING_MODE_JSON = "/etc/voxnode/working-mode.json"
