"""
The OpenSSL contexts manualb makes for its certificates: with the types
the installed pyOpenSSL takes (L{withOpenSSLObjects}), and resuming TLS
sessions, so that a returning client skips the certificate and key
exchange of a full handshake.

Sessions resume in two ways, as nginx offers them:

  - the session cache (C{ssl_session_cache}): the server keeps each
    session, found again by its id (TLS 1.2), or by a ticket that only
    names it (TLS 1.3 with tickets off);
  - session tickets (C{ssl_session_tickets}): the server keeps nothing; the
    client keeps the session, encrypted under the server's ticket key
    (TLS 1.2 tickets, TLS 1.3 PSK tickets).

OpenSSL keeps the cache and the ticket keys in the context a connection
starts with (its C{session_ctx}), never in one the server name callback
switches to: so every connection of a listener starts on one context, the
default certificate's (L{manualb.termination.SNIContextFactory}), and all
contexts share one session id context, L{SESSION_ID_CONTEXT}, so that a
session made under any certificate is found again.

Ticket keys rotate: OpenSSL makes random ones with each context, and
neither pyOpenSSL nor cryptography gives a way to set or read them (no
C{SSL_CTX_set_tlsext_ticket_key_cb}, no C{SSL_CTX_ctrl}), so a rotation
(L{TicketRotation}) makes a new starting context.  The old keys are then
gone: a client whose ticket they made does one full handshake, and the
cache is emptied too.  For the same reason the sessions are those of one
process: workers and instances do not share them.
"""

from __future__ import annotations

from cryptography import x509
from OpenSSL import SSL
from OpenSSL.crypto import X509, PKey

from manualb.config import TLSConfig, keys
from manualb.syntax import Section, formatDuration

__all__ = [
    "SESSION_ID_CONTEXT",
    "configureSessions",
    "parseSessionCache",
    "parseSessionKeys",
    "TicketRotation",
    "withOpenSSLObjects",
]

#: The session id context of every context manualb makes: sessions are
#: resumed only by a context with the same one, and all the certificates
#: of a listener are one server.
SESSION_ID_CONTEXT = b"manualb"

#: How many sessions OpenSSL's built-in cache holds
#: (C{SSL_SESSION_CACHE_MAX_SIZE_DEFAULT}); the size cannot be set from
#: Python (C{SSL_CTX_sess_set_cache_size} is a C{SSL_CTX_ctrl} macro).
CACHE_SESSIONS = 20480


def configureSessions(context: SSL.Context, cache: bool, timeout: float) -> None:
    """
    Set up the session cache of a server context: on (server side) or off,
    sessions valid for C{timeout} seconds (the lifetime of tickets too),
    and the shared L{SESSION_ID_CONTEXT}.  Tickets are set when the context
    is made (Twisted's C{CertificateOptions(enableSessionTickets=...)}),
    since pyOpenSSL can set C{OP_NO_TICKET} but not clear it.
    """
    context.set_session_id(SESSION_ID_CONTEXT)
    context.set_session_cache_mode(SSL.SESS_CACHE_SERVER if cache else SSL.SESS_CACHE_OFF)
    context.set_timeout(max(1, int(timeout)))


def parseSessionCache(section: Section) -> bool | None:
    """
    Read C{ssl_session_cache}: C{on} or C{off}, or L{None} when absent.
    nginx's C{builtin:SIZE} and C{shared:NAME:SIZE} are refused with the
    reason.
    """
    text = section.single("ssl_session_cache")
    if text is None:
        return None
    value = text.lower()
    if value in ("on", "off"):
        return value == "on"
    if value.startswith(("builtin", "shared")):
        raise section.error(
            "ssl_session_cache",
            f"expected on or off, got {text!r}: the cache is OpenSSL's built-in "
            f"one of each process, holding {CACHE_SESSIONS} sessions (its size "
            f"cannot be set, nor can it be shared)",
        )
    raise section.error("ssl_session_cache", f"expected on or off, got {text!r}")


class TicketRotation:
    """
    When the ticket keys are due for a change: every C{interval} seconds of
    C{clock}, checked when a connection starts (so no timer runs, and an
    idle listener rotates at its next connection).

    @ivar interval: Seconds between two rotations.
    """

    def __init__(self, clock, interval: float) -> None:
        """
        @param clock: An L{IReactorTime}: the reactor.
        """
        self.clock = clock
        self.interval = interval
        self._due = clock.seconds() + interval

    def due(self) -> bool:
        """
        Whether a rotation is due now; if so, the next one is one interval
        from now.
        """
        now = self.clock.seconds()
        if now < self._due:
            return False
        self._due = now + self.interval
        return True

    def __repr__(self) -> str:
        return f"<TicketRotation every {formatDuration(self.interval)}>"


def parseSessionKeys(section: Section) -> dict[str, object]:
    """
    Read the session keys of a C{[tls]} section (those absent keep their
    defaults): the fields of L{TLSConfig} they set, by name.
    """
    spec = keys(TLSConfig)
    values: dict[str, object] = {}
    cache = parseSessionCache(section)
    if cache is not None:
        values["ssl_session_cache"] = cache
    for name in (
        "ssl_session_timeout",
        "ssl_session_tickets",
        "ssl_session_ticket_key_rotation",
    ):
        values[name] = section.read(name, spec[name])
    return values


class _AsCryptography:
    """
    Certificates and keys as L{cryptography} objects, which pyOpenSSL takes
    since 24.3 (and warns about its own older types).
    """

    @staticmethod
    def certificate(certificate: x509.Certificate):
        return certificate

    @staticmethod
    def key(key):
        return key


class _AsPyOpenSSL:
    """
    Certificates and keys as pyOpenSSL's own types, for older pyOpenSSL.
    """

    @staticmethod
    def certificate(certificate: x509.Certificate):
        return X509.from_cryptography(certificate)

    @staticmethod
    def key(key):
        return PKey.from_cryptography_key(key)


def withOpenSSLObjects(makeOptions) -> SSL.Context:
    """
    The context of C{makeOptions(convert)}, with C{convert} the types the
    installed pyOpenSSL takes.
    """
    try:
        return makeOptions(_AsCryptography).getContext()
    except TypeError:
        return makeOptions(_AsPyOpenSSL).getContext()
