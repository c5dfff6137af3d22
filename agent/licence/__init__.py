"""Licensing on the node: the Security Update client (requirements §2).

``document`` is the signed licence format shared with the vendor's licence server
(``license_server``); ``fingerprint`` says which machine a licence is bound to; ``client``
talks to the server; ``state`` keeps what the node holds and evaluates it; ``manager`` is
the one licensing service and the ``LicencePort`` the other subsystems read, its actions
in ``activation``, ``updates`` and ``holders``; ``changes`` says what a new licence changes.
"""
