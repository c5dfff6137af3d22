"""A small synchronous client of the agent's HTTP/JSON API over its unix socket."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from agent.errors import AgentUnreachable, VoxnodeError, error_from_dict


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    def __init__(self, socket_path: str, timeout: float = 300.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        conn = _UnixConnection(self.socket_path, self.timeout)
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            raise AgentUnreachable(
                f"cannot reach the agent at {self.socket_path}: {exc.strerror}"
            ) from None
        except TimeoutError:
            raise AgentUnreachable(
                f"the agent at {self.socket_path} did not answer within {self.timeout:.0f} s"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise AgentUnreachable(f"lost the agent at {self.socket_path}: {exc}") from None
        finally:
            conn.close()
        try:
            data = json.loads(raw)
        except ValueError:
            raise VoxnodeError(
                f"the agent sent a non-JSON answer (HTTP {response.status})"
            ) from None
        if response.status >= 400:
            error = data.get("error") if isinstance(data, dict) else None
            if isinstance(error, dict):
                raise error_from_dict(error)
            raise VoxnodeError(f"the agent answered HTTP {response.status} without details")
        return data

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)
