"""The licensing tests' view of the lab's mail sink (``lab.mailsink``): the messages it
captured and the last verification code among them."""

from lab.mailsink import CODE_RE, last_code, messages

__all__ = ["CODE_RE", "last_code", "messages"]
