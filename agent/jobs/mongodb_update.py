"""The MongoDB update job (requirements §6): restart the services that use MongoDB, in order.

Run after an install and after minor or major upgrades, scheduled from the console. Its
steps restart chat, web API, web client proxy and web customer proxy, in that order, by
their logical names in the service catalogue. A service the catalogue does not run on this
node (not licensed, wrong role or mode, or not in this node's catalogue at all) is a
``skipped`` step that says why; a restart systemd refuses or that ends in anything but
``done`` fails the job, naming the unit and systemd's answer.
"""

from __future__ import annotations

from agent.errors import Conflict, SubsystemError
from agent.jobs.runner import JobKind, StepContext, StepDef, StepFunction, StepSkipped
from agent.ports.systemd import JOB_DONE
from agent.services.subsystem import ServicesSubsystem

MONGODB_UPDATE = "mongodb-update"

# logical name in the catalogue -> what the step is called
RESTART_ORDER: tuple[tuple[str, str], ...] = (
    ("chat", "chat"),
    ("webapi", "web API"),
    ("webclientproxy", "web client proxy"),
    ("webcustomerproxy", "web customer proxy"),
)


def _restart_step(services: ServicesSubsystem, name: str) -> StepFunction:
    async def restart(ctx: StepContext) -> str:
        entry = next((e for e in services.catalogue.units if e.name == name), None)
        if entry is None:
            raise StepSkipped(f"{name} is not in this node's service catalogue "
                              f"({services.catalogue.catalogue})")
        state = services.last
        if state is None:
            raise Conflict("this node has no configuration yet: the services are not managed",
                           remedy="Apply a document first: voxnode config apply FILE")
        decision = next(d for d in await services.wanted(state) if d.entry.name == name)
        if not decision.wanted:
            raise StepSkipped(f"{entry.unit} does not run on this node: {decision.reason}")
        before = await services.systemd.unit_state(entry.unit)
        if before.active_state == "failed":  # else a start rate limit hit would refuse it
            await services.systemd.reset_failed(entry.unit)
        ctx.report(10, f"restarting {entry.unit} (found {before.describe()})")
        result = await services.systemd.restart(entry.unit, entry.timeout)
        after = await services.systemd.unit_state(entry.unit)
        if result != JOB_DONE:
            raise SubsystemError(
                f"systemd could not restart {entry.unit} ({name}): the job ended with "
                f"'{result}'; the unit is {after.describe()}, result '{after.result or 'none'}'",
                remedy=f"See `systemctl status {entry.unit}` and `journalctl -u {entry.unit}`.",
                details={"unit": entry.unit, "job_result": result},
            )
        return f"{entry.unit} restarted: {after.describe()}"

    return restart


def mongodb_update_job(services: ServicesSubsystem) -> JobKind:
    """The job kind, bound to the node's services subsystem."""
    return JobKind(
        name=MONGODB_UPDATE,
        title="MongoDB update",
        description="after an install or an upgrade: restart chat, web API, web client "
        "proxy and web customer proxy, in that order",
        steps=tuple(
            StepDef(f"restart-{name}", f"restart {label}", _restart_step(services, name))
            for name, label in RESTART_ORDER
        ),
    )
