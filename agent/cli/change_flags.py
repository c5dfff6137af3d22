"""The command-line flags of a change, generated from ``agent.change_options``.

Each field of ``ChangeOptions`` becomes one flag (``confirm_within`` → ``--confirm-within``)
with the help text of its ``Flag``; a ``bool`` field is a switch. A bad value is a usage
error that names the flag and says what is wrong, in the model's own words.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic.fields import FieldInfo

from agent.change_options import ChangeOptions, Flag
from agent.errors import InvalidInput


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _flag(options: type[ChangeOptions], name: str, field: FieldInfo) -> Flag:
    found = [m for m in field.metadata if isinstance(m, Flag)]
    if len(found) != 1:
        raise TypeError(f"{options.__name__}.{name} needs one Flag (its help text)")
    return found[0]


def _scalar(options: type[ChangeOptions], name: str, field: FieldInfo) -> type:
    """The one type a flag's value has: ``float`` for ``float | None``."""
    annotation = field.annotation
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    kinds = [t for t in (typing.get_args(annotation) if union else (annotation,))
             if t is not type(None)]
    if len(kinds) != 1 or kinds[0] not in (bool, int, float, str):
        raise TypeError(f"{options.__name__}.{name}: no command-line form for {annotation}")
    kind: type = kinds[0]
    return kind


def _value_of(options: type[ChangeOptions], name: str, kind: type) -> Callable[[str], Any]:
    """argparse's ``type=``: the text converted to the field's type; text that is not of
    that type is a usage error in the model's words (exit 2). Limits are the model's to
    check when the options are built (``change_options``): a value out of range is invalid
    input (exit 3, the problem listed), as the agent says it."""

    def convert(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            pass
        try:
            options.parse({name: text})  # the model's sentence for a value of another type
        except InvalidInput as exc:
            raise argparse.ArgumentTypeError(
                "; ".join(p.message for p in exc.problems)) from None
        return text

    convert.__name__ = kind.__name__  # argparse names the type in some messages
    return convert


def add_change_flags(
    parser: argparse.ArgumentParser, options: type[ChangeOptions] = ChangeOptions
) -> None:
    """One flag per field of ``options``."""
    for name, field in options.model_fields.items():
        flag, kind = _flag(options, name, field), _scalar(options, name, field)
        if kind is bool:
            if field.default is not False:
                raise TypeError(f"{options.__name__}.{name}: a switch defaults to false")
            parser.add_argument(flag_name(name), dest=name, action="store_true",
                                help=flag.help)
        else:
            parser.add_argument(flag_name(name), dest=name, default=field.default,
                                type=_value_of(options, name, kind), metavar=flag.metavar,
                                help=flag.help)


def change_options(
    args: argparse.Namespace, options: type[ChangeOptions] = ChangeOptions
) -> ChangeOptions:
    """The options the flags of ``add_change_flags`` gave."""
    return options.parse({name: getattr(args, name) for name in options.model_fields})
