"""Sending the server's emails (verification codes, removal notices) over SMTP.

``smtplib`` in a worker thread, with a timeout; STARTTLS when the relay offers it. The
message body holds the code; it is never logged.
"""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage

SMTP_TIMEOUT_S = 15.0


class MailError(Exception):
    """The email could not be handed to the SMTP relay."""


class Mailer:
    def __init__(self, host: str, port: int, sender: str) -> None:
        self.host, self.port, self.sender = host, port, sender

    def _send(self, message: EmailMessage) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=SMTP_TIMEOUT_S) as smtp:
                smtp.ehlo()
                if smtp.has_extn("starttls"):
                    smtp.starttls()
                    smtp.ehlo()
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise MailError(f"SMTP relay {self.host}:{self.port}: {exc}") from None

    async def send(self, to: str, subject: str, body: str) -> None:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = self.sender, to, subject
        message.set_content(body)
        await asyncio.to_thread(self._send, message)
