"""The errors of licensing an operator can see, and their CLI exit statuses.

They live apart from the HTTP client (no aiohttp import) so the CLI can register them:
an error received over the API is rebuilt by its ``code`` (``agent.errors.error_from_dict``)
and keeps its exit status —

- ``ServerUnreachable`` / ``BadResponse``: the licence server gave no usable answer
  (exit 5, *unreachable*; nothing was changed);
- ``ServerRejectedInput``: the server refused what the operator typed — an unknown serial,
  an email that is not the order's, a wrong code (exit 3, *invalid input*);
- ``ServerRefused``: the server refused because of the serial's state — the code expired
  or is locked, the serial is active on another node, revoked, not active here (exit 6,
  *refused*);
- ``FingerprintError``: the node cannot tell which machine it is (exit 6).
"""

from __future__ import annotations

from typing import Any

from agent.errors import (
    EXIT_INVALID,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    Conflict,
    VoxnodeError,
    register_error,
)

# the server's error codes that are about the operator's input, not the serial's state
INPUT_REASONS = frozenset({"unknown_serial", "email_mismatch", "wrong_code", "bad_request"})


class LicenceServerError(VoxnodeError):
    code = "licence_server_error"
    exit_code = EXIT_UNREACHABLE
    http_status = 502


class ServerUnreachable(LicenceServerError):
    code = "licence_server_unreachable"
    default_remedy = ("Check the node's route and DNS to the licence server and "
                      "license.server_url; nothing was changed.")


class BadResponse(LicenceServerError):
    code = "licence_server_bad_response"
    default_remedy = ("The licence server (or a proxy in between) answered something that is "
                      "not its API; nothing was changed.")


class ServerRefused(Conflict):
    """The server answered with an error of its API (``reason`` is its stable code)."""

    code = "licence_refused"
    default_remedy = "Nothing was changed on this node."

    def __init__(self, message: str, reason: str = "", **kwargs: Any) -> None:
        details = dict(kwargs.pop("details", None) or {})
        if reason:
            details["reason"] = reason
        super().__init__(message, details=details or None, **kwargs)
        self.reason = str(details.get("reason", ""))


class ServerRejectedInput(ServerRefused):
    """The server refused the serial, email or code the operator gave."""

    code = "licence_input_refused"
    exit_code = EXIT_INVALID
    http_status = 422


class FingerprintError(VoxnodeError):
    code = "fingerprint_unavailable"
    exit_code = EXIT_REFUSED
    http_status = 409
    default_remedy = "Make sure /etc/machine-id exists (systemd-machine-id-setup creates it)."


def refusal(message: str, reason: str) -> ServerRefused:
    """The error for a refusal of the server with its stable ``reason`` code."""
    cls = ServerRejectedInput if reason in INPUT_REASONS else ServerRefused
    return cls(message, reason)


for _cls in (LicenceServerError, ServerUnreachable, BadResponse, ServerRefused,
             ServerRejectedInput, FingerprintError):
    register_error(_cls)
