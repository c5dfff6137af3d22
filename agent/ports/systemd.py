"""The systemd port: unit states, jobs (start, stop, restart, reload) and unit files.

Owns the typed view of a unit (``UnitState``), the ``SystemdPort`` protocol the services
subsystem talks to, the error a refusal from systemd becomes (``SystemdError``: it names
the unit and carries systemd's own answer) and the production adapter on dbus-fast
(``DbusSystemd``). The in-memory fake lives in ``agent.ports.systemd_memory``.

A job call returns systemd's job result (``done``, ``failed``, ``timeout``, ``canceled``,
``dependency``, ``skipped``…): deciding what a result means is the caller's business.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from dbus_fast import BusType, DBusError, Message, MessageType
from dbus_fast.aio import MessageBus

from agent.errors import SubsystemError

SYSTEMD = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
PROPERTIES = "org.freedesktop.DBus.Properties"
JOB_DONE = "done"
DEFAULT_CALL_TIMEOUT_S = 10.0
DEFAULT_JOB_TIMEOUT_S = 90.0
JOB_MATCH = (
    f"type='signal',sender='{SYSTEMD}',path='{SYSTEMD_PATH}',interface='{MANAGER}',"
    "member='JobRemoved'"
)

_REMEDIES = {
    "org.freedesktop.systemd1.NoSuchUnit": "Install the package that provides {unit}, or "
    "correct the service catalogue.",
    "org.freedesktop.systemd1.UnitMasked": "{unit} is masked: unmask it "
    "(`systemctl unmask {unit}`) or let the agent converge the services again.",
    "org.freedesktop.DBus.Error.AccessDenied": "voxnode-agent must run as root to manage "
    "units.",
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired": "voxnode-agent must run "
    "as root to manage units.",
    "org.freedesktop.DBus.Error.FileNotFound": "Install the package that provides {unit}, "
    "or correct the service catalogue.",
}


@dataclass(frozen=True)
class UnitState:
    """One unit as systemd reports it (``systemctl show`` property values)."""

    unit: str
    load_state: str  # loaded, not-found, masked, error…
    active_state: str  # active, inactive, failed, activating, deactivating, reloading
    sub_state: str  # running, dead, exited, auto-restart…
    result: str  # success, exit-code, signal, timeout…; "" for unit types without one
    unit_file_state: str  # enabled, disabled, masked, static…; "" when there is no file

    @property
    def installed(self) -> bool:
        return self.load_state not in ("not-found", "")

    @property
    def running(self) -> bool:
        """Up or on its way up: starting it again would be a no-op."""
        return self.active_state in ("active", "reloading", "activating")

    @property
    def stopped(self) -> bool:
        return self.active_state in ("inactive", "failed")

    @property
    def enabled(self) -> bool:
        return self.unit_file_state in ("enabled", "enabled-runtime")

    @property
    def masked(self) -> bool:
        return self.load_state == "masked" or self.unit_file_state.startswith("masked")

    def describe(self) -> str:
        """``active (running)``, the way ``systemctl status`` says it."""
        if not self.installed:
            return "not installed"
        return f"{self.active_state} ({self.sub_state})"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class UnitFileChange:
    """One change systemd made to unit files (a symlink created or removed)."""

    kind: str  # symlink, unlink
    path: str
    source: str


class SystemdPort(Protocol):
    """What the services subsystem needs from systemd. Units are named (``nginx.service``)."""

    async def unit_state(self, unit: str) -> UnitState:
        """The unit's state; a unit without a file reports load_state ``not-found``."""
        ...

    async def unit_states(self, units: Sequence[str]) -> list[UnitState]: ...

    async def start(self, unit: str, within: float = DEFAULT_JOB_TIMEOUT_S) -> str:
        """Queue a start job and wait for it; return systemd's job result."""
        ...

    async def stop(self, unit: str, within: float = DEFAULT_JOB_TIMEOUT_S) -> str: ...

    async def restart(self, unit: str, within: float = DEFAULT_JOB_TIMEOUT_S) -> str: ...

    async def reload(self, unit: str, within: float = DEFAULT_JOB_TIMEOUT_S) -> str: ...

    async def reset_failed(self, unit: str) -> None:
        """Forget the unit's failure (and its start rate limit), like `systemctl reset-failed`."""
        ...

    async def enable(self, unit: str) -> list[UnitFileChange]:
        """Enable the unit file and reload systemd; return the symlinks changed."""
        ...

    async def disable(self, unit: str) -> list[UnitFileChange]: ...

    async def mask(self, unit: str) -> list[UnitFileChange]: ...

    async def unmask(self, unit: str) -> list[UnitFileChange]: ...


class SystemdError(SubsystemError):
    """systemd refused or did not answer; the message names the unit and systemd's answer."""

    def __init__(
        self, message: str, *, unit: str, dbus_error: str = "", remedy: str | None = None
    ) -> None:
        details = {"unit": unit}
        if dbus_error:
            details["dbus_error"] = dbus_error
        super().__init__(message, remedy=remedy, details=details)
        self.unit = unit
        self.dbus_error = dbus_error


def refusal(unit: str, action: str, error_name: str, text: str) -> SystemdError:
    """What a D-Bus error reply becomes; the remedy is chosen by the error name."""
    answer = text.strip() or error_name
    remedy = _REMEDIES.get(error_name)
    return SystemdError(
        f"systemd refused to {action} {unit}: {answer} ({error_name})",
        unit=unit,
        dbus_error=error_name,
        remedy=remedy.format(unit=unit) if remedy else None,
    )


def job_timeout(unit: str, action: str, timeout: float) -> SystemdError:
    return SystemdError(
        f"systemd did not finish the {action} job of {unit} within {timeout:g} s",
        unit=unit,
        remedy=f"See `systemctl status {unit}` and `journalctl -u {unit}`.",
    )


# --- production adapter -----------------------------------------------------------------


class _JobWatch:
    """Collects JobRemoved signals from before the job's path is known (they can overtake
    the reply to StartUnit), then resolves with the result of the one job it waits for."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}
        self.job: str | None = None
        self.result: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def removed(self, job: str, result: str) -> None:
        if self.job is None:
            self.seen[job] = result
        elif job == self.job and not self.result.done():
            self.result.set_result(result)

    def expect(self, job: str) -> None:
        self.job = job
        if job in self.seen and not self.result.done():
            self.result.set_result(self.seen[job])


class DbusSystemd:
    """``SystemdPort`` on the system bus with dbus-fast.

    One connection, opened on first use (and again after it drops). On connecting it adds a
    match rule for the manager's ``JobRemoved`` signal and calls ``Subscribe()`` once, so
    every job's end is seen even when it comes before the reply that names the job. Every
    call has a timeout; every job has its own (the caller's) timeout.
    """

    def __init__(self, call_timeout: float = DEFAULT_CALL_TIMEOUT_S) -> None:
        self._timeout = call_timeout
        self._bus: MessageBus | None = None
        self._connecting = asyncio.Lock()
        self._watches: set[_JobWatch] = set()

    async def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    async def _connected(self, unit: str) -> MessageBus:
        async with self._connecting:
            if self._bus is not None and self._bus.connected:
                return self._bus
            self._bus = None
            try:
                async with asyncio.timeout(self._timeout):
                    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            except TimeoutError:
                raise SystemdError(
                    f"the system bus did not answer within {self._timeout:g} s", unit=unit
                ) from None
            except (OSError, EOFError, DBusError) as exc:
                raise SystemdError(
                    f"cannot reach systemd on the system bus (for {unit}): {exc}",
                    unit=unit, remedy="Check that dbus and systemd are running on this node.",
                ) from exc
            try:
                bus.add_message_handler(self._on_message)
                async with asyncio.timeout(self._timeout):
                    await self._raw(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                    "org.freedesktop.DBus", "AddMatch", "s", [JOB_MATCH],
                                    unit, "watch the jobs of")
                    await self._raw(bus, SYSTEMD, SYSTEMD_PATH, MANAGER, "Subscribe", "", [],
                                    unit, "report the jobs of")
            except TimeoutError:
                bus.disconnect()
                raise SystemdError(
                    f"systemd did not answer Subscribe within {self._timeout:g} s", unit=unit
                ) from None
            except BaseException:
                bus.disconnect()
                raise
            self._bus = bus
            return bus

    def _on_message(self, msg: Message) -> None:
        if (
            msg.message_type is MessageType.SIGNAL
            and msg.interface == MANAGER
            and msg.member == "JobRemoved"
            and msg.path == SYSTEMD_PATH
        ):
            _id, job, _unit, result = msg.body
            for watch in list(self._watches):
                watch.removed(str(job), str(result))

    async def _raw(
        self, bus: MessageBus, destination: str, path: str, interface: str, member: str,
        signature: str, body: list[Any], unit: str, action: str,
    ) -> list[Any]:
        msg = Message(destination=destination, path=path, interface=interface, member=member,
                      signature=signature, body=body)
        try:
            reply = await bus.call(msg)
        except DBusError as exc:
            raise refusal(unit, action, exc.type, exc.text) from exc
        if reply.message_type is MessageType.ERROR:
            text = str(reply.body[0]) if reply.body else ""
            raise refusal(unit, action, reply.error_name or "unknown", text)
        return list(reply.body)

    async def _call(
        self, member: str, signature: str, body: list[Any], unit: str, action: str,
        *, path: str = SYSTEMD_PATH, interface: str = MANAGER,
    ) -> list[Any]:
        bus = await self._connected(unit)
        try:
            async with asyncio.timeout(self._timeout):
                return await self._raw(bus, SYSTEMD, path, interface, member, signature, body,
                                       unit, action)
        except TimeoutError:
            raise SystemdError(
                f"systemd did not answer within {self._timeout:g} s ({action} {unit})", unit=unit
            ) from None
        except (OSError, EOFError) as exc:
            self._bus = None
            raise SystemdError(
                f"lost the connection to systemd ({action} {unit}): {exc}", unit=unit
            ) from exc

    async def unit_state(self, unit: str) -> UnitState:
        (path,) = await self._call("LoadUnit", "s", [unit], unit, "load")
        (props,) = await self._call("GetAll", "s", [UNIT], unit, "read the state of",
                                    path=path, interface=PROPERTIES)
        result = ""
        if unit.endswith(".service") and props["LoadState"].value == "loaded":
            (variant,) = await self._call("Get", "ss", [SERVICE, "Result"], unit,
                                          "read the result of", path=path, interface=PROPERTIES)
            result = str(variant.value)
        return UnitState(
            unit=unit,
            load_state=str(props["LoadState"].value),
            active_state=str(props["ActiveState"].value),
            sub_state=str(props["SubState"].value),
            result=result,
            unit_file_state=str(props["UnitFileState"].value),
        )

    async def unit_states(self, units: Sequence[str]) -> list[UnitState]:
        return [await self.unit_state(unit) for unit in units]

    async def _job(self, method: str, unit: str, action: str, within: float) -> str:
        await self._connected(unit)
        watch = _JobWatch()
        self._watches.add(watch)  # before the call: the signal may overtake the reply
        try:
            async with asyncio.timeout(within):
                (job,) = await self._call(method, "ss", [unit, "replace"], unit, action)
                watch.expect(str(job))
                return await watch.result
        except TimeoutError:
            raise job_timeout(unit, action, within) from None
        finally:
            self._watches.discard(watch)

    async def start(self, unit: str, within: float = DEFAULT_JOB_TIMEOUT_S) -> str:
        return await self._job("StartUnit", unit, "start", within)

    async def stop(self, unit: str, within: float = DEFAULT_JOB_TIMEOUT_S) -> str:
        return await self._job("StopUnit", unit, "stop", within)

    async def restart(self, unit: str, within: float = DEFAULT_JOB_TIMEOUT_S) -> str:
        return await self._job("RestartUnit", unit, "restart", within)

    async def reload(self, unit: str, within: float = DEFAULT_JOB_TIMEOUT_S) -> str:
        return await self._job("ReloadUnit", unit, "reload", within)

    async def reset_failed(self, unit: str) -> None:
        await self._call("ResetFailedUnit", "s", [unit], unit, "reset the failed state of")

    async def _unit_files(
        self, method: str, signature: str, body: list[Any], unit: str, action: str
    ) -> list[UnitFileChange]:
        reply = await self._call(method, signature, body, unit, action)
        # EnableUnitFiles/MaskUnitFiles also answer "carries install info" before the changes
        raw = reply[-1]
        changes = [UnitFileChange(str(k), str(p), str(s)) for k, p, s in raw]
        if changes:
            await self._call("Reload", "", [], unit, "reload its configuration after changing")
        return changes

    async def enable(self, unit: str) -> list[UnitFileChange]:
        return await self._unit_files("EnableUnitFiles", "asbb", [[unit], False, False],
                                      unit, "enable")

    async def disable(self, unit: str) -> list[UnitFileChange]:
        return await self._unit_files("DisableUnitFiles", "asb", [[unit], False], unit, "disable")

    async def mask(self, unit: str) -> list[UnitFileChange]:
        return await self._unit_files("MaskUnitFiles", "asbb", [[unit], False, False],
                                      unit, "mask")

    async def unmask(self, unit: str) -> list[UnitFileChange]:
        return await self._unit_files("UnmaskUnitFiles", "asb", [[unit], False], unit, "unmask")
