"""Licensing on the node: the Security Update client (requirements §2).

``document`` is the signed licence format shared with the vendor's licence server
(``license_server``); ``fingerprint`` says which machine a licence is bound to; ``client``
talks to the server; ``state`` keeps what the node holds; ``manager`` is the state
machine and the ``LicencePort`` the other subsystems read.
"""
