"""Who holds a counted module: the application layer records its users here.

A counted module (``WEB_CLIENT_SMART=10``) may be assigned to at most its limit of users;
an update that lowers the limit below the assignments in use needs a review
(``agent.licence.updates``). User ids are opaque: no spaces or commas, at most 128
characters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.errors import Conflict, InvalidInput, Problem
from agent.licence.changes import allowed
from agent.licence.document import MODULE_RE
from agent.ports.files import durable

if TYPE_CHECKING:
    from agent.licence.manager import LicenceManager

_USER_MAX = 128


async def assign(manager: LicenceManager, module: str, add: list[str],
                 drop: list[str]) -> dict[str, Any]:
    problems = [] if MODULE_RE.match(module) else [
        Problem("module", f"'{module}' is not a module name")]
    for user in [*add, *drop]:
        if not user or len(user) > _USER_MAX or any(c in user for c in ", \t\n"):
            problems.append(Problem("user", f"'{user}' is not a user id (no spaces or "
                                    f"commas, at most {_USER_MAX} characters)"))
    if problems:
        raise InvalidInput("the assignment is not valid", problems=problems)
    async with manager.lock:
        status, record, licence = manager.status()
        holders = [h for h in record.assignments.get(module, []) if h not in drop]
        new = [u for u in add if u not in holders]
        if new:
            if not status.active or module not in status.modules:
                raise Conflict(f"module {module} is not licensed on this node")
            limit = allowed(licence, module)
            if limit is None:
                raise Conflict(f"module {module} is not counted: it needs no assignments")
            if len(holders) + len(new) > limit:
                raise Conflict(f"module {module} allows {limit}; {len(holders)} are "
                               f"assigned, {len(new)} more do not fit")
        record.assignments[module] = holders + new
        if not record.assignments[module]:
            del record.assignments[module]
        await durable(manager.store.write_record, record)
    return show(manager)


def show(manager: LicenceManager) -> dict[str, Any]:
    status, record, licence = manager.status()
    return {"assignments": [
        {"module": m, "limit": allowed(licence, m) if status.active else 0,
         "holders": hs} for m, hs in sorted(record.assignments.items())]}
