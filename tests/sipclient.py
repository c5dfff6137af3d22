"""A SIP test client for the lab: two pjsua2 accounts register to a node's PBX engine and
call each other, and the outcome is reported as one JSON document.

pjsip binds the address of the namespace it runs in, so the client runs in its own process
inside the lab's client namespace (10.77.0.100) and talks to a node over the lab LAN::

    ip netns exec vxlab-client .venv/bin/python -m tests.sipclient --registrar 10.77.0.11
    ip netns exec vxlab-client .venv/bin/python -m tests.sipclient --registrar 10.77.0.11 \\
        --dial 1999 --expect-status 404          # an unregistered user: Kamailio says 404

Tests use :func:`run_in_lab`, which starts that process (with a hard timeout) and returns
the parsed result; the failover tests build on it.

A phone that stays registered across a change (``--phone USER``, :class:`Phone` in tests)
is the same client with one account: it registers once (``--expires``, long enough that it
does not refresh meanwhile), answers every call, and reports each REGISTER it sends, each
answer and each call state as one JSON line on stdout while it runs, then a last line with
the whole report when its stdin closes (or ``--lifetime`` ends); it unREGISTERs before it
exits. A caller run can dial such a phone with ``--remote-callee --dial USER``: only the
caller registers, and the call is judged on the caller's side (the phone reports its own)::

    ip netns exec vxlab-client .venv/bin/python -m tests.sipclient --registrar 10.77.0.10 \
        --phone 1003 --expires 300                 # stays registered until stdin closes
    ip netns exec vxlab-client .venv/bin/python -m tests.sipclient --registrar 10.77.0.10 \
        --caller 1004 --remote-callee --dial 1003  # rings it

What one run does, every wait bounded by ``--timeout``:

1. endpoint with the null audio device, one UDP transport bound to ``--bind``;
2. REGISTER ``--caller`` and ``--callee`` (``sip:USER@REGISTRAR``, no authentication: the
   lab's Kamailio runs Debian's default configuration, WITH_AUTH off; usrloc in memory on
   a bare node, in the node's database on the appliance's);
3. the caller INVITEs ``sip:DIAL@REGISTRAR`` (``--dial``, default the callee), routed by
   the registrar's location lookup; the callee answers 200 at once;
4. with the call CONFIRMED on both sides, hold ``--hold-ms``, the caller hangs up, wait
   for DISCONNECTED on both sides;
5. unREGISTER both (so no stale contact is left in usrloc), then tear down in the order
   pjsua2 needs: calls, accounts, ``libDestroy``.

The JSON on stdout (times in ms since the client started, latencies in ms)::

    {"ok": true, "errors": [], "expect_status": 200, "registrar": "10.77.0.11:5060", ...
     "register": {"1001": {"status": 200, "reason": "OK", "latency_ms": 9.8, ...}, ...},
     "call": {"target": "sip:1002@10.77.0.11", "final_status": 200, "setup_ms": 6.1,
              "caller": {"states": [{"state": "CALLING", "t_ms": ..., "status": 0}, ...],
                         "confirmed": true, "disconnected": true, ...},
              "callee": {...}},
     "unregister": {"1001": {"status": 200, ...}, ...}}

``ok`` is true when both registrations got 200 and the call ended as expected: with
``--expect-status 200`` CONFIRMED on both sides and DISCONNECTED after the hang-up,
otherwise rejected with that status. Exit status: 0 ok, 1 not ok, 2 usage.

The process always ends: every wait is bounded, and a watchdog thread (faulthandler)
kills it when one call into pjsua2 blocks for ``--stall`` seconds (a GIL deadlock of this
binding, see ``quiet()``); :func:`run_in_lab` then runs it again. Only the addresses
given are contacted (lab addresses only): no STUN, no DNS.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import ipaddress
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
CLIENT_NETNS = "vxlab-client"
CLIENT_ADDRESS = "10.77.0.100"
LAB_NETWORK = ipaddress.ip_network("10.77.0.0/24")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

_T0 = time.monotonic()


def _now_ms() -> float:
    return round((time.monotonic() - _T0) * 1000, 2)


# --- running it from a test -----------------------------------------------------------------


def command(registrar: str, *args: str, netns: str = CLIENT_NETNS) -> list[str]:
    """Argv that runs the client in ``netns`` against ``registrar``."""
    return ["ip", "netns", "exec", netns, sys.executable, "-m", "tests.sipclient",
            "--registrar", registrar, *args]


def run_in_lab(registrar: str = "10.77.0.11", *args: str, netns: str = CLIENT_NETNS,
               timeout: float = 60.0, attempts: int = 3) -> dict[str, Any]:
    """Run one client in the lab's client namespace and return its JSON result.

    A run killed by its stall watchdog (the pjsua2 binding's GIL deadlock, see ``quiet()``
    in the client) printed no result: it is run again, up to ``attempts`` times; the
    result says how many runs it took (``attempts``) and where the stalled ones hung
    (``stalls``). Adds ``returncode`` and ``stderr``. Raises ``RuntimeError`` when no run
    printed a result (crash, or ``timeout`` seconds passed in all).
    """
    stalls: list[str] = []
    deadline = time.monotonic() + timeout
    for attempt in range(1, attempts + 1):
        left = deadline - time.monotonic()
        try:
            proc = subprocess.run(command(registrar, *args, netns=netns), cwd=REPO,
                                  capture_output=True, text=True, timeout=max(1.0, left),
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"sipclient did not finish within {timeout} s: "
                               f"{exc.stderr!r}") from None
        try:
            result: dict[str, Any] = json.loads(proc.stdout)
        except ValueError:
            if "Timeout (" in proc.stderr and attempt < attempts:  # the watchdog fired
                stalls.append(_stalled_at(proc.stderr))
                continue
            raise RuntimeError(f"sipclient exited {proc.returncode} without a JSON result "
                               f"(attempt {attempt}, earlier stalls {stalls}):\n"
                               f"stdout: {proc.stdout}\nstderr: {proc.stderr}") from None
        result.update(returncode=proc.returncode, stderr=proc.stderr, attempts=attempt,
                      stalls=stalls)
        return result
    raise AssertionError("unreachable")


def _stalled_at(stderr: str) -> str:
    """The innermost line of this module in the watchdog's dump of the main thread."""
    frames = [line.strip() for line in stderr.splitlines() if "sipclient.py" in line]
    return frames[0] if frames else "unknown"


class Phone:
    """A phone that stays registered: the client's ``--phone`` mode in its own process in
    ``netns``, from registration until :meth:`stop`.

    Its events (see ``_phone``) are collected as they arrive; each carries ``mono``, the
    phone's ``time.monotonic()``, which is the test's clock too (one machine), so a test
    can tell what the phone did before and after a moment of its own. :meth:`start`
    returns it registered (a run whose registration stalled, the binding's deadlock, is
    started again); :meth:`stop` closes its stdin and returns its final report.
    """

    def __init__(self, registrar: str, user: str, *args: str, netns: str = CLIENT_NETNS,
                 lifetime: float = 180.0) -> None:
        self.user = user
        self.events: list[dict[str, Any]] = []
        self.report: dict[str, Any] | None = None
        self._cond = threading.Condition()
        # the phone's stderr (pjsip's start-up lines, a watchdog's dump), closed on __exit__
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            command(registrar, "--phone", user, "--lifetime", f"{lifetime:g}", *args,
                    netns=netns),
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            text=True)
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,),
                                        daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, registrar: str, user: str, *args: str, attempts: int = 3,
              timeout: float = 20.0, **kwargs: Any) -> Phone:
        """A phone whose REGISTER got its answer (200 or not: the caller judges it)."""
        problems = []
        for _ in range(attempts):
            phone = cls(registrar, user, *args, **kwargs)
            if phone.wait_for(lambda e: e["event"] == "registration", timeout) is not None:
                return phone
            phone.kill()
            problems.append(phone.stderr_tail())
        raise RuntimeError(f"phone {user} got no answer to its REGISTER in {attempts} runs: "
                           + " | ".join(problems))

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                if event.get("event") == "report":
                    self.report = event
                else:
                    self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, match: Callable[[dict[str, Any]], bool],
                 timeout: float) -> dict[str, Any] | None:
        """The first event that ``match`` accepts (waiting up to ``timeout``), or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = next((e for e in self.events if match(e)), None)
                left = deadline - time.monotonic()
                if found is not None or left <= 0 or not self._reader.is_alive():
                    return found
                self._cond.wait(min(left, 0.2))

    def sent(self) -> list[dict[str, Any]]:
        """The REGISTERs (refreshes included; not the unREGISTER) it has sent so far."""
        with self._cond:
            return [e for e in self.events if e["event"] == "register-sent" and e["renew"]]

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """Close its stdin (it hangs up, unREGISTERs and reports), wait: the report."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._reader.join(5)
        if self.report is None:
            raise RuntimeError(f"phone {self.user} exited {self.proc.returncode} without a "
                               f"report: {self.stderr_tail()}")
        return self.report

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def stderr_tail(self, lines: int = 15) -> str:
        self._stderr.seek(0)
        return "\n".join(self._stderr.read().splitlines()[-lines:])

    def __enter__(self) -> Phone:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(RuntimeError):
                self.stop()
        self.kill()
        self._stderr.close()


# --- the client (runs in its own process) ---------------------------------------------------


class Watchdog:
    """Kills the process (exit 1, stacks on stderr) when the main thread stalls.

    A C thread (faulthandler) that needs no GIL: the main thread re-arms it while it
    waits or sleeps; a call into pjsua2 that does not return within ``stall`` seconds (a
    healthy one takes microseconds) means the GIL deadlock described in ``quiet()``.
    """

    def __init__(self, stall: float) -> None:
        self.stall = stall

    def arm(self, extra: float = 0.0) -> None:
        faulthandler.dump_traceback_later(self.stall + extra, exit=True)

    def sleep(self, seconds: float) -> None:
        self.arm(seconds)
        time.sleep(seconds)
        self.arm()


class Waiter:
    """Thread-safe flags set from pjsip's thread, waited for on the main thread."""

    def __init__(self, watchdog: Watchdog) -> None:
        self._cond = threading.Condition()
        self._watchdog = watchdog

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._watchdog.arm()
                left = deadline - time.monotonic()
                if self._cond.wait_for(predicate, max(0.0, min(0.1, left))):
                    self._watchdog.arm()
                    return True
                if left <= 0.1:
                    self._watchdog.arm()
                    return False


def _client(args: argparse.Namespace) -> dict[str, Any]:
    import pjsua2 as pj  # imported here: the test process itself never loads pjsip

    watchdog = Watchdog(args.stall)
    waiter = Waiter(watchdog)
    registrar = f"{args.registrar}:{args.port}"
    result: dict[str, Any] = {
        "ok": False, "errors": [], "registrar": registrar, "bind": args.bind,
        "expect_status": args.expect_status, "remote_callee": args.remote_callee,
        "register": {}, "call": None, "unregister": {},
    }
    errors: list[str] = result["errors"]

    class SipCall(pj.Call):
        def __init__(self, acc: Any, side: str, call_id: int = -1) -> None:
            super().__init__(acc, call_id)
            self.side = side
            self.states: list[dict[str, Any]] = []
            self.state = "NULL"
            self.status = 0
            self.reason = ""
            self.t_start = _now_ms()

        def onCallState(self, prm: Any) -> None:
            ci = self.info
            self.state = ci.state.name
            self.status = int(ci.lastStatusCode)
            self.reason = ci.lastReason
            self.states.append({"state": self.state, "t_ms": _now_ms(), "status": self.status,
                                "reason": self.reason})
            waiter.notify()

        def report(self) -> dict[str, Any]:
            by = {s["state"]: s["t_ms"] for s in self.states}
            confirmed = by.get("CONFIRMED")
            return {
                "states": self.states, "final_state": self.state, "last_status": self.status,
                "last_reason": self.reason, "confirmed": confirmed is not None,
                "disconnected": "DISCONNECTED" in by, "t_start_ms": self.t_start,
                "confirmed_ms": None if confirmed is None else round(confirmed - self.t_start, 2),
            }

    class SipAccount(pj.Account):
        def __init__(self, user: str) -> None:
            super().__init__()
            self.user = user
            self.reg: list[dict[str, Any]] = []
            self.sent: list[dict[str, Any]] = []  # REGISTERs sent (renew False: unREGISTER)
            self.t_reg = 0.0
            self.incoming: list[SipCall] = []

        def onRegStarted(self, prm: Any) -> None:
            self.sent.append({"renew": bool(prm.renew), "t_ms": _now_ms()})

        def onRegState(self, prm: Any) -> None:
            self.reg.append({"status": int(prm.code), "reason": prm.reason,
                             "expires": int(prm.expiration), "t_ms": _now_ms()})
            waiter.notify()

        def onIncomingCall(self, prm: Any) -> None:
            call = SipCall(self, "callee", prm.callId)
            self.incoming.append(call)  # keep the Python object alive
            _answer(pj, call, errors)
            waiter.notify()

    accounts: dict[str, SipAccount] = {}
    outgoing: list[SipCall] = []  # the caller's call; the callee's are in its account

    def quiet() -> None:
        """Let pjsip's thread finish the event whose callback was just waited for.

        This pjsua2 binding keeps the GIL during every call into pjsip, and pjsip's thread
        takes the GIL for each callback while it holds pjsua's locks: a call from this
        thread while pjsip's thread is still busy with an event can deadlock both (seen
        when creating the second account while the first one's 200 OK was being handled,
        and on unREGISTER right after the call's teardown). Every call into pjsua2 after
        the first therefore waits for a short quiet moment; the watchdog covers the rest.
        """
        watchdog.sleep(args.settle_ms / 1000)

    def register() -> bool:
        for user in (args.caller,) if args.remote_callee else (args.caller, args.callee):
            if accounts:
                quiet()
            acc = SipAccount(user)
            acfg = _account_config(pj, args, user, registrar, transport)
            acc.t_reg = _now_ms()
            accounts[user] = acc
            acc.create(acfg)  # registerOnAdd: the REGISTER leaves now
            if not waiter.wait_for(lambda a=acc: bool(a.reg), args.timeout):
                errors.append(f"no REGISTER answer for {user} within {args.timeout} s")
                result["register"][user] = {"status": None, "latency_ms": None}
                continue
            first = acc.reg[0]
            result["register"][user] = {**first,
                                        "latency_ms": round(first["t_ms"] - acc.t_reg, 2)}
        return all(r.get("status") == 200 for r in result["register"].values())

    def place_call() -> dict[str, Any]:
        target = f"sip:{args.dial}@{args.registrar}"
        # a remote callee (another process's phone) answers for itself: judged by the caller
        answered: list[SipCall] = [] if args.remote_callee else accounts[args.callee].incoming
        caller = SipCall(accounts[args.caller], "caller")
        outgoing.append(caller)
        quiet()
        caller.t_start = _now_ms()
        caller.makeCall(target, pj.CallOpParam(True))
        if not waiter.wait_for(lambda: caller.state in ("CONFIRMED", "DISCONNECTED"),
                               args.timeout):
            errors.append(f"call to {target}: no final answer within {args.timeout} s "
                          f"(caller state {caller.state})")
        if caller.state == "CONFIRMED":
            if not args.remote_callee and not waiter.wait_for(
                    lambda: any(c.state == "CONFIRMED" for c in answered), args.timeout):
                errors.append(f"callee did not reach CONFIRMED within {args.timeout} s")
            watchdog.sleep(args.hold_ms / 1000)
        quiet()
        hangup_at = None
        if caller.state not in ("DISCONNECTED", "NULL"):
            hangup_at = _now_ms()
            try:
                caller.hangup(pj.CallOpParam())
            except Exception as exc:  # pjsua2 raises its own Error type
                errors.append(f"hangup failed: {exc}")
        if not waiter.wait_for(
                lambda: all(c.state == "DISCONNECTED" for c in [caller, *answered]),
                args.timeout):
            errors.append(f"not every call side reached DISCONNECTED within {args.timeout} s")
        caller_report = caller.report()
        confirmed_at = next((s["t_ms"] for s in caller.states if s["state"] == "CONFIRMED"),
                            None)
        final = next((s["status"] for s in caller.states
                      if s["state"] in ("CONFIRMED", "DISCONNECTED")), None)
        return {
            "target": target, "final_status": final,
            "setup_ms": caller_report["confirmed_ms"],
            "hangup_ms": (None if hangup_at is None or confirmed_at is None
                          else round(hangup_at - confirmed_at, 2)),
            "caller": caller_report,
            "callee": answered[0].report() if answered else None,
        }

    def unregister() -> None:
        """Remove the contacts again (keeps Kamailio's usrloc clean for the next run)."""
        for acc in accounts.values():
            if not acc.reg or acc.reg[0]["status"] != 200:
                continue
            quiet()
            before, t = len(acc.reg), _now_ms()
            try:
                acc.setRegistration(False)
            except Exception as exc:
                errors.append(f"unregister {acc.user} failed: {exc}")
                continue
            if waiter.wait_for(lambda a=acc, n=before: len(a.reg) > n, args.timeout):
                last = acc.reg[-1]
                result["unregister"][acc.user] = {**last,
                                                  "latency_ms": round(last["t_ms"] - t, 2)}
            else:
                errors.append(f"no answer to the unREGISTER of {acc.user}")

    def close(acc: SipAccount) -> None:
        acc.incoming.clear()
        try:
            acc.shutdown()
        except Exception as exc:
            errors.append(f"account shutdown: {exc}")

    # pjsua2 objects live only in `accounts` and `outgoing` (the steps are functions, so
    # no stray local keeps one): both are emptied before libDestroy()
    ep = pj.Endpoint()
    ep.libCreate()
    try:
        transport = _start_endpoint(pj, ep, args)
        if register():
            result["call"] = place_call()
        unregister()
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        # the order pjsua2 needs: hang up, drop the calls, the accounts, then the library
        quiet()
        watchdog.arm(10.0)  # pjsua_destroy may wait for transactions still in flight
        try:
            ep.hangupAllCalls()
        except Exception as exc:
            errors.append(f"hangupAllCalls: {exc}")
        outgoing.clear()
        for user in list(accounts):
            close(accounts.pop(user))
        ep.libDestroy()

    result["ok"] = verdict(result, args.expect_status)
    return result


def _account_config(pj: Any, args: argparse.Namespace, user: str, registrar: str,
                    transport: int) -> Any:
    """The account of ``user`` on the registrar: one REGISTER attempt (the test judges it)."""
    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:{user}@{args.registrar}"
    acfg.regConfig.registrarUri = f"sip:{registrar}"
    acfg.regConfig.timeoutSec = args.expires
    acfg.regConfig.retryIntervalSec = 0
    acfg.sipConfig.transportId = transport
    return acfg


def _answer(pj: Any, call: Any, errors: list[str]) -> None:
    """Answer an incoming call with 200 OK; a failure goes into ``errors``."""
    answer = pj.CallOpParam()
    answer.statusCode = pj.StatusCode.OK
    try:
        call.answer(answer)
    except Exception as exc:  # pjsua2 raises its Error type
        errors.append(f"answer failed: {exc}")


def _start_endpoint(pj: Any, ep: Any, args: argparse.Namespace) -> int:
    """Initialise and start a created endpoint: one pjsip thread, the null audio device,
    one UDP transport bound to ``--bind``. The transport's id."""
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 1
    cfg.uaConfig.maxCalls = 4
    cfg.logConfig.consoleLevel = 0
    cfg.logConfig.level = 5 if args.pjsip_log else 0
    cfg.logConfig.msgLogging = 1 if args.pjsip_log else 0
    if args.pjsip_log:
        cfg.logConfig.filename = args.pjsip_log
    ep.libInit(cfg)
    tcfg = pj.TransportConfig()
    tcfg.boundAddress = args.bind
    tcfg.publicAddress = args.bind
    tcfg.port = args.local_port
    transport: int = ep.transportCreate(pj.TransportType.UDP, tcfg)
    ep.libStart()
    ep.audDevManager.setNullDev()
    return transport


def _phone(args: argparse.Namespace, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """``--phone``: one account that registers once and stays registered, answering every
    call, until stdin closes (or ``--lifetime`` s pass); then it unREGISTERs. Each event
    (``started``: its SIP address, ``contact``; ``register-sent``: a REGISTER leaves,
    ``renew`` false for the unREGISTER;
    ``registration``: its answer; ``incoming``; ``call``: a call's state) goes out through
    ``emit`` as it happens, with ``t_ms`` and ``mono`` (``time.monotonic()``)."""
    import pjsua2 as pj  # imported here: the test process itself never loads pjsip

    watchdog = Watchdog(args.stall)
    waiter = Waiter(watchdog)
    registrar = f"{args.registrar}:{args.port}"
    result: dict[str, Any] = {
        "ok": False, "errors": [], "phone": args.phone, "registrar": registrar,
        "bind": args.bind, "contact": None, "sent": [], "registrations": [], "calls": [],
        "unregister": None, "ended_by": None,
    }
    errors: list[str] = result["errors"]
    registrations: list[dict[str, Any]] = result["registrations"]

    def event(kind: str, **fields: Any) -> dict[str, Any]:
        found = {"event": kind, "t_ms": _now_ms(), "mono": time.monotonic(), **fields}
        emit(found)
        return found

    class PhoneCall(pj.Call):
        def __init__(self, acc: Any, call_id: int) -> None:
            super().__init__(acc, call_id)
            self.states: list[dict[str, Any]] = []
            self.state = "NULL"

        def onCallState(self, prm: Any) -> None:
            ci = self.info
            self.state = ci.state.name
            self.states.append(event("call", state=self.state,
                                     status=int(ci.lastStatusCode), reason=ci.lastReason))
            waiter.notify()

    class PhoneAccount(pj.Account):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[PhoneCall] = []

        def onRegStarted(self, prm: Any) -> None:
            result["sent"].append(event("register-sent", renew=bool(prm.renew)))

        def onRegState(self, prm: Any) -> None:
            registrations.append(event("registration", status=int(prm.code),
                                       reason=prm.reason, expires=int(prm.expiration)))
            waiter.notify()

        def onIncomingCall(self, prm: Any) -> None:
            call = PhoneCall(self, prm.callId)
            self.calls.append(call)  # keep the Python object alive
            event("incoming", remote=call.info.remoteUri)
            _answer(pj, call, errors)
            waiter.notify()

    def stay() -> str:
        """Until stdin closes (or says ``quit``) or the lifetime ends: what ended it."""
        deadline = time.monotonic() + args.lifetime
        while time.monotonic() < deadline:
            watchdog.arm()
            ready, _, _ = select.select([sys.stdin], [], [], 0.2)
            if ready and sys.stdin.readline() in ("", "quit\n"):
                return "stdin"
        return "lifetime"

    def unregister(acc: PhoneAccount) -> None:
        watchdog.sleep(args.settle_ms / 1000)
        ep.hangupAllCalls()
        waiter.wait_for(lambda: all(c.state == "DISCONNECTED" for c in acc.calls),
                        args.timeout)
        watchdog.sleep(args.settle_ms / 1000)
        before = len(registrations)
        acc.setRegistration(False)
        if waiter.wait_for(lambda: len(registrations) > before, args.timeout):
            result["unregister"] = registrations[-1]
        else:
            errors.append(f"no answer to the unREGISTER of {args.phone}")

    accounts: list[PhoneAccount] = []  # emptied before libDestroy(), like the client's
    ep = pj.Endpoint()
    ep.libCreate()
    try:
        transport = _start_endpoint(pj, ep, args)
        result["contact"] = ep.transportGetInfo(transport).localName
        event("started", contact=result["contact"])
        acfg = _account_config(pj, args, args.phone, registrar, transport)
        accounts.append(PhoneAccount())
        accounts[0].create(acfg)  # registerOnAdd: the REGISTER leaves now
        if not waiter.wait_for(lambda: bool(registrations), args.timeout):
            errors.append(f"no REGISTER answer for {args.phone} within {args.timeout} s")
        elif registrations[0]["status"] != 200:
            errors.append(f"REGISTER {args.phone}: {registrations[0]}")
        else:
            result["ended_by"] = stay()
            unregister(accounts[0])
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        watchdog.sleep(args.settle_ms / 1000)
        watchdog.arm(10.0)  # pjsua_destroy may wait for transactions still in flight
        try:
            ep.hangupAllCalls()
        except Exception as exc:
            errors.append(f"hangupAllCalls: {exc}")
        for acc in accounts:
            result["calls"] = [c.states for c in acc.calls]
            acc.calls.clear()
            try:
                acc.shutdown()
            except Exception as exc:
                errors.append(f"account shutdown: {exc}")
        accounts.clear()
        ep.libDestroy()
    result["ok"] = not errors and bool(registrations) and registrations[0]["status"] == 200
    return result


def verdict(result: dict[str, Any], expect_status: int) -> bool:
    """Both registrations 200, no error, and the call ended as expected: answered,
    CONFIRMED and DISCONNECTED on both sides (200), or rejected with that status."""
    registered = bool(result["register"]) and all(
        r.get("status") == 200 for r in result["register"].values())
    call = result["call"]
    if call is None:
        call_ok = False
    elif expect_status == 200 and result.get("remote_callee"):
        call_ok = (call["final_status"] == 200 and call["caller"]["confirmed"]
                   and call["caller"]["disconnected"])
    elif expect_status == 200:
        callee = call["callee"] or {}
        call_ok = (call["final_status"] == 200 and call["caller"]["confirmed"]
                   and bool(callee.get("confirmed")) and call["caller"]["disconnected"]
                   and bool(callee.get("disconnected")))
    else:
        call_ok = call["final_status"] == expect_status and not call["caller"]["confirmed"]
    return registered and call_ok and not result["errors"]


def _lab_address(value: str) -> str:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an IP address") from None
    if addr not in LAB_NETWORK:
        raise argparse.ArgumentTypeError(f"{value} is outside the lab LAN {LAB_NETWORK}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.sipclient",
        description="Register two pjsua2 accounts to a lab node and call between them; "
        "prints one JSON result. With --phone: one account that stays registered and "
        "answers calls until stdin closes; prints one JSON line per event.")
    p.add_argument("--registrar", type=_lab_address, required=True,
                   help="the node's address (the PBX engine: registrar and proxy)")
    p.add_argument("--port", type=int, default=5060, help="registrar port (default 5060)")
    p.add_argument("--bind", type=_lab_address, default=CLIENT_ADDRESS,
                   help=f"local address for SIP (default {CLIENT_ADDRESS})")
    p.add_argument("--local-port", type=int, default=0,
                   help="local SIP port (default 0: any free port)")
    p.add_argument("--caller", default="1001")
    p.add_argument("--callee", default="1002")
    p.add_argument("--dial", help="the user the caller calls (default: the callee)")
    p.add_argument("--remote-callee", action="store_true",
                   help="the dialled user is a phone of another process (--phone): only the "
                   "caller registers, and the call is judged on its side")
    p.add_argument("--phone", metavar="USER",
                   help="stay registered as USER and answer every call until stdin closes "
                   "(or --lifetime ends), reporting each event as a JSON line")
    p.add_argument("--lifetime", type=float, default=300.0,
                   help="with --phone: the longest it stays (s, default 300)")
    p.add_argument("--expect-status", type=int, default=200,
                   help="the final status the call should get (default 200: answered)")
    p.add_argument("--hold-ms", type=int, default=300, help="call duration before the hang-up")
    p.add_argument("--expires", type=int, default=60, help="REGISTER expiry in seconds")
    p.add_argument("--timeout", type=float, default=5.0, help="bound of every single wait (s)")
    p.add_argument("--settle-ms", type=int, default=50,
                   help="quiet time before each call into pjsua2 (see quiet())")
    p.add_argument("--stall", type=float, default=3.0,
                   help="kill the process when one call into pjsua2 blocks this long (s)")
    p.add_argument("--pjsip-log", help="write pjsip's log (level 5, SIP messages) to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.dial = args.dial or args.callee
    # a watchdog thread outside the GIL: even a pjsip deadlock cannot keep the process alive
    Watchdog(args.stall).arm()
    # pjsip writes its start-up log lines to fd 1 before any log level applies: while it
    # lives, fd 1 is stderr, so stdout carries the JSON result only
    sys.stdout.flush()
    stdout = os.dup(1)
    os.dup2(2, 1)

    def emit(event: dict[str, Any]) -> None:  # a phone's events, one line each, at once
        os.write(stdout, (json.dumps(event) + "\n").encode())

    try:
        result = _phone(args, emit) if args.phone else _client(args)
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
        os.close(stdout)
    faulthandler.cancel_dump_traceback_later()
    if args.phone:
        print(json.dumps({"event": "report", **result}), flush=True)
    else:
        print(json.dumps(result, indent=2), flush=True)
    return EXIT_OK if result["ok"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
