"""
The ACME challenges pending, shared between the processes that answer for
one address: the ACME server validates a challenge on whichever process
the kernel (with C{workers}) or a layer-4 balancer (with several
instances) gives its connection to, which may not be the one that ordered.

The process that orders (L{manualb.autotls.AutoTLS}, holding the name's
lock) shares each challenge before it asks the server to validate it, and
removes it when the order ends:

  - in C{storage}, for the processes of one machine (the workers, or
    instances sharing the directory): a file of its own in
    C{storage/challenges}, C{http-01.TOKEN} or C{tls-alpn-01.NAME},
    written atomically and readable by the owner only, that holds the key
    authorization and when it expires;
  - in the shared state (C{[manualb] state}), for instances on other
    machines: under the topic C{acme-challenges}, keys C{http-01:TOKEN}
    and C{tls-alpn-01:NAME}; every instance keeps those it hears of, and
    reads the stored ones when it (re)connects, or when asked for a token
    it does not know (at most once every L{READ_INTERVAL} seconds).

Each carries an expiry, L{CHALLENGE_TTL} seconds after it was made, past
which it is no longer answered: a process that dies in the middle of an
order leaves nothing that is served for long.

A process asked for a challenge it does not have looks in both: for
HTTP-01, only for a token of the base64url alphabet and at most
L{MAX_TOKEN} characters (anything else never reaches the file system), and
it reads at most L{MAX_FILE} bytes of a file that must hold a key
authorization; for TLS-ALPN-01, only for the names of C{[acme]}, whose
RFC 8737 certificates it makes once (the last L{CONTEXTS_KEPT} are kept).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable

from OpenSSL import SSL
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from manualb.acmeclient import alpnChallengeCertificate, writePrivate
from manualb.view import normalizeHost

__all__ = [
    "ACME_TLS_ALPN",
    "CHALLENGE_TTL",
    "MAX_TOKEN",
    "PendingChallenges",
    "TOPIC",
    "challengeContext",
    "validToken",
]

log = Logger()

#: The ALPN protocol of TLS-ALPN-01 (RFC 8737).
ACME_TLS_ALPN = b"acme-tls/1"
#: The topic of the shared state the challenges are published under.
TOPIC = "acme-challenges"
#: How long, in seconds, a shared challenge is answered at most.
CHALLENGE_TTL = 600.0
#: The longest token looked up (RFC 8555 tokens are 22 characters or more;
#: Let's Encrypt's are 43).
MAX_TOKEN = 128
#: The most bytes read of a challenge's file.
MAX_FILE = 512
#: How many TLS-ALPN-01 contexts made from shared challenges are kept.
CONTEXTS_KEPT = 16
#: The shortest time, in seconds, between two reads of the shared state
#: for a token not known.
READ_INTERVAL = 1.0
#: The directory of C{storage} the challenge files are in.
DIRECTORY = "challenges"

_TOKEN = re.compile(rb"[A-Za-z0-9_-]{1,%d}\Z" % (MAX_TOKEN,))
# A key authorization: the token, a dot, the account key's thumbprint.
_AUTHORIZATION = re.compile(rb"[A-Za-z0-9_-]{1,%d}\.[A-Za-z0-9_-]{1,128}\Z" % (MAX_TOKEN,))


def validToken(token: bytes) -> bool:
    """
    Whether C{token} can be an ACME token: base64url, at most L{MAX_TOKEN}
    characters.  No other is ever looked up.
    """
    return _TOKEN.match(token) is not None


def challengeContext(
    name: str, keyAuthorization: str, fallback: Callable[[], SSL.Context | None]
) -> SSL.Context:
    """
    The context that answers the TLS-ALPN-01 challenge of C{name}: its
    certificate is L{alpnChallengeCertificate}'s, and it selects
    C{acme-tls/1}.  A client that does not offer C{acme-tls/1} is switched
    to C{fallback()}, the context the name has otherwise.
    """
    leaf, key = alpnChallengeCertificate(name, keyAuthorization)
    context = SSL.Context(SSL.TLS_METHOD)
    context.use_certificate(leaf)
    context.use_privatekey(key)

    def select(connection, offered):
        if ACME_TLS_ALPN in offered:
            return ACME_TLS_ALPN
        # Not the ACME server: the certificate the name has otherwise.
        other = fallback()
        if other is not None:
            connection.set_context(other)
        if b"http/1.1" in offered:
            return b"http/1.1"
        return SSL.NO_OVERLAPPING_PROTOCOLS

    context.set_alpn_select_callback(select)
    return context


def _decode(data: object, now: float) -> bytes | None:
    """
    The key authorization of a shared challenge, C{EXPIRES KEYAUTHORIZATION}
    (bytes or text), or L{None} when it expired or is not one.
    """
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    if not isinstance(data, bytes) or len(data) > MAX_FILE:
        return None
    expires, _, authorization = data.strip().partition(b" ")
    try:
        if float(expires) <= now:
            return None
    except ValueError:
        return None
    if _AUTHORIZATION.match(authorization) is None:
        return None
    return authorization


class PendingChallenges:
    """
    The ACME challenges a balancer answers: those it made itself, and
    those other processes share through C{storage} or the shared state.
    The C{sni:} listeners' L{manualb.termination.SNIContextFactory} asks it
    (its C{challenges}) for the TLS-ALPN-01 context of each name a client
    sends; L{manualb.autotls.ChallengeStage} for HTTP-01 tokens.

    @ivar contexts: The TLS-ALPN-01 contexts of this process's own orders,
        by name (as L{normalizeHost} gives).
    @ivar shared: The challenges heard of from the shared state: the value
        and version by key.
    """

    def __init__(
        self,
        clock,
        storage: str,
        hosts: Iterable[str],
        fallback: Callable[[bytes], SSL.Context | None],
        store=None,
    ):
        """
        @param clock: Says the time, which the expiries are in.
        @param storage: The C{[acme] storage} directory.
        @param hosts: The names of C{[acme]}.
        @param fallback: The context a name has when it is not validated.
        @param store: The L{manualb.interfaces.IStateStore} of the shared
            state, or L{None}.
        """
        self.clock = clock
        self.fallback = fallback
        self.store = store
        self.contexts: dict[bytes, SSL.Context] = {}
        self.shared: dict[str, tuple[int, object]] = {}
        self._made: OrderedDict[tuple[bytes, bytes], SSL.Context] = OrderedDict()
        self._lastRead: float | None = None
        self.configure(storage, hosts)

    def configure(self, storage: str, hosts: Iterable[str]) -> None:
        """
        Take the C{storage} and names of a reload.
        """
        self.directory = os.path.join(storage, DIRECTORY)
        # What TLS-ALPN-01 looks up for each name, made once: it is asked
        # on every handshake that names one.
        self.hosts = {
            host: (
                host.decode("ascii"),
                "tls-alpn-01:" + host.decode("ascii"),
                os.path.join(self.directory, "tls-alpn-01." + host.decode("ascii")),
            )
            for host in (normalizeHost(name) for name in hosts)
            if host is not None
        }

    # The side of the process that orders.

    def share(self, kind: str, key: str, keyAuthorization: str) -> Deferred[None]:
        """
        Share a challenge: C{kind} C{http-01} with its token as C{key}, or
        C{tls-alpn-01} with the name.  Written in the storage now; the
        L{Deferred} fires once it is published in the shared state too (or
        could not be: it is logged, and the storage still serves it).
        """
        expires = self.clock.seconds() + CHALLENGE_TTL
        value = "%.0f %s" % (expires, keyAuthorization)
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._prune()
        writePrivate(self._fileOf(kind, key), value.encode("ascii"))
        if self.store is None:
            return succeed(None)
        d = self.store.publish(TOPIC, "%s:%s" % (kind, key), {"value": value})

        def failed(reason):
            log.warn(
                "ACME: the {kind} challenge could not be published in the shared "
                "state ({reason}); only the processes sharing the storage answer it",
                kind=kind, reason=reason.getErrorMessage(),
            )

        return d.addCallbacks(lambda version: None, failed)

    def withdraw(self, kind: str, key: str) -> None:
        """
        Remove a challenge L{share}d, once its order ended.
        """
        try:
            os.unlink(self._fileOf(kind, key))
        except OSError:
            pass
        if self.store is not None:
            d = self.store.publish(TOPIC, "%s:%s" % (kind, key), None)
            # Unreachable: it expires by itself.
            d.addErrback(lambda reason: None)

    def _fileOf(self, kind: str, key: str) -> str:
        return os.path.join(self.directory, "%s.%s" % (kind, key))

    def _prune(self) -> None:
        """
        Remove the files of HTTP-01 challenges that expired: their
        processes ended in the middle of an order.
        """
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            if name.startswith("http-01.") and validToken(name[8:].encode("ascii", "replace")):
                if self._readFile(os.path.join(self.directory, name)) is None:
                    try:
                        os.unlink(os.path.join(self.directory, name))
                    except OSError:
                        pass

    # The side of every process.

    def keyAuthorization(self, token: bytes) -> bytes | None:
        """
        The key authorization of the HTTP-01 C{token} that another process
        shares, or L{None}.
        """
        if not validToken(token):
            return None
        text = token.decode("ascii")
        found = self._fromShared("http-01:" + text)
        if found is None:
            found = self._readFile(os.path.join(self.directory, "http-01." + text))
        if found is None:
            self._readAgain()
        return found

    def get(self, host: bytes) -> SSL.Context | None:
        """
        The context that answers the TLS-ALPN-01 challenge of C{host}, or
        L{None}: what L{manualb.termination.SNIContextFactory} asks for
        each name a client sends.
        """
        context = self.contexts.get(host)
        if context is not None:
            return context
        known = self.hosts.get(host)
        if known is None:
            return None
        name, key, path = known
        authorization = self._fromShared(key) if self.shared else None
        if authorization is None:
            authorization = self._readFile(path)
            if authorization is None:
                return None
        made = self._made.get((host, authorization))
        if made is None:
            made = challengeContext(
                name, authorization.decode("ascii"), lambda: self.fallback(host)
            )
            self._made[host, authorization] = made
            while len(self._made) > CONTEXTS_KEPT:
                self._made.popitem(last=False)
        else:
            self._made.move_to_end((host, authorization))
        return made

    def _readFile(self, path: str) -> bytes | None:
        """
        The key authorization in the file C{path} of the challenges'
        directory, or L{None}.  Its name is made of a token that
        L{validToken} accepted, or a name of C{[acme]}.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            data = os.read(fd, MAX_FILE + 1)
        except OSError:
            return None
        finally:
            os.close(fd)
        return _decode(data, self.clock.seconds())

    def _fromShared(self, key: str) -> bytes | None:
        found = self.shared.get(key)
        if found is None or not isinstance(found[1], dict):
            return None
        return _decode(found[1].get("value"), self.clock.seconds())

    def _readAgain(self) -> None:
        """
        Read the shared challenges again, for a token not known, unless
        that was done less than L{READ_INTERVAL} seconds ago.
        """
        if self.store is None or not self.store.connected:
            return
        now = self.clock.seconds()
        if self._lastRead is not None and now - self._lastRead < READ_INTERVAL:
            return
        self._lastRead = now
        self.read()

    # The shared state's news.

    def read(self) -> None:
        """
        Read the challenges the shared state holds, as on (re)connecting.
        """
        d = self.store.read(TOPIC)
        d.addCallback(self._stored)
        d.addErrback(lambda reason: None)

    def _stored(self, stored: dict) -> None:
        now = self.clock.seconds()
        for key, (version, value) in stored.items():
            if isinstance(value, dict) and _decode(value.get("value"), now) is not None:
                self.changed(key, value, version)

    def changed(self, key: str, value: object, version: int) -> None:
        """
        Another instance published (or removed, with L{None}) a challenge.
        """
        known = self.shared.get(key)
        if known is not None and known[0] >= version:
            return
        if value is None:
            self.shared.pop(key, None)
        else:
            self.shared[key] = (version, value)
        now = self.clock.seconds()
        for each, (version, value) in list(self.shared.items()):
            if not isinstance(value, dict) or _decode(value.get("value"), now) is None:
                del self.shared[each]
