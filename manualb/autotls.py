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
API's status, and retried with back-off.  Instances (and workers) that
share C{storage} take a lock before they order: one obtains, the others
find the certificate in C{storage} and load it.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import importlib.util
import os
import random
import tempfile
from collections.abc import Callable, Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from manualb.config import AcmeConfig, ListenerConfig, TLSConfig, keys
from manualb.interfaces import IStage
from manualb.syntax import Section, hostName
from manualb.termination import isTLS, splitDescription
from manualb.view import Answer, Passage, normalizeHost

__all__ = [
    "ACME_KEYS",
    "AutoTLS",
    "ChallengeStage",
    "alpnChallengeCertificate",
    "parseAcme",
    "placeholderCertificate",
]

log = Logger()

#: The keys of C{[acme]}.
ACME_KEYS: tuple[str, ...] = tuple(keys(AcmeConfig))

#: The ALPN protocol of TLS-ALPN-01 (RFC 8737).
ACME_TLS_ALPN = b"acme-tls/1"
#: The certificate extension that carries the key authorization's digest.
_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
_CHALLENGE_PATH = b"/.well-known/acme-challenge/"

#: Back-off after a failure: the first delay, doubled up to the last.
FIRST_RETRY = 60.0
LAST_RETRY = 86400.0
#: How long before trying again when another instance holds the lock.
LOCK_WAIT = 10.0
#: How long an order may take, from the first request to the certificate.
ORDER_TIMEOUT = 90


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


# Certificates.


def _newKey() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _selfSigned(name: str, key, extensions=()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256())


def placeholderCertificate(name: str):
    """
    A self-signed certificate for C{name} and its key, served until the
    real one arrives.
    """
    key = _newKey()
    return _selfSigned(name, key), key


def alpnChallengeCertificate(name: str, keyAuthorization: str):
    """
    The certificate of a TLS-ALPN-01 challenge (RFC 8737, section 3) and its
    key: self-signed for C{name}, with the critical C{acmeIdentifier}
    extension holding the SHA-256 digest of the key authorization as a DER
    OCTET STRING.
    """
    digest = hashlib.sha256(keyAuthorization.encode("ascii")).digest()
    value = b"\x04\x20" + digest
    key = _newKey()
    extension = x509.UnrecognizedExtension(_ACME_IDENTIFIER, value)
    return _selfSigned(name, key, [(extension, True)]), key


def _pem(certificates: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _keyPEM(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def writePrivate(path: str, data: bytes) -> None:
    """
    Write C{data} to C{path} atomically (a reader finds the old file or the
    new one, whole), readable and writable by the owner only.
    """
    directory = os.path.dirname(path)
    fd, temporary = tempfile.mkstemp(prefix=".", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


@attrs.frozen
class Stored:
    """
    A certificate of the storage: the leaf, its chain and its key.
    """

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: object

    @property
    def notAfter(self) -> float:
        return self.leaf.not_valid_after_utc.timestamp()


def _readStored(storage: str, name: str) -> Stored | None:
    """
    The certificate of C{name} in C{storage}, or L{None} when there is none
    (or it cannot be read: it is then obtained again).
    """
    try:
        with open(os.path.join(storage, name + ".crt"), "rb") as f:
            certificates = x509.load_pem_x509_certificates(f.read())
        with open(os.path.join(storage, name + ".key"), "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
    except (OSError, ValueError, TypeError):
        return None
    return Stored(certificates[0], tuple(certificates[1:]), key)


# HTTP-01.


@implementer(IStage)
class ChallengeStage:
    """
    Answers the HTTP-01 challenges pending (RFC 8555, section 8.3): C{GET
    /.well-known/acme-challenge/TOKEN} gets the key authorization of
    C{TOKEN}; every other request goes on down the chain.

    @ivar tokens: The key authorization of each pending token.
    """

    def __init__(self) -> None:
        self.tokens: dict[bytes, bytes] = {}

    def handle(self, passage: Passage) -> Answer | None:
        if not self.tokens:
            return None
        path = passage.view.path
        if not path.startswith(_CHALLENGE_PATH):
            return None
        answer = self.tokens.get(path[len(_CHALLENGE_PATH) :])
        if answer is None:
            return None
        return Answer(200, b"OK", headers=((b"Content-Type", b"text/plain"),), page=answer)


# The ACME client.


def _register() -> type:
    """
    The TLS-ALPN-01 challenge as the C{acme} package's messages know
    challenges (it has none of its own), registered once.
    """
    from acme import challenges

    known = challenges.Challenge.TYPES.get("tls-alpn-01")
    if known is not None and issubclass(known, challenges.KeyAuthorizationChallenge):
        return known

    @challenges.ChallengeResponse.register
    class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
        typ = "tls-alpn-01"

    @challenges.Challenge.register
    class TLSALPN01(challenges.KeyAuthorizationChallenge):
        response_cls = TLSALPN01Response
        typ = response_cls.typ

        def validation(self, account_key, **unused):
            return None

    return TLSALPN01


class _Client:
    """
    The blocking side: an account on the ACME server and its orders, run
    in the thread pool.
    """

    def __init__(self, config: AcmeConfig):
        self.config = config
        self._client = None

    def _accountKey(self):
        import josepy
        from cryptography.hazmat.primitives.asymmetric import rsa

        path = os.path.join(self.config.storage, "account.key")
        try:
            with open(path, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), None)
        except FileNotFoundError:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            writePrivate(path, _keyPEM(key))
        return josepy.JWKRSA(key=key)

    def client(self):
        """
        The ACME client, its account registered (or found again by its
        key) on first use.
        """
        if self._client is not None:
            return self._client
        from acme import client, errors, messages

        _register()
        net = client.ClientNetwork(
            self._accountKey(),
            verify_ssl=self.config.directory_ca or True,
            user_agent="manualb",
            timeout=30,
        )
        directory = client.ClientV2.get_directory(self.config.directory, net)
        acme = client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(
            email=self.config.email, terms_of_service_agreed=True
        )
        try:
            net.account = acme.new_account(registration)
        except errors.ConflictError as e:
            net.account = messages.RegistrationResource(
                uri=e.location, body=messages.Registration()
            )
        self._client = acme
        return acme

    def order(self, name: str, key):
        from acme import crypto_util

        csr = crypto_util.make_csr(_keyPEM(key), [name])
        return self.client().new_order(csr)

    def answer(self, challenge, response) -> None:
        self.client().answer_challenge(challenge, response)

    def finish(self, order):
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
        return self.client().poll_and_finalize(order, deadline)


def _reason(failure) -> str:
    """
    One line on why an order failed, as the ACME server says it.
    """
    error = failure.value
    from acme import errors, messages

    if isinstance(error, errors.ValidationError):
        problems = []
        for authorization in error.failed_authzrs:
            for challenge in authorization.body.challenges:
                if challenge.error is not None:
                    problems.append(str(challenge.error))
        return "validation failed: " + ("; ".join(problems) or "no reason given")
    if isinstance(error, messages.Error):
        return str(error)
    return str(error).splitlines()[0] if str(error) else type(error).__name__


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


class AutoTLS:
    """
    Obtains and renews the certificates of C{[acme]}, and gives them to the
    C{sni:} listeners.

    @ivar config: The C{[acme]} section.
    @ivar stage: Answers the HTTP-01 challenges (see L{ChallengeStage}).
    @ivar status: The L{HostStatus} of each name.
    """

    def __init__(
        self,
        config: AcmeConfig,
        reactor,
        rebuild: Callable[[], object],
        serving: Callable[[], object],
    ):
        """
        @param rebuild: Makes the listeners' certificates again, with the
            names' current ones (through L{contexts}), and serves them.
        @param serving: The L{manualb.termination.SNIContextFactory} the
            C{sni:} listeners serve with, or L{None} when there is none.
        """
        self.config = config
        self.reactor = reactor
        self.rebuild = rebuild
        self.serving = serving
        self.stage = ChallengeStage()
        self.status = {name: HostStatus() for name in config.hosts}
        self._client = _Client(config)
        self._served: dict[str, Stored] = {}
        self._placeholders: dict[str, Stored] = {}
        self._timers: dict[str, object] = {}
        self._working: dict[str, Deferred] = {}
        self._listeners: list[Callable[[str, str, str | None], None]] = []
        self._pool: ThreadPool | None = None
        self._running = False

    # What the listeners serve.

    def contexts(self, makeContext) -> list[tuple[str, SSL.Context]]:
        """
        The C{(name, context)} of each name, with its certificate from the
        storage, or a placeholder (see
        L{manualb.termination.contextFactoryFor}'s C{extra}).
        """
        pairs = []
        for name in self.config.hosts:
            stored = self._served.get(name) or self._load(name)
            if stored is None:
                stored = self._placeholders.get(name)
                if stored is None:
                    leaf, key = placeholderCertificate(name)
                    stored = self._placeholders[name] = Stored(leaf, (), key)
            pairs.append((name, makeContext(stored.leaf, list(stored.chain), stored.key)))
        return pairs

    def _load(self, name: str) -> Stored | None:
        stored = _readStored(self.config.storage, name)
        if stored is not None:
            self._served[name] = stored
            self.status[name].state = "valid"
            self.status[name].notAfter = stored.notAfter
        return stored

    # Running.

    def start(self) -> None:
        """
        Start the thread pool and check every name now.
        """
        if self._running:
            return
        self._running = True
        os.makedirs(self.config.storage, mode=0o700, exist_ok=True)
        self._pool = ThreadPool(minthreads=0, maxthreads=2, name="manualb-acme")
        self._pool.start()
        for name in self.config.hosts:
            self._schedule(name, 0)

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

    def whenChanged(self, listener: Callable[[str, str, str | None], None]) -> None:
        """
        Call C{listener(name, event, reason)} on every change: C{obtained}
        (a new certificate served), C{loaded} (found in the storage),
        C{failed} (with the reason).
        """
        self._listeners.append(listener)

    def _tell(self, name: str, event: str, reason: str | None = None) -> None:
        for listener in list(self._listeners):
            listener(name, event, reason)

    def _schedule(self, name: str, delay: float) -> None:
        if not self._running:
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

    def _check(self, name: str) -> None:
        """
        Load the storage's certificate of C{name} if it is newer than the one
        served; then renew it if it is due, or wait until it is.
        """
        self._timers.pop(name, None)
        if not self._running or name in self._working:
            return
        stored = _readStored(self.config.storage, name)
        served = self._served.get(name)
        if stored is not None and (served is None or stored.leaf != served.leaf):
            if served is None or stored.notAfter >= served.notAfter:
                self._serve(name, stored, "loaded")
        due = self._due(self._served.get(name))
        if due > 0:
            # Jitter: up to a tenth of the time left, at most an hour.
            self._schedule(name, due + random.uniform(0, min(3600.0, due / 10)))
            return
        if not self._lock(name):
            self._schedule(name, LOCK_WAIT * random.uniform(1, 1.5))
            return
        d = self._working[name] = self._obtain(name)
        d.addBoth(self._ended, name)

    def _lock(self, name: str) -> bool:
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
        self._locks = getattr(self, "_locks", {})
        self._locks[name] = fd
        return True

    def _unlock(self, name: str) -> None:
        fd = getattr(self, "_locks", {}).pop(name, None)
        if fd is not None:
            os.close(fd)

    def _ended(self, result, name: str) -> None:
        del self._working[name]
        self._unlock(name)
        status = self.status[name]
        if isinstance(result, Failure):
            reason = _reason(result)
            if status.error != reason:
                log.error(
                    "ACME: no certificate for {name}: {reason}; the current one keeps serving",
                    name=name, reason=reason,
                )
            status.error = reason
            status.failures += 1
            status.state = "valid" if name in self._served else "placeholder"
            delay = min(LAST_RETRY, FIRST_RETRY * 2 ** (status.failures - 1))
            self._tell(name, "failed", reason)
            self._schedule(name, delay * random.uniform(1, 1.25))
            return None
        status.error = None
        status.failures = 0
        self._schedule(name, 0)
        return None

    @inlineCallbacks
    def _obtain(self, name: str):
        """
        Order a certificate for C{name}, answer its challenges, and serve it.
        """
        self.status[name].state = "obtaining"
        key = _newKey()
        order = yield self._inThread(self._client.order, name, key)
        client = self._client.client()
        accountKey = client.net.key
        pending = []
        try:
            for authorization in order.authorizations:
                challenge, response = self._answer(name, authorization, accountKey, pending)
                yield self._inThread(self._client.answer, challenge, response)
            order = yield self._inThread(self._client.finish, order)
        finally:
            for undo in pending:
                undo()
        certificates = x509.load_pem_x509_certificates(order.fullchain_pem.encode("ascii"))
        stored = Stored(certificates[0], tuple(certificates[1:]), key)
        storage = self.config.storage
        writePrivate(os.path.join(storage, name + ".key"), _keyPEM(key))
        writePrivate(os.path.join(storage, name + ".crt"), _pem(certificates))
        log.info(
            "ACME: new certificate for {name}, valid until {until}",
            name=name, until=stored.leaf.not_valid_after_utc.isoformat(),
        )
        self._serve(name, stored, "obtained")

    def _answer(self, name, authorization, accountKey, pending):
        """
        Make the challenge of C{authorization} that the listeners can
        answer ready to be answered, and say how to undo it in C{pending}.
        """
        offered = {c.chall.typ: c for c in authorization.body.challenges}
        for kind in self.config.challenges:
            challenge = offered.get(kind)
            if challenge is None:
                continue
            keyAuthorization = challenge.chall.key_authorization(accountKey)
            if kind == "http-01":
                token = challenge.chall.encode("token").encode("ascii")
                self.stage.tokens[token] = keyAuthorization.encode("ascii")
                pending.append(lambda: self.stage.tokens.pop(token, None))
            else:
                self._alpnChallenge(name, keyAuthorization, pending)
            return challenge, challenge.chall.response(accountKey)
        raise RuntimeError(
            "the ACME server offers no challenge the listeners can answer "
            f"(it offers {', '.join(sorted(offered)) or 'none'}; they answer "
            f"{', '.join(self.config.challenges)})"
        )

    def _alpnChallenge(self, name: str, keyAuthorization: str, pending) -> None:
        leaf, key = alpnChallengeCertificate(name, keyAuthorization)
        context = SSL.Context(SSL.TLS_METHOD)
        context.use_certificate(leaf)
        context.use_privatekey(key)
        sni = self.serving()
        if sni is None:
            raise RuntimeError("no sni: listener serves TLS-ALPN-01")

        def select(connection, offered):
            if ACME_TLS_ALPN in offered:
                return ACME_TLS_ALPN
            # Not the ACME server: the certificate the name has otherwise.
            connection.set_context(sni.contextFor(name))
            if b"http/1.1" in offered:
                return b"http/1.1"
            return SSL.NO_OVERLAPPING_PROTOCOLS

        context.set_alpn_select_callback(select)
        host = normalizeHost(name)
        sni.challenges[host] = context
        pending.append(lambda: sni.challenges.pop(host, None))

    def _serve(self, name: str, stored: Stored, event: str) -> None:
        self._served[name] = stored
        status = self.status[name]
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

