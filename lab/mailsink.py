"""A captured SMTP server (aiosmtpd) for the lab's licence server and the licensing tests:
every message is appended to a JSON-lines file, so the lab (``lab.vendor``) or a test reads
the verification code the licence server emailed. Nothing is relayed anywhere.

    python -m lab.mailsink HOST PORT OUTFILE
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

CODE_RE = re.compile(r"verification code is (\d{6})")


class Sink:
    def __init__(self, out: Path) -> None:
        self.out = out

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=default)
        body = message.get_body(("plain",))
        record = {"to": list(envelope.rcpt_tos), "subject": str(message["Subject"]),
                  "body": body.get_content() if body is not None else ""}
        with self.out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        return "250 OK"


def messages(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def last_code(path: Path) -> str:
    for message in reversed(messages(path)):
        found = CODE_RE.search(message["body"])
        if found:
            return found.group(1)
    raise AssertionError(f"no verification code was emailed ({path})")


async def _main(host: str, port: int, out: Path) -> None:
    controller = Controller(Sink(out), hostname=host, port=port)
    controller.start()
    print(f"mailsink on {host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        controller.stop()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])))
