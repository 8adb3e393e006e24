"""
Tests for L{manualb.acmechallenges}: the ACME challenges pending shared
between the processes (and instances) that answer for one address, so that
the one that did not order answers the ACME server's validation; in memory,
with an ACME client of the test's own.
"""

from __future__ import annotations

import hashlib
import os
import stat

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import NoResource

from manualb import acmechallenges
from manualb.acmechallenges import CHALLENGE_TTL, PendingChallenges, validToken
from manualb.acmeclient import ACME_IDENTIFIER, pemOf
from manualb.autotls import ChallengeStage
from manualb.configfile import parseConfig
from manualb.state import MemoryStateStore
from manualb.testing import MemoryBalancer, responseBody
from manualb.view import Passage, RequestView
from tests.redisserver import RedisServer, requireRedis
from tests.test_autotls_shared import certificate

NAME = "www.example.com"

_CONFIG = """\
[manualb]
listen =
    tcp:80
    sni:443
access_log = off
{main}
[upstream u]
servers = 127.0.0.1:9

[route r]
path = /
upstream = u

[tls]
certificates = {name} acme

[acme]
accept_terms = yes
storage = {storage}
"""


def config(storage: str, main: str = "", name: str = NAME):
    return parseConfig(_CONFIG.format(storage=storage, main=main, name=name), "<test>")


class _Thing:
    def __init__(self, **attributes):
        self.__dict__.update(attributes)


#: The status of an authorization the server has not validated yet.
_PENDING = _Thing(name="pending")


class FakeACME:
    """
    The blocking ACME client of L{manualb.acmeclient}, played by the test:
    each order has one authorization that offers one challenge, of the
    C{acme} package's own kind; answering it waits until the test says the
    server validated it (L{validated}).
    """

    def __init__(self, kind: str):
        import josepy
        from acme import challenges

        from manualb.acmeclient import _register

        self.accountKey = josepy.JWKRSA(
            key=rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
        self.kind = kind
        self.types = {"http-01": challenges.HTTP01, "tls-alpn-01": _register()}
        self.orders: list[str] = []
        self.answered: list[tuple[object, Deferred]] = []

    def install(self, acme) -> None:
        acme._client = self
        acme._inThread = lambda f, *args: maybeDeferred(f, *args)

    def client(self):
        return _Thing(net=_Thing(key=self.accountKey))

    def order(self, name, key):
        self.orders.append(name)
        chall = self.types[self.kind](token=os.urandom(32))
        body = _Thing(chall=chall)
        authorization = _Thing(body=_Thing(challenges=[body], status=_PENDING))
        return _Thing(name=name, key=key, authorizations=[authorization])

    def answer(self, challenge, response) -> Deferred:
        d = Deferred()
        self.answered.append((challenge.chall, d))
        return d

    def finish(self, order):
        stored = certificate(order.name, order.key)
        return _Thing(fullchain_pem=pemOf([stored.leaf, *stored.chain]).decode("ascii"))

    def keyAuthorization(self, chall) -> str:
        return chall.key_authorization(self.accountKey)

    def validated(self) -> None:
        """
        The server validated the challenge answered: the order ends.
        """
        chall, d = self.answered.pop()
        d.callback(None)


def getChallenge(lb: MemoryBalancer, token: str | bytes):
    """
    C{GET /.well-known/acme-challenge/TOKEN} on the plain listener.
    """
    if isinstance(token, str):
        token = token.encode("ascii")
    response = lb.agent().request(
        b"GET",
        b"http://%s/.well-known/acme-challenge/%s" % (NAME.encode("ascii"), token),
        Headers({b"host": [NAME.encode("ascii")]}),
    )
    lb.flush()
    return response


def handshake(lb: MemoryBalancer, protocols: list[bytes], name: str = NAME):
    """
    A TLS handshake in memory with the balancer's C{sni:} listeners, by a
    client that names C{name} and offers C{protocols} by ALPN.

    @return: The certificate served and the protocol selected.
    """
    server = lb.balancer.tls.serverConnectionForTLS(None)
    server.set_accept_state()
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_alpn_protos(protocols)
    client = SSL.Connection(context, None)
    client.set_tlsext_host_name(name.encode("ascii"))
    client.set_connect_state()
    for _ in range(10):
        for one, other in ((client, server), (server, client)):
            try:
                one.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                data = one.bio_read(65536)
            except SSL.WantReadError:
                data = b""
            if data:
                other.bio_write(data)
    return (
        client.get_peer_certificate().to_cryptography(),
        client.get_alpn_proto_negotiated(),
    )


def isChallengeFor(leaf: x509.Certificate, keyAuthorization: str) -> bool:
    try:
        extension = leaf.extensions.get_extension_for_oid(ACME_IDENTIFIER)
    except x509.ExtensionNotFound:
        return False
    digest = hashlib.sha256(keyAuthorization.encode("ascii")).digest()
    return extension.critical and extension.value.value == b"\x04\x20" + digest


class TwoBalancers:
    """
    Two balancers (as two workers, or two instances) that share a storage
    or a state, and the one of them that orders.
    """

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.balancers = self.make()
        for lb in self.balancers:
            self.acme.install(lb.balancer.acme)
            self.addCleanup(lb.balancer.acme.stop)
        self.clock.advance(0)
        self.assertEqual(self.acme.orders, [NAME])
        [self.holder] = [lb for lb in self.balancers if lb.balancer.acme._working]
        [self.other] = [lb for lb in self.balancers if lb is not self.holder]
        [(self.chall, d)] = self.acme.answered

    def storageOf(self, lb: MemoryBalancer) -> str:
        return lb.balancer.config.acme.storage


class HTTP01Mixin(TwoBalancers):
    def setUp(self):
        self.acme = FakeACME("http-01")
        TwoBalancers.setUp(self)

    def test_otherAnswers(self):
        """
        The balancer that did not order answers the token with its key
        authorization, as the one that did; once the order ended, neither
        does.
        """
        token = self.chall.encode("token")
        expected = self.acme.keyAuthorization(self.chall).encode("ascii")
        for lb in (self.other, self.holder):
            response = self.successResultOf(getChallenge(lb, token))
            self.assertEqual(response.code, 200)
            self.assertEqual(self.successResultOf(responseBody(response)), expected)
        self.acme.validated()
        self.assertEqual(self.acme.answered, [])
        for lb in (self.other, self.holder):
            lb.addBackend("127.0.0.1:9", NoResource())
            response = self.successResultOf(getChallenge(lb, token))
            self.assertEqual(response.code, 404)

    def test_expires(self):
        """
        A challenge whose order never ends (its process died) is no longer
        answered after L{CHALLENGE_TTL} seconds.
        """
        token = self.chall.encode("token")
        self.other.addBackend("127.0.0.1:9", NoResource())
        self.clock.advance(CHALLENGE_TTL - 1)
        self.assertEqual(self.successResultOf(getChallenge(self.other, token)).code, 200)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(getChallenge(self.other, token)).code, 404)


class TLSALPN01Mixin(TwoBalancers):
    def setUp(self):
        self.acme = FakeACME("tls-alpn-01")
        TwoBalancers.setUp(self)

    def test_otherAnswers(self):
        """
        The balancer that did not order answers an C{acme-tls/1} handshake
        for the name with the RFC 8737 certificate of the challenge; a
        client that does not offer C{acme-tls/1} gets the name's own
        certificate; once the order ended, the new certificate.
        """
        keyAuthorization = self.acme.keyAuthorization(self.chall)
        for lb in (self.other, self.holder):
            leaf, protocol = handshake(lb, [b"acme-tls/1"])
            self.assertEqual(protocol, b"acme-tls/1")
            self.assertTrue(isChallengeFor(leaf, keyAuthorization))
            self.assertIn(
                x509.DNSName(NAME),
                leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
            )
            leaf, protocol = handshake(lb, [b"h2", b"http/1.1"])
            self.assertFalse(isChallengeFor(leaf, keyAuthorization))
            self.assertEqual(protocol, b"http/1.1")
        # Made once for the name, and kept.
        self.assertIs(
            self.other.balancer.acme.challenges.get(NAME.encode("ascii")),
            self.other.balancer.acme.challenges.get(NAME.encode("ascii")),
        )
        self.acme.validated()
        self.clock.advance(60)
        for lb in (self.other, self.holder):
            leaf, protocol = handshake(lb, [b"acme-tls/1"])
            self.assertFalse(isChallengeFor(leaf, keyAuthorization))
            self.assertNotEqual(leaf.issuer, leaf.subject)

    def test_otherNames(self):
        """
        A name that is not of C{[acme]} is never looked up.
        """
        opened = []
        real = os.open
        self.patch(acmechallenges.os, "open", lambda path, *a: opened.append(path) or real(path, *a))
        leaf, protocol = handshake(self.other, [b"acme-tls/1"], "other.example.com")
        self.assertEqual(opened, [])


class SharedStorageHTTP01Tests(HTTP01Mixin, SynchronousTestCase):
    """
    HTTP-01, two balancers sharing their storage, without a shared state
    (the workers of one machine).
    """

    def make(self):
        storage = os.path.abspath(self.mktemp())
        return [MemoryBalancer(config(storage), self.clock) for _ in range(2)]

    def test_file(self):
        """
        The challenge is a file of its own in the storage, readable by the
        owner only, removed when the order ends.
        """
        directory = os.path.join(self.storageOf(self.holder), "challenges")
        path = os.path.join(directory, "http-01." + self.chall.encode("token"))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        self.acme.validated()
        self.assertEqual(os.listdir(directory), [])


class SharedStorageTLSALPN01Tests(TLSALPN01Mixin, SynchronousTestCase):
    def make(self):
        storage = os.path.abspath(self.mktemp())
        return [MemoryBalancer(config(storage), self.clock) for _ in range(2)]


class SharedStateHTTP01Tests(HTTP01Mixin, SynchronousTestCase):
    """
    HTTP-01, two instances with their own storage sharing a state (on
    different machines).
    """

    def make(self):
        self.store = MemoryStateStore(self.clock)
        return [
            MemoryBalancer(
                config(os.path.abspath(self.mktemp()), "instance = %s" % (name,)),
                self.clock,
                store,
            )
            for name, store in (("a", self.store), ("b", self.store.another()))
        ]

    def test_published(self):
        """
        The challenge is published under its topic, and removed when the
        order ends.
        """
        topic = self.store._data.topics[acmechallenges.TOPIC]
        self.assertEqual(list(topic), ["http-01:" + self.chall.encode("token")])
        self.acme.validated()
        self.assertEqual(topic, {})

    def test_joinsLater(self):
        """
        An instance that starts while the order is pending reads the
        challenge the state holds.
        """
        third = MemoryBalancer(
            config(os.path.abspath(self.mktemp()), "instance = c"), self.clock, self.store.another()
        )
        self.acme.install(third.balancer.acme)
        self.addCleanup(third.balancer.acme.stop)
        response = self.successResultOf(getChallenge(third, self.chall.encode("token")))
        self.assertEqual(response.code, 200)

    def test_readOnDemand(self):
        """
        An instance asked for a token it has not heard of reads the state
        again (at most once a second), and answers the next time.
        """
        challenges = self.other.balancer.acme.challenges
        token = self.chall.encode("token").encode("ascii")
        reads = []
        store = challenges.store
        real = store.read
        self.patch(store, "read", lambda topic: reads.append(topic) or real(topic))
        self.assertIsNotNone(challenges.keyAuthorization(token))
        self.assertEqual(reads, [])
        # A news lost: not in its storage either, only the state has it.
        challenges.shared.clear()
        self.assertIsNone(challenges.keyAuthorization(token))
        self.assertEqual(reads, [acmechallenges.TOPIC])
        self.assertIsNotNone(challenges.keyAuthorization(token))
        self.assertIsNone(challenges.keyAuthorization(b"unknown"))
        self.assertEqual(reads, [acmechallenges.TOPIC])
        self.clock.advance(acmechallenges.READ_INTERVAL)
        self.assertIsNone(challenges.keyAuthorization(b"unknown"))
        self.assertEqual(len(reads), 2)


class SharedStateTLSALPN01Tests(TLSALPN01Mixin, SynchronousTestCase):
    def make(self):
        store = MemoryStateStore(self.clock)
        return [
            MemoryBalancer(
                config(os.path.abspath(self.mktemp()), "instance = %s" % (name,)),
                self.clock,
                each,
            )
            for name, each in (("a", store), ("b", store.another()))
        ]


class HostileTokenTests(SynchronousTestCase):
    """
    Tokens that cannot be ACME's never reach the file system; those that
    can are looked up in the storage's directory of challenges only, and
    only a bounded read of it is made.
    """

    hostile = [
        b"../secret",
        b"..%2Fsecret",
        b"..%2fsecret",
        b"%2e%2e/secret",
        b"a/../../secret",
        b"/etc/passwd",
        b"secret\x00",
        b"a" * (acmechallenges.MAX_TOKEN + 1),
        b"a" * 100000,
        b"tok.en",
        b"tok en",
        b"",
        b"\xff\xfe",
    ]

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.storage = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.storage, "challenges"))
        # What a path traversal would find.
        with open(os.path.join(self.storage, "secret"), "w") as f:
            f.write("1 x.y")
        self.opened: list[str] = []
        real = os.open
        self.patch(
            acmechallenges.os,
            "open",
            lambda path, *args: self.opened.append(path) or real(path, *args),
        )

    def test_validToken(self):
        self.assertTrue(validToken(b"sb04kSF7qEgaAeTVB6v2LxUK5Oq4MtpKG27Iy_V1wpA"))
        for token in self.hostile:
            self.assertFalse(validToken(token), token)

    def test_stage(self):
        """
        L{ChallengeStage} lets a hostile token go by without looking it up.
        """
        challenges = PendingChallenges(self.clock, self.storage, [NAME], lambda host: None)
        stage = ChallengeStage(challenges.keyAuthorization)
        for token in self.hostile:
            view = RequestView("1.2.3.4", path=b"/.well-known/acme-challenge/" + token)
            self.assertIsNone(stage.handle(Passage(view)))
        self.assertEqual(self.opened, [])
        view = RequestView("1.2.3.4", path=b"/.well-known/acme-challenge/unknown")
        self.assertIsNone(stage.handle(Passage(view)))
        self.assertEqual(
            self.opened, [os.path.join(self.storage, "challenges", "http-01.unknown")]
        )

    def test_balancer(self):
        """
        Through the balancer, hostile tokens get the backend's 404.
        """
        lb = MemoryBalancer(config(self.storage), self.clock)
        FakeACME("http-01").install(lb.balancer.acme)
        self.addCleanup(lb.balancer.acme.stop)
        lb.addBackend("127.0.0.1:9", NoResource())
        for token in self.hostile:
            if b"\x00" in token or b" " in token or b"\xff" in token:
                # Not even a request line the client sends.
                continue
            response = self.successResultOf(getChallenge(lb, token))
            # A request line too long is refused as such.
            self.assertIn(response.code, (404, 414), token[:100])
        for path in self.opened:
            self.assertTrue(path.startswith(self.storage + os.sep), path)
            self.assertNotIn("..", path)
            self.assertNotIn("secret", path)

    def test_boundedRead(self):
        """
        A file of a valid token is read up to L{acmechallenges.MAX_FILE}
        bytes; a bigger one, or one that holds no key authorization, is
        not answered.
        """
        challenges = PendingChallenges(self.clock, self.storage, [NAME], lambda host: None)
        directory = os.path.join(self.storage, "challenges")
        with open(os.path.join(directory, "http-01.big"), "wb") as f:
            f.write(b"1000 big." + b"a" * 10_000_000)
        with open(os.path.join(directory, "http-01.bad"), "wb") as f:
            f.write(b"1000 ../../etc/passwd")
        with open(os.path.join(directory, "http-01.good"), "wb") as f:
            f.write(b"1000 good.thumb\n")
        reads = []
        real = os.read
        self.patch(acmechallenges.os, "read", lambda fd, n: reads.append(n) or real(fd, n))
        self.assertIsNone(challenges.keyAuthorization(b"big"))
        self.assertIsNone(challenges.keyAuthorization(b"bad"))
        self.assertEqual(challenges.keyAuthorization(b"good"), b"good.thumb")
        self.assertEqual(set(reads), {acmechallenges.MAX_FILE + 1})

    def test_symlink(self):
        """
        A challenge file that is a symbolic link is not followed.
        """
        challenges = PendingChallenges(self.clock, self.storage, [NAME], lambda host: None)
        os.symlink(
            os.path.join(self.storage, "secret"),
            os.path.join(self.storage, "challenges", "http-01.link"),
        )
        self.assertIsNone(challenges.keyAuthorization(b"link"))


class RedisChallengeTests(TestCase):
    """
    Challenges shared through a real Redis.
    """

    timeout = 30

    @inlineCallbacks
    def test_shared(self):
        """
        A challenge one instance shares is heard of by another (with its
        own storage) within a round trip, read by one that connects later,
        and gone from both once withdrawn.
        """
        requireRedis()
        from manualb.redisstate import RedisStateStore
        from manualb.state import parseStateURL

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = RedisServer(reactor, directory)
        yield server.start()
        self.addCleanup(server.stop)
        pending = []
        for each in range(2):
            store = RedisStateStore(reactor, parseStateURL(server.url))
            challenges = PendingChallenges(
                reactor, os.path.join(directory, str(each)), [NAME], lambda host: None, store
            )
            connected = Deferred()
            store.start(_Listener(challenges, connected))
            self.addCleanup(store.stop)
            yield connected
            pending.append(challenges)
        one, two = pending
        heard = two.heard = Deferred()
        yield one.share("http-01", "tok", "tok.thumb")
        yield heard
        self.assertEqual(two.keyAuthorization(b"tok"), b"tok.thumb")
        late = PendingChallenges(
            reactor, os.path.join(directory, "late"), [NAME], lambda host: None,
            RedisStateStore(reactor, parseStateURL(server.url)),
        )
        connected = Deferred()
        late.store.start(_Listener(late, connected))
        self.addCleanup(late.store.stop)
        yield connected
        stored = yield late.store.read(acmechallenges.TOPIC)
        late._stored(stored)
        self.assertEqual(late.keyAuthorization(b"tok"), b"tok.thumb")
        heard = two.heard = Deferred()
        one.withdraw("http-01", "tok")
        yield heard
        self.assertIsNone(two.keyAuthorization(b"tok"))


class _Listener:
    def __init__(self, challenges: PendingChallenges, connected: Deferred):
        self.challenges = challenges
        self.connected = connected
        challenges.heard = None

    def stateConnected(self):
        if not self.connected.called:
            self.connected.callback(None)

    def stateLost(self, reason):
        pass

    def stateChanged(self, topic, key, value, version):
        if topic == acmechallenges.TOPIC:
            self.challenges.changed(key, value, version)
            heard, self.challenges.heard = self.challenges.heard, None
            if heard is not None:
                heard.callback(None)
