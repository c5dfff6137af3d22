"""The one error hierarchy of voxnode.

Every error an operator can see has a stable ``code`` (used on the wire and in scripts),
an exit status for the CLI, a one-sentence message, an optional remedy and, for bad
input, the full list of problems as ``path: what is wrong``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

# CLI exit statuses (the contract documented in the README and `voxnode --help`).
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_APPLY_FAILED = 4
EXIT_UNREACHABLE = 5
EXIT_REFUSED = 6


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with an input, located by a dotted path (``network.interfaces.eth0``)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class VoxnodeError(Exception):
    """Base of every error voxnode reports to an operator."""

    code: ClassVar[str] = "internal_error"
    exit_code: ClassVar[int] = EXIT_INTERNAL
    http_status: ClassVar[int] = 500
    default_remedy: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        problems: list[Problem] | tuple[Problem, ...] = (),
        remedy: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        if not message:
            raise ValueError("an error needs a message")
        super().__init__(message)
        self.message = message
        self.problems = list(problems)
        self.remedy = remedy if remedy is not None else self.default_remedy
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "problems": [p.to_dict() for p in self.problems],
        }
        if self.remedy:
            out["remedy"] = self.remedy
        if self.details:
            out["details"] = self.details
        return out


class InvalidInput(VoxnodeError):
    """The input (a document, an argument) cannot be accepted as given."""

    code = "invalid_input"
    exit_code = EXIT_INVALID
    http_status = 422
    default_remedy = "Correct the listed problems and try again; nothing was changed."


class ConfirmationRequired(VoxnodeError):
    """The change is valid but destroys something; the caller must acknowledge it (--yes)."""

    code = "confirmation_required"
    exit_code = EXIT_REFUSED
    http_status = 409
    default_remedy = "Read what will be lost, then repeat the command with --yes."


class Conflict(VoxnodeError):
    """The request does not fit the agent's current state (nothing pending, busy...)."""

    code = "conflict"
    exit_code = EXIT_REFUSED
    http_status = 409


class NotFound(VoxnodeError):
    code = "not_found"
    exit_code = EXIT_INVALID
    http_status = 404


class ApplyFailed(VoxnodeError):
    """Applying a change failed on the machine; the previous revision was re-applied."""

    code = "apply_failed"
    exit_code = EXIT_APPLY_FAILED
    http_status = 424
    default_remedy = "The node is back on its previous configuration; fix the cause and retry."


class SubsystemError(VoxnodeError):
    """Raised by a subsystem's apply(); the engine turns it into ApplyFailed after rollback."""

    code = "subsystem_error"


class StoreError(VoxnodeError):
    """The state directory cannot be read or written."""

    code = "store_error"
    default_remedy = "Check the state directory's permissions and free space."


class UnsupportedBody(VoxnodeError):
    """A request that acts came with a body that is not JSON (a form a web page posted,
    say): it is never acted on."""

    code = "unsupported_media_type"
    exit_code = EXIT_USAGE
    http_status = 415
    default_remedy = ("Send the body as JSON with 'Content-Type: application/json' (an empty "
                      "object when there is nothing to say); nothing was changed.")


class AgentUnreachable(VoxnodeError):
    code = "agent_unreachable"
    exit_code = EXIT_UNREACHABLE
    default_remedy = "Check that voxnode-agent is running (systemctl status voxnode-agent)."


ERRORS_BY_CODE: dict[str, type[VoxnodeError]] = {
    cls.code: cls
    for cls in (
        VoxnodeError,
        InvalidInput,
        ConfirmationRequired,
        Conflict,
        NotFound,
        ApplyFailed,
        SubsystemError,
        StoreError,
        UnsupportedBody,
        AgentUnreachable,
    )
}


def register_error(cls: type[VoxnodeError]) -> type[VoxnodeError]:
    """Make an error class of another package known to ``error_from_dict`` by its code (the
    CLI imports those packages' error modules, so it keeps their exit statuses)."""
    ERRORS_BY_CODE[cls.code] = cls
    return cls


def error_from_dict(data: dict[str, Any]) -> VoxnodeError:
    """Rebuild an error received over the API (CLI side)."""
    cls = ERRORS_BY_CODE.get(str(data.get("code", "")), VoxnodeError)
    problems = [
        Problem(str(p.get("path", "")), str(p.get("message", "")))
        for p in data.get("problems", [])
        if isinstance(p, dict)
    ]
    message = str(data.get("message") or "the agent reported an error without a message")
    details = data.get("details")
    return cls(
        message,
        problems=problems,
        remedy=data.get("remedy"),
        details=details if isinstance(details, dict) else None,
    )
