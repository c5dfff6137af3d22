"""The MCS client: the OpenVPN tunnel to the MCS used for per-user smart working.

``ovpn`` reads an uploaded bundle (an OpenVPN client configuration, alone or in a zip/tar
with its certificates); ``bundle`` validates it and renders the normalised configuration;
``tunnel`` observes the running tunnel; ``client`` installs, removes, starts and stops it.
"""

from __future__ import annotations

from agent.paths import MCS_CERT_DIR

# Present while the operator has stopped the MCS client (`voxnode mcs stop`): the services
# subsystem must then not start ``openvpn-client@mcs.service``. It lives with the
# certificates so that removing the MCS client configuration (`mcs remove`, the switch to
# Pure Cloud) takes it along, and it survives a reboot like the rest of the configuration.
MCS_STOP_FLAG = f"{MCS_CERT_DIR}/operator-stopped"
MCS_UNIT = "openvpn-client@mcs.service"
# The tunnel interface the normalised configuration names (``dev`` + ``dev-type tun``).
MCS_TUN_DEV = "tun-mcs"
# OpenVPN's management interface (unix socket, root only): tunnel state and byte counts.
MCS_MANAGEMENT_SOCKET = "/run/voxnode-mcs.sock"
