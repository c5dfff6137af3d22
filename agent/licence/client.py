"""The HTTP client of the vendor's licence server (the node side of its API).

Every call has a timeout; every failure is a typed error whose message an operator can
act on: ``ServerUnreachable`` (no answer), ``ServerRefused`` (the server said no, with
its own sentence and stable code), ``BadResponse`` (an answer that is not the API's).
Verification codes are sent, never logged.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from agent.licence.errors import (
    BadResponse,
    LicenceServerError,
    ServerRefused,
    ServerRejectedInput,
    ServerUnreachable,
    refusal,
)

__all__ = ["BadResponse", "LicenceServerClient", "LicenceServerError", "ServerRefused",
           "ServerRejectedInput", "ServerUnreachable"]

TIMEOUT_S = 15.0


class LicenceServerClient:
    def __init__(self, base_url: str, timeout: float = TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        try:
            async with asyncio.timeout(self.timeout), aiohttp.ClientSession() as session, \
                    session.post(url, json=body) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            raise ServerUnreachable(
                f"the licence server at {self.base_url} did not answer within "
                f"{self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise ServerUnreachable(
                f"cannot reach the licence server at {self.base_url}: {_reason(exc)}") from None
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            raise BadResponse(
                f"the licence server at {self.base_url} sent an answer that is not JSON "
                f"(HTTP {status})")
        if status >= 400:
            error = data.get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str) and \
                    isinstance(error.get("code"), str) and error["message"]:
                raise refusal(f"the licence server refused: {error['message']}",
                              error["code"])
            raise BadResponse(f"the licence server at {self.base_url} answered HTTP {status} "
                              "without an error message")
        return data

    @staticmethod
    def _field(data: dict[str, Any], name: str, kind: type) -> Any:
        value = data.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BadResponse(f"the licence server's answer has no valid '{name}'")
        return value

    async def activate(self, serial: str, email: str, fingerprint: str) -> dict[str, Any]:
        """Ask for a verification code to be emailed to the order's address."""
        data = await self._post("/v1/activations", {
            "serial": serial, "email": email, "fingerprint": fingerprint})
        self._field(data, "expires_in", int)
        return data

    async def verify(self, serial: str, fingerprint: str, code: str) -> str:
        """Send the emailed code; the signed licence file text."""
        data = await self._post("/v1/activations/verify", {
            "serial": serial, "fingerprint": fingerprint, "code": code})
        text: str = self._field(data, "licence", str)
        return text

    async def check(self, serial: str, fingerprint: str) -> tuple[int, str]:
        """The newest licence version for this node, and its signed text."""
        data = await self._post("/v1/check", {"serial": serial, "fingerprint": fingerprint})
        return self._field(data, "version", int), self._field(data, "licence", str)

    async def release(self, serial: str, fingerprint: str) -> dict[str, Any]:
        """Free the serial for another node; the server emails the notice."""
        return await self._post("/v1/release", {"serial": serial, "fingerprint": fingerprint})


def _reason(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or str(exc.os_error)
    return str(exc) or type(exc).__name__
