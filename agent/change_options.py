"""The options of a change: one definition for the CLI, the API and the engine.

Every change that goes through the pipeline (``config apply``, ``config rollback``,
``network set``, ``mode set``) takes these options. The API accepts them in the request
body under the field names, the CLI generates one flag per field (``--dry-run`` for
``dry_run``, help text from the field's ``Flag``) and the engine takes the validated
object, so a new option is added here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError
from pydantic_core import PydanticCustomError

from agent.errors import InvalidInput, Problem

MAX_CONFIRM_WINDOW = 3600
_WINDOW_RANGE = "confirm_window_range"


@dataclass(frozen=True)
class Flag:
    """How an option shows on the command line: its help text and metavar. Its flag is the
    field name with dashes (``--confirm-within``); a ``bool`` option takes no value."""

    help: str
    metavar: str | None = None


def _true_or_false(value: object) -> bool:
    if not isinstance(value, bool):
        raise PydanticCustomError("voxnode", "must be true or false")
    return value


def _window(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("voxnode", "must be a number of seconds")
    if not 1 <= value <= MAX_CONFIRM_WINDOW:  # NaN fails this too
        raise PydanticCustomError(_WINDOW_RANGE, "must be 1-{limit} seconds",
                                  {"limit": MAX_CONFIRM_WINDOW})
    return float(value)


MAX_COMMENT = 500  # characters: a note for the history, not a file


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("voxnode", "must be a string")
    if len(value) > MAX_COMMENT:
        raise PydanticCustomError(
            "voxnode", "at most {limit} characters, got {length}",
            {"limit": MAX_COMMENT, "length": len(value)})
    return value


class ChangeOptions(BaseModel):
    """How a change is made; the defaults make it at once, for good, without losses."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dry_run: Annotated[
        bool, PlainValidator(_true_or_false), Flag("show the plan; change nothing")
    ] = False
    yes: Annotated[
        bool, PlainValidator(_true_or_false),
        Flag("accept losses the plan lists as irrecoverable (e.g. the MCS client config)"),
    ] = False
    confirm_within: Annotated[
        float | None, PlainValidator(_window),
        Flag("roll back automatically unless `voxnode config confirm` arrives in time "
             "(use it for network changes that could lock you out)", metavar="SECONDS"),
    ] = None
    comment: Annotated[
        str, PlainValidator(_text), Flag("note kept with the revision")
    ] = ""

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Self:
        """Options from their wire form (absent ones take their default), or InvalidInput
        listing every problem as ``field: what is wrong``."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            errors = exc.errors()
            allowed = ", ".join(cls.model_fields)
            problems = [
                Problem(".".join(str(part) for part in err["loc"]),
                        f"unknown option (allowed: {allowed})"
                        if err["type"] == "extra_forbidden" else err["msg"])
                for err in errors
            ]
            if all(err["type"] == _WINDOW_RANGE for err in errors):
                message = "the confirmation window is out of range"
            else:
                message = "the request options are not valid"
            raise InvalidInput(message, problems=problems) from None

    def to_wire(self) -> dict[str, Any]:
        """The JSON fields of a request body (an unset ``confirm_within`` is left out)."""
        return self.model_dump(exclude_none=True)


DEFAULT_OPTIONS = ChangeOptions()
