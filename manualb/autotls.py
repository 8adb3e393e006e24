"""
Automatic HTTPS: certificates obtained and renewed from an ACME (RFC 8555)
server, such as Let's Encrypt, for the names the C{[acme]} section lists.

The ACME protocol is certbot's own library, the C{acme} package (with
C{josepy} for the signed messages); its calls block, so they run in a
thread pool of this module's own, and the reactor only waits for their
results.  The challenges are answered by manualb's listeners:

  - HTTP-01 by L{ChallengeStage}, the first stage of the chain of every
    site (the redirect to https of a plain listener included), which answers
    C{GET /.well-known/acme-challenge/TOKEN};
  - TLS-ALPN-01 (RFC 8737) on the C{sni:} listeners, whose
    L{manualb.termination.SNIContextFactory} gives a client that names the
    host the context of L{alpnChallengeCertificate} while the challenge is
    pending: it selects the ALPN protocol C{acme-tls/1}, and any other
    client goes on with the context it would have had.

The challenges pending are shared with the other processes that listen on
the same address (the workers, other instances): through C{storage} and
the shared state, see L{manualb.acmechallenges}.  Any of them answers the
ACME server's validation, whichever the connection lands on.

The rule that decides which can work: TLS-ALPN-01 when an C{sni:} line
listens on C{tls_port} (443), HTTP-01 when a plain line (not TLS) listens on
C{http_port} (80); the ACME server connects to those ports.  A configuration
where neither can work is refused.

Each name has its own certificate and key, in C{storage} (C{NAME.crt},
C{NAME.key}, next to the account key C{account.key}), written atomically
and readable by the owner only.  Until a certificate is there, the name is
served a self-signed placeholder; the new one is swapped in live
(L{manualb.termination.SNIContextFactory.update}: new connections get it,
open ones keep theirs).  Renewal comes C{renew_before} ahead of expiry, with
some jitter; a failure is logged once with its reason, shown in the admin
API's status, and retried with back-off (or, for a rate limit, when the
server's C{Retry-After} says).  Instances (and workers) take a lock before
they order, so that one obtains and the others load it: a file lock in
C{storage} for those that share it (which look for changed files every
L{STORAGE_POLL} seconds), and with a shared state (C{[manualb] state}) a
lock in it too, with the certificate and its key published there for every
instance, whether or not they share C{storage}.

The stateless pieces (certificates, the blocking ACME client) are in
L{manualb.acmeclient}.
"""

from __future__ import annotations

import errno
import fcntl
import importlib.util
import os
import random
import uuid
from collections.abc import Callable, Sequence

import attrs
from cryptography import x509
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from manualb.acmechallenges import TOPIC, PendingChallenges, challengeContext, validToken
from manualb.acmeclient import (
    ACMEClient,
    Stored,
    alpnChallengeCertificate,
    fromPEM,
    keyPEM,
    newKey,
    newer,
    pemOf,
    placeholderCertificate,
    readStored,
    reasonOf,
    retryAfterOf,
    retryAfterSeconds,
    writePrivate,
)
from manualb.config import AcmeConfig, ListenerConfig, TLSConfig, keys
from manualb.interfaces import IStage, IStateListener
from manualb.syntax import Section, hostName
from manualb.termination import isTLS, splitDescription
from manualb.view import Answer, Passage, normalizeHost

__all__ = [
    "AutoTLS",
    "ChallengeStage",
    "StoreUnreachable",
    "alpnChallengeCertificate",
    "parseAcme",
    "placeholderCertificate",
    "retryAfterSeconds",
]

log = Logger()

_CHALLENGE_PATH = b"/.well-known/acme-challenge/"

#: Back-off after a failure: the first delay, doubled up to the last.
FIRST_RETRY = 60.0
LAST_RETRY = 86400.0
#: How long before trying again when another instance holds the lock.
LOCK_WAIT = 10.0
#: How long the lock in the shared state lasts unless renewed (its holder
#: renews it every third of this while it orders).
LOCK_TTL = 60.0
#: How often, in seconds, the storage is looked at for certificates that
#: another process sharing it obtained.
STORAGE_POLL = 30.0
#: The longest wait a C{Retry-After} of the ACME server is followed for.
MAX_RETRY_AFTER = 7 * 86400.0


# The configuration.


def _port(description: str) -> int | None:
    """
    The port of a TCP endpoint string (C{tcp:80}, C{sni:443:...}), or
    L{None} for another kind (a UNIX socket) or a port that is not a number.
    """
    args, kwargs = splitDescription(description)
    kind = args[0].strip().lower() if args else ""
    if kind not in ("tcp", "tcp6", "sni", "ssl"):
        return None
    port = kwargs.get("port", args[1] if len(args) > 1 else "")
    return int(port) if port.isdigit() else None


def parseAcme(
    section: Section | None,
    error: Callable[[str | None, str | None, str], Exception],
    directory: str,
    tls: TLSConfig | None,
    listeners: Sequence[ListenerConfig],
) -> tuple[AcmeConfig, TLSConfig]:
    """
    Read the C{[acme]} section and check it against the listeners.

    @param section: The section, or L{None} when there is none (which is
        wrong when C{[tls]} has C{NAME acme} lines).
    @param error: Makes the error about a section and key.
    @param directory: Where a relative C{storage} or C{directory_ca} is.
    @param tls: The C{[tls]} section, if any.
    @return: The C{[acme]} section, and C{[tls]} with every ACME name (made
        when the names come from C{hosts} alone).
    """
    if section is None:
        raise error(
            "tls", "certificates",
            "NAME acme lines need an [acme] section (with storage and accept_terms = yes)",
        )
    if importlib.util.find_spec("acme") is None:
        raise section.error(
            None, "needs the ACME library: pip install 'manualb[acme]' (the acme package)"
        )
    values = {
        name: section.read(name, spec)
        for name, spec in keys(AcmeConfig).items()
        if spec.kind is not None
    }
    if (section.single("accept_terms") or "").lower() not in ("yes", "on", "true"):
        raise section.error(
            "accept_terms",
            "the ACME server's terms of service must be accepted: accept_terms = yes",
        )
    storage = section.single("storage", required=True)
    storage = os.path.abspath(os.path.join(directory, os.path.expanduser(storage)))
    if os.path.exists(storage) and not os.path.isdir(storage):
        raise section.error("storage", f"{storage} is not a directory")
    hosts = list(tls.acme if tls is not None else ())
    for line in section.lines("hosts") or ():
        for word in line.split():
            try:
                name = hostName(word, wildcard=False)
            except ValueError as e:
                raise section.error("hosts", str(e)) from None
            if name not in hosts:
                hosts.append(name)
    if not hosts:
        raise section.error(
            "hosts", "no names: list them here, or as NAME acme lines of [tls] certificates"
        )
    directoryURL = values["directory"]
    if not directoryURL.startswith(("https://", "http://")):
        raise section.error("directory", f"expected an https:// URL, got {directoryURL!r}")
    ca = section.file("directory_ca", directory)
    challenges = []
    lines = [line for listener in listeners for line in listener.listen]
    if any(_port(line) == values["tls_port"] for line in lines if line.lower().startswith("sni:")):
        challenges.append("tls-alpn-01")
    if any(_port(line) == values["http_port"] for line in lines if not isTLS(line)):
        challenges.append("http-01")
    if not challenges:
        raise section.error(
            None,
            f"no listener can answer the ACME server's challenges: it needs an sni: "
            f"line on port {values['tls_port']} (tls_port, for TLS-ALPN-01) or a plain "
            f"line on port {values['http_port']} (http_port, for HTTP-01)",
        )
    acme = AcmeConfig(
        directory=directoryURL,
        email=values["email"],
        accept_terms=True,
        storage=storage,
        renew_before=values["renew_before"],
        hosts=tuple(hosts),
        http_port=values["http_port"],
        tls_port=values["tls_port"],
        directory_ca=ca,
        challenges=tuple(challenges),
    )
    tls = TLSConfig() if tls is None else tls
    return acme, attrs.evolve(tls, acme=tuple(hosts))


# HTTP-01.


@implementer(IStage)
class ChallengeStage:
    """
    Answers the HTTP-01 challenges pending (RFC 8555, section 8.3): C{GET
    /.well-known/acme-challenge/TOKEN} gets the key authorization of
    C{TOKEN}; every other request goes on down the chain.

    @ivar tokens: The key authorization of each token this process's own
        orders wait on.
    @ivar lookup: Gives the key authorization of a token another process
        shares (see L{PendingChallenges.keyAuthorization}), or L{None}.
    """

    def __init__(self, lookup: Callable[[bytes], bytes | None] | None = None) -> None:
        self.tokens: dict[bytes, bytes] = {}
        self.lookup = lookup

    def handle(self, passage: Passage) -> Answer | None:
        path = passage.view.path
        if not path.startswith(_CHALLENGE_PATH):
            return None
        token = path[len(_CHALLENGE_PATH) :]
        answer = self.tokens.get(token)
        if answer is None:
            if self.lookup is None or not validToken(token):
                return None
            answer = self.lookup(token)
            if answer is None:
                return None
        return Answer(200, b"OK", headers=((b"Content-Type", b"text/plain"),), page=answer)


@attrs.define
class HostStatus:
    """
    What the admin API shows of one name.

    @ivar state: C{placeholder} (no certificate yet), C{valid}, or
        C{obtaining}.
    """

    state: str = "placeholder"
    notAfter: float | None = None
    nextCheck: float | None = None
    error: str | None = None
    failures: int = 0

    def asDict(self) -> dict:
        return {
            "state": self.state,
            "not_after": self.notAfter,
            "next_check": self.nextCheck,
            "error": self.error,
            "failures": self.failures,
        }


class _Busy:
    """
    What an attempt to renew gives when another instance holds the lock.
    """


class StoreUnreachable(Exception):
    """
    The shared state cannot be reached, to take the lock.
    """


@implementer(IStateListener)
class AutoTLS:
    """
    Obtains and renews the certificates of C{[acme]}, and gives them to the
    C{sni:} listeners.

    With a shared state (L{manualb.state.SharedState}), the instances take
    its lock of a name before they order its certificate, and the one that
    obtains it publishes it, with its key, under the topic C{acme}: every
    instance serves it (and keeps it in its own C{storage}), whether or not
    they share C{storage}.  Those that share C{storage} also take a file
    lock in it, and look every L{STORAGE_POLL} seconds whether a
    certificate there changed.

    @ivar config: The C{[acme]} section.
    @ivar stage: Answers the HTTP-01 challenges (see L{ChallengeStage}).
    @ivar challenges: The challenges pending, this process's and those
        shared by others (see L{manualb.acmechallenges}); the C{sni:}
        listeners ask it for TLS-ALPN-01.
    @ivar status: The L{HostStatus} of each name.
    @ivar shared: The shared state, or L{None}.
    """

    def __init__(
        self,
        config: AcmeConfig,
        reactor,
        rebuild: Callable[[], object],
        serving: Callable[[], object],
        shared=None,
    ):
        """
        @param rebuild: Makes the listeners' certificates again, with the
            names' current ones (through L{contexts}), and serves them.
        @param serving: The L{manualb.termination.SNIContextFactory} the
            C{sni:} listeners serve with, or L{None} when there is none.
        @param shared: The L{manualb.state.SharedState} of the balancer,
            or L{None}.
        """
        self.config = config
        self.reactor = reactor
        self.rebuild = rebuild
        self.serving = serving
        self.shared = shared
        self.challenges = PendingChallenges(
            reactor,
            config.storage,
            config.hosts,
            self._fallback,
            None if shared is None else shared.store,
        )
        self.stage = ChallengeStage(self.challenges.keyAuthorization)
        self.status = {name: HostStatus() for name in config.hosts}
        self._client = ACMEClient(config)
        self._served: dict[str, Stored] = {}
        self._placeholders: dict[str, Stored] = {}
        self._timers: dict[str, object] = {}
        self._working: dict[str, Deferred] = {}
        self._listeners: list[Callable[[str, str, str | None], None]] = []
        self._pool: ThreadPool | None = None
        self._running = False
        self._locks: dict[str, int] = {}
        self._held: dict[str, LoopingCall] = {}
        self._token = uuid.uuid4().hex
        self._waitingStore: set[str] = set()
        self._mtimes: dict[str, int | None] = {}
        self._poll: LoopingCall | None = None
        if shared is not None:
            shared.listeners.append(self)

    # What the listeners serve.

    def contexts(self, makeContext, config: AcmeConfig | None = None):
        """
        The C{(name, context)} of each name of C{config} (by default the
        current one), with its certificate: the one served, else the
        storage's, else a placeholder (see
        L{manualb.termination.contextFactoryFor}'s C{extra}).
        """
        config = self.config if config is None else config
        pairs = []
        for name in config.hosts:
            stored = self._served.get(name) or self._load(name, config.storage)
            if stored is None:
                stored = self._placeholders.get(name)
                if stored is None:
                    leaf, key = placeholderCertificate(name)
                    stored = self._placeholders[name] = Stored(leaf, (), key)
            pairs.append((name, makeContext(stored.leaf, list(stored.chain), stored.key)))
        return pairs

    def contextsOf(self, config: AcmeConfig | None):
        """
        What L{manualb.termination.contextFactoryFor} calls for the names
        of C{config}: the certificates a reload to it serves.
        """
        return lambda makeContext: self.contexts(makeContext, config)

    def _load(self, name: str, storage: str) -> Stored | None:
        stored = readStored(storage, name)
        if stored is not None:
            self._served[name] = stored
            status = self.status.get(name)
            if status is not None:
                status.state = "valid"
                status.notAfter = stored.notAfter
        return stored

    # Running.

    def start(self) -> None:
        """
        Start the thread pool and check every name now (or once the shared
        state is reached).
        """
        if self._running:
            return
        self._running = True
        os.makedirs(self.config.storage, mode=0o700, exist_ok=True)
        self._pool = ThreadPool(minthreads=0, maxthreads=2, name="manualb-acme")
        self._pool.start()
        self._sni()
        self._poll = LoopingCall(self._pollStorage)
        self._poll.clock = self.reactor
        self._poll.start(STORAGE_POLL, now=False)
        connected = self.shared is None or self.shared.store.connected
        for name in self.config.hosts:
            if not connected:
                self._waitingStore.add(name)
            self._schedule(name, 0 if connected else LOCK_WAIT)

    def stop(self) -> Deferred[None]:
        """
        Stop: no more checks; fires once the orders under way have ended
        and the thread pool has stopped.
        """
        self._running = False
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
        if self.shared is not None and self in self.shared.listeners:
            self.shared.listeners.remove(self)
        pool, self._pool = self._pool, None
        working = list(self._working.values())
        d = Deferred()
        remaining = [len(working)]

        def ended(ignored=None):
            remaining[0] -= 1
            if remaining[0] <= 0 and not d.called:
                if pool is not None:
                    pool.stop()
                d.callback(None)

        if not working:
            remaining[0] = 1
            ended()
        for each in working:
            each.addBoth(lambda result: ended())
        return d

    def reconfigure(self, config: AcmeConfig) -> None:
        """
        Take the C{[acme]} of a reload: new names are obtained, names gone
        are no longer renewed (an order under way for one ends unserved),
        and changed settings take effect from the next order; with changed
        settings every name is checked again now.
        """
        old, self.config = self.config, config
        if config == old:
            return
        self.challenges.configure(config.storage, config.hosts)
        self._sni()
        if attrs.evolve(old, hosts=config.hosts) != config:
            self._client = ACMEClient(config)
            if self._running:
                os.makedirs(config.storage, mode=0o700, exist_ok=True)
            again = list(config.hosts)
        else:
            again = [name for name in config.hosts if name not in old.hosts]
        for name in old.hosts:
            if name not in config.hosts:
                timer = self._timers.pop(name, None)
                if timer is not None and timer.active():
                    timer.cancel()
                self.status.pop(name, None)
                self._served.pop(name, None)
                self._placeholders.pop(name, None)
                self._waitingStore.discard(name)
        for name in config.hosts:
            if name not in self.status:
                status = self.status[name] = HostStatus()
                served = self._served.get(name)
                if served is not None:
                    status.state, status.notAfter = "valid", served.notAfter
        for name in again:
            self._schedule(name, 0)

    def whenChanged(self, listener: Callable[[str, str, str | None], None]) -> None:
        """
        Call C{listener(name, event, reason)} on every change: C{obtained}
        (a new certificate served), C{loaded} (found in the storage or the
        shared state), C{failed} (with the reason).
        """
        self._listeners.append(listener)

    def _tell(self, name: str, event: str, reason: str | None = None) -> None:
        for listener in list(self._listeners):
            listener(name, event, reason)

    def _schedule(self, name: str, delay: float) -> None:
        if not self._running or name not in self.status:
            return
        timer = self._timers.get(name)
        if timer is not None and timer.active():
            timer.cancel()
        self.status[name].nextCheck = self.reactor.seconds() + delay
        self._timers[name] = self.reactor.callLater(delay, self._check, name)

    def _inThread(self, f, *args) -> Deferred:
        return deferToThreadPool(self.reactor, self._pool, f, *args)

    def _due(self, stored: Stored | None) -> float:
        """
        Seconds until C{stored} is to be renewed (0 or less: now).
        """
        if stored is None:
            return 0
        return stored.notAfter - self.config.renew_before - self.reactor.seconds()

    def _loadNewer(self, name: str) -> None:
        """
        Serve the storage's certificate of C{name} if it is newer than the
        one served.
        """
        path = os.path.join(self.config.storage, name + ".crt")
        try:
            self._mtimes[name] = os.stat(path).st_mtime_ns
        except OSError:
            self._mtimes[name] = None
        stored = readStored(self.config.storage, name)
        if stored is not None and newer(stored, self._served.get(name)):
            self._serve(name, stored, "loaded")

    def _pollStorage(self) -> None:
        """
        Load the certificates whose file in the storage changed: another
        process sharing it obtained them.
        """
        for name in self.config.hosts:
            if name in self._working:
                continue
            try:
                mtime = os.stat(os.path.join(self.config.storage, name + ".crt")).st_mtime_ns
            except OSError:
                mtime = None
            if mtime != self._mtimes.get(name):
                self._loadNewer(name)

    def _check(self, name: str) -> None:
        """
        Load the storage's certificate of C{name} if it is newer than the one
        served; then renew it if it is due, or wait until it is.
        """
        self._timers.pop(name, None)
        if not self._running or name in self._working or name not in self.status:
            return
        self._loadNewer(name)
        due = self._due(self._served.get(name))
        if due > 0:
            # Jitter: up to a tenth of the time left, at most an hour.
            self._schedule(name, due + random.uniform(0, min(3600.0, due / 10)))
            return
        d = self._working[name] = self._renew(name)
        d.addBoth(self._ended, name)

    @inlineCallbacks
    def _renew(self, name: str):
        """
        Take the locks of C{name}, then obtain its certificate unless
        another instance did meanwhile.

        @return: A L{Deferred} that fires with L{_Busy} when another holds
            a lock.
        """
        if not self._lockFile(name):
            return _Busy
        try:
            if self.shared is not None:
                held = yield self._lockShared(name)
                if not held:
                    return _Busy
            try:
                # Another instance may have obtained it while this one waited.
                self._loadNewer(name)
                if self.shared is not None:
                    stored = yield self.shared.store.read("acme")
                    self._readShared(stored)
                if self._due(self._served.get(name)) > 0:
                    return None
                yield self._obtain(name)
            finally:
                if self.shared is not None:
                    self._unlockShared(name)
        finally:
            self._unlockFile(name)

    def _lockFile(self, name: str) -> bool:
        """
        Take the lock of C{name} in the storage (a file lock every process
        sharing it sees), unless another holds it.
        """
        path = os.path.join(self.config.storage, name + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        self._locks[name] = fd
        return True

    def _unlockFile(self, name: str) -> None:
        fd = self._locks.pop(name, None)
        if fd is not None:
            os.close(fd)

    @inlineCallbacks
    def _lockShared(self, name: str):
        """
        Take the lock of C{name} in the shared state, and keep it (renewed
        every third of L{LOCK_TTL}) until L{_unlockShared}.

        @raise StoreUnreachable: The shared state cannot be reached.
        """
        store = self.shared.store
        if not store.connected:
            raise StoreUnreachable(f"the shared state {store.description} cannot be reached")
        try:
            held = yield store.lock("acme:" + name, self._token, LOCK_TTL)
        except Exception as e:
            raise StoreUnreachable(
                f"the shared state {store.description} cannot be reached ({e})"
            ) from None
        if held:
            renewal = self._held[name] = LoopingCall(self._renewLock, name)
            renewal.clock = self.reactor
            renewal.start(LOCK_TTL / 3, now=False)
        return held

    def _renewLock(self, name: str) -> None:
        d = self.shared.store.renewLock("acme:" + name, self._token, LOCK_TTL)

        def renewed(held):
            if not held and name in self._held:
                log.warn(
                    "ACME: the lock of {name} in the shared state was lost; another "
                    "instance may order it too",
                    name=name,
                )

        d.addCallbacks(renewed, lambda reason: None)

    def _unlockShared(self, name: str) -> None:
        renewal = self._held.pop(name, None)
        if renewal is not None and renewal.running:
            renewal.stop()
        # When the store cannot be reached, the lock expires by itself.
        self.shared.store.unlock("acme:" + name, self._token).addErrback(lambda reason: None)

    def _ended(self, result, name: str) -> None:
        del self._working[name]
        status = self.status.get(name)
        if status is None:
            # Gone with a reload meanwhile.
            return None
        status.state = "valid" if name in self._served else "placeholder"
        if result is _Busy:
            self._schedule(name, LOCK_WAIT * random.uniform(1, 1.5))
            return None
        if isinstance(result, Failure) and result.check(StoreUnreachable):
            reason = str(result.value)
            if status.error != reason:
                log.warn(
                    "ACME: {name} waits for the shared state to take its lock: {reason}",
                    name=name, reason=reason,
                )
            status.error = reason
            self._waitingStore.add(name)
            self._schedule(name, LOCK_WAIT * random.uniform(1, 1.5))
            return None
        if isinstance(result, Failure):
            reason = reasonOf(result)
            status.failures += 1
            retryAfter = retryAfterOf(result)
            if retryAfter is not None:
                delay = min(MAX_RETRY_AFTER, max(1.0, retryAfter))
            else:
                delay = min(LAST_RETRY, FIRST_RETRY * 2 ** (status.failures - 1))
                delay *= random.uniform(1, 1.25)
            if status.error != reason:
                log.error(
                    "ACME: no certificate for {name}: {reason}; the current one keeps "
                    "serving; trying again in {delay:.0f}s{asked}",
                    name=name, reason=reason, delay=delay,
                    asked=" (the server's Retry-After)" if retryAfter is not None else "",
                )
            status.error = reason
            self._tell(name, "failed", reason)
            self._schedule(name, delay)
            return None
        status.error = None
        status.failures = 0
        self._schedule(name, 0)
        return None

    # The shared state's news.

    def stateConnected(self) -> None:
        """
        Load the certificates the shared state holds, and check the names
        that waited for it.
        """
        d = self.shared.store.read("acme")
        d.addCallback(self._readShared)
        d.addErrback(lambda reason: None)
        self.challenges.read()
        waiting, self._waitingStore = self._waitingStore, set()
        for name in waiting:
            if name not in self._working:
                self._schedule(name, 0)

    def stateLost(self, reason: str) -> None:
        pass

    def stateChanged(self, topic: str, key: str, value, version: int) -> None:
        if topic == "acme":
            self._fromShared(key, value)
        elif topic == TOPIC:
            self.challenges.changed(key, value, version)

    def _readShared(self, stored: dict) -> None:
        for name, (version, value) in stored.items():
            self._fromShared(name, value)

    def _fromShared(self, name: str, value) -> None:
        """
        Serve the certificate of C{name} another instance published, if it
        is newer than the one served, and keep it in the storage.
        """
        if name not in self.status or not isinstance(value, dict):
            return
        try:
            stored = fromPEM(
                value["certificate"].encode("ascii"), value["key"].encode("ascii")
            )
        except (KeyError, AttributeError, TypeError, ValueError, UnicodeError) as e:
            log.warn(
                "ACME: the certificate of {name} in the shared state cannot be read: {e}",
                name=name, e=e,
            )
            return
        if not newer(stored, self._served.get(name)):
            return
        found = readStored(self.config.storage, name)
        if found is None or newer(stored, found):
            try:
                self._write(name, stored)
            except OSError as e:
                log.warn(
                    "ACME: the certificate of {name} cannot be stored: {e}", name=name, e=e
                )
        self._serve(name, stored, "loaded")

    # Obtaining.

    def _write(self, name: str, stored: Stored) -> None:
        storage = self.config.storage
        os.makedirs(storage, mode=0o700, exist_ok=True)
        writePrivate(os.path.join(storage, name + ".key"), keyPEM(stored.key))
        writePrivate(os.path.join(storage, name + ".crt"), pemOf([stored.leaf, *stored.chain]))

    @inlineCallbacks
    def _obtain(self, name: str):
        """
        Order a certificate for C{name}, store it, publish it in the shared
        state, and serve it.
        """
        self.status[name].state = "obtaining"
        stored = yield self._order(name)
        if name not in self.status:
            return
        self._write(name, stored)
        if self.shared is not None:
            value = {
                "certificate": pemOf([stored.leaf, *stored.chain]).decode("ascii"),
                "key": keyPEM(stored.key).decode("ascii"),
            }
            try:
                yield self.shared.store.publish("acme", name, value)
            except Exception as e:
                log.warn(
                    "ACME: the certificate of {name} could not be published in the "
                    "shared state ({e}); the other instances sharing the storage find "
                    "it there",
                    name=name, e=e,
                )
        log.info(
            "ACME: new certificate for {name}, valid until {until}",
            name=name, until=stored.leaf.not_valid_after_utc.isoformat(),
        )
        self._serve(name, stored, "obtained")

    @inlineCallbacks
    def _order(self, name: str):
        """
        Order a certificate for C{name} from the ACME server and answer its
        challenges.

        @return: A L{Deferred} that fires with the L{Stored} certificate.
        """
        client = self._client
        key = newKey()
        order = yield self._inThread(client.order, name, key)
        accountKey = client.client().net.key
        pending = []
        try:
            for authorization in toAnswer(order.authorizations):
                challenge, response = yield self._answer(
                    name, authorization, accountKey, pending
                )
                yield self._inThread(client.answer, challenge, response)
            order = yield self._inThread(client.finish, order)
        finally:
            for undo in pending:
                undo()
        certificates = x509.load_pem_x509_certificates(order.fullchain_pem.encode("ascii"))
        return Stored(certificates[0], tuple(certificates[1:]), key)

    @inlineCallbacks
    def _answer(self, name, authorization, accountKey, pending):
        """
        Make the challenge of C{authorization} that the listeners can
        answer ready to be answered, here and in every process that shares
        the storage or the shared state, and say how to undo it in
        C{pending}.

        @return: A L{Deferred} that fires with the challenge and its
            response once it is shared.
        """
        offered = {c.chall.typ: c for c in authorization.body.challenges}
        for kind in self.config.challenges:
            challenge = offered.get(kind)
            if challenge is None:
                continue
            keyAuthorization = challenge.chall.key_authorization(accountKey)
            if kind == "http-01":
                token = challenge.chall.encode("token")
                self.stage.tokens[token.encode("ascii")] = keyAuthorization.encode("ascii")
                pending.append(lambda: self.stage.tokens.pop(token.encode("ascii"), None))
                key = token
            else:
                self._alpnChallenge(name, keyAuthorization, pending)
                key = normalizeHost(name).decode("ascii")
            pending.append(lambda: self.challenges.withdraw(kind, key))
            yield self.challenges.share(kind, key, keyAuthorization)
            return challenge, challenge.chall.response(accountKey)
        raise RuntimeError(
            "the ACME server offers no challenge the listeners can answer "
            f"(it offers {', '.join(sorted(offered)) or 'none'}; they answer "
            f"{', '.join(self.config.challenges)})"
        )

    def _alpnChallenge(self, name: str, keyAuthorization: str, pending) -> None:
        sni = self._sni()
        if sni is None:
            raise RuntimeError("no sni: listener serves TLS-ALPN-01")
        host = normalizeHost(name)
        context = challengeContext(name, keyAuthorization, lambda: sni.contextFor(name))
        self.challenges.contexts[host] = context
        pending.append(lambda: self.challenges.contexts.pop(host, None))

    def _sni(self):
        """
        The C{sni:} listeners' L{manualb.termination.SNIContextFactory}
        (or L{None}), made to ask L{challenges} for TLS-ALPN-01.
        """
        sni = self.serving()
        if sni is not None and sni.challenges is not self.challenges:
            self.challenges.contexts.update(sni.challenges)
            sni.challenges = self.challenges
        return sni

    def _fallback(self, host: bytes):
        sni = self.serving()
        return None if sni is None else sni.contextFor(host)

    def _serve(self, name: str, stored: Stored, event: str) -> None:
        status = self.status.get(name)
        if status is None:
            return
        self._served[name] = stored
        status.state = "valid"
        status.notAfter = stored.notAfter
        self.rebuild()
        self._tell(name, event)

    def statusOf(self) -> dict:
        """
        The C{acme} block of the admin API's status.
        """
        return {
            "directory": self.config.directory,
            "hosts": {name: status.asDict() for name, status in self.status.items()},
        }


def toAnswer(authorizations: Sequence) -> list:
    """
    The authorizations of an order whose challenges need an answer: not
    those the server holds valid already (it may reuse a recent one, RFC
    8555 section 7.1.4), whose challenges it refuses to take again.
    """
    return [each for each in authorizations if getattr(each.body.status, "name", None) != "valid"]
