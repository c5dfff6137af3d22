"""What a skipped test means, and when it may not happen.

A tier that needs root, the lab's host tools, QEMU or a real kernel skips its tests on a
machine that lacks them (``pytest.skip("needs root …")``, ``skipif`` marks, the lab and
image fixtures), so a developer's laptop can run what it can. Under ``CI=true`` (set by
``.ci/run``) every such skip fails the test instead, with its reason: CI must not go green
on a tier that did not run. The hooks in ``tests/conftest.py`` apply this to every skip,
wherever it is raised.

The one exception is a test that does not apply to this run at all, whatever the machine
has: it calls ``not_applicable(reason)``, which skips under CI too.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

CI_VALUES = ("true", "1", "yes")


def in_ci() -> bool:
    """``CI`` is set to true (``.ci/run``, and most CI services, export ``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() in CI_VALUES


class NotApplicable(pytest.skip.Exception):
    """A skip that is not a missing precondition: it stays a skip under CI."""

    __module__ = "builtins"  # reported as "NotApplicable: reason", as pytest does "Skipped: …"


def not_applicable(reason: str) -> NoReturn:
    """Skip a test that does not apply to this run (e.g. a suite aimed at a host that was
    not given), even under CI."""
    raise NotApplicable(reason, _use_item_location=True)


def is_not_applicable(error: BaseException | None) -> bool:
    return isinstance(error, NotApplicable)
