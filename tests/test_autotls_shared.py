"""
Tests for L{manualb.autotls} with several instances: the lock that lets
one obtain a certificate while the others load it (from the shared state or
from a shared storage), the state stores' locks, reloads of C{[acme]}, the
ACME server's C{Retry-After}, and HTTP-01 on a listener that redirects to
https.  In memory, with an ACME order of the test's own.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import os

import requests
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from manualb import autotls
from manualb.acmeclient import Stored, newKey, placeholderCertificate, retryAfterSeconds
from manualb.configfile import parseConfig
from manualb.interfaces import IStateStore
from manualb.state import MemoryStateStore
from manualb.testing import MemoryBalancer, responseBody
from tests.redisserver import RedisServer, requireRedis

NAME = "www.example.com"

_CONFIG = """\
[manualb]
listen = tcp:80
access_log = off
{main}
[upstream u]
servers = 127.0.0.1:9

[route r]
path = /
upstream = u

[tls]
certificates = {names}

[acme]
accept_terms = yes
storage = {storage}
{more}
"""


def config(storage: str, names=(NAME,), main: str = "", more: str = ""):
    lines = "\n".join("    %s acme" % (name,) for name in names)
    return parseConfig(
        _CONFIG.format(storage=storage, names="\n" + lines, main=main, more=more), "<test>"
    )


def certificate(name: str = NAME, leafKey=None) -> Stored:
    """
    A certificate for C{name} (and C{leafKey}, by default a new one) as an
    ACME server would give: signed by a CA (its own), not self-signed.
    """
    caLeaf, caKey = placeholderCertificate("Test CA")
    leafKey = newKey() if leafKey is None else leafKey
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(caLeaf.subject)
        .public_key(leafKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(caKey, hashes.SHA256())
    )
    return Stored(leaf, (caLeaf,), leafKey)


class Orders:
    """
    The ACME orders of one or more L{autotls.AutoTLS}: each waits until the
    test gives its certificate or failure.
    """

    def __init__(self):
        self.pending: list[tuple[str, Deferred]] = []

    def install(self, acme: autotls.AutoTLS) -> None:
        acme._order = self.order

    def order(self, name: str) -> Deferred:
        d = Deferred()
        self.pending.append((name, d))
        return d


def served(lb: MemoryBalancer, name: str = NAME):
    """
    The certificate the balancer's sni: listeners serve for C{name}.
    """
    connection = SSL.Connection(lb.balancer.tls.contextFor(name), None)
    return connection.get_certificate().to_cryptography()


class SharedTests(SynchronousTestCase):
    """
    Two balancers, each with its own storage, sharing one state.
    """

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.store = MemoryStateStore(self.clock)
        self.orders = Orders()
        self.a = self.balancer(self.store, "a")
        self.b = self.balancer(self.store.another(), "b")

    def balancer(self, store, instance: str) -> MemoryBalancer:
        storage = os.path.abspath(self.mktemp())
        lb = MemoryBalancer(config(storage, main="instance = %s" % (instance,)), self.clock, store)
        self.orders.install(lb.balancer.acme)
        self.addCleanup(lb.balancer.acme.stop)
        return lb

    def test_oneOrdersBothServe(self):
        """
        Only one instance orders the certificate; once it has it, both
        serve it, and the other keeps it in its own storage.
        """
        self.assertEqual(served(self.a).issuer, served(self.a).subject)
        self.clock.advance(0)
        self.assertEqual([name for name, d in self.orders.pending], [NAME])
        stored = certificate()
        self.orders.pending.pop()[1].callback(stored)
        self.assertEqual(served(self.a), stored.leaf)
        self.assertEqual(served(self.b), stored.leaf)
        for lb in (self.a, self.b):
            status = lb.balancer.acme.status[NAME]
            self.assertEqual(status.state, "valid")
            with open(os.path.join(lb.balancer.config.acme.storage, NAME + ".crt"), "rb") as f:
                self.assertIn(b"BEGIN CERTIFICATE", f.read())
        # The other tries again, finds it and orders nothing.
        self.clock.advance(autotls.LOCK_WAIT * 2)
        self.assertEqual(self.orders.pending, [])
        self.assertEqual(self.store._data.locks, {})

    def test_holderDies(self):
        """
        The lock of a holder that stops renewing it expires: another
        instance orders then.
        """
        self.clock.advance(0)
        [(name, first)] = self.orders.pending
        holder = [lb for lb in (self.a, self.b) if lb.balancer.acme._working][0]
        # It dies: its lock is no longer renewed.
        holder.balancer.acme._held[NAME].stop()
        self.clock.pump([autotls.LOCK_WAIT] * int(autotls.LOCK_TTL / autotls.LOCK_WAIT + 2))
        self.assertEqual(len(self.orders.pending), 2)

    def test_renewedWhileHeld(self):
        """
        The holder renews its lock while it orders, however long that is.
        """
        self.clock.advance(0)
        self.clock.pump([autotls.LOCK_WAIT] * int(3 * autotls.LOCK_TTL / autotls.LOCK_WAIT))
        self.assertEqual(len(self.orders.pending), 1)

    def test_joinsLater(self):
        """
        An instance that starts after the certificate was obtained loads it
        from the shared state, with no order.
        """
        self.clock.advance(0)
        stored = certificate()
        self.orders.pending.pop()[1].callback(stored)
        c = self.balancer(self.store.another(), "c")
        self.assertEqual(served(c), stored.leaf)
        self.clock.advance(0)
        self.assertEqual(self.orders.pending, [])

    def test_storeUnreachable(self):
        """
        While the shared state cannot be reached, no one orders; the status
        says why, and the order comes once it is back.
        """
        self.store.lose()
        self.clock.advance(0)
        self.assertEqual(self.orders.pending, [])
        self.assertIn("cannot be reached", self.a.balancer.acme.status[NAME].error)
        self.store.restore()
        self.clock.advance(0)
        self.assertEqual(len(self.orders.pending), 1)


class SharedStorageTests(SynchronousTestCase):
    """
    Two balancers sharing a storage, without a shared state (as the
    workers of one machine).
    """

    def test_oneOrdersBothServe(self):
        clock = MemoryReactorClock()
        storage = os.path.abspath(self.mktemp())
        orders = Orders()
        a = MemoryBalancer(config(storage), clock)
        b = MemoryBalancer(config(storage), clock)
        for lb in (a, b):
            orders.install(lb.balancer.acme)
            self.addCleanup(lb.balancer.acme.stop)
        clock.advance(0)
        self.assertEqual(len(orders.pending), 1)
        stored = certificate()
        orders.pending.pop()[1].callback(stored)
        clock.advance(autotls.STORAGE_POLL)
        self.assertEqual(served(a), stored.leaf)
        self.assertEqual(served(b), stored.leaf)
        clock.advance(autotls.LOCK_WAIT * 2)
        self.assertEqual(orders.pending, [])

    def test_renewedElsewhere(self):
        """
        A certificate renewed by another process sharing the storage is
        served within L{autotls.STORAGE_POLL} seconds.
        """
        clock = MemoryReactorClock()
        storage = os.path.abspath(self.mktemp())
        orders = Orders()
        a = MemoryBalancer(config(storage), clock)
        orders.install(a.balancer.acme)
        self.addCleanup(a.balancer.acme.stop)
        clock.advance(0)
        orders.pending.pop()[1].callback(certificate())
        newer = certificate()
        a.balancer.acme._write(NAME, newer)
        # A file system whose times are coarse: the file looks new anyway.
        os.utime(os.path.join(storage, NAME + ".crt"), ns=(1, 1))
        clock.advance(autotls.STORAGE_POLL)
        self.assertEqual(served(a), newer.leaf)


class StoreLockTests(SynchronousTestCase):
    """
    The lock of L{MemoryStateStore}.
    """

    def test_lock(self):
        clock = MemoryReactorClock()
        store = MemoryStateStore(clock)
        other = store.another()
        verifyObject(IStateStore, store)
        self.assertTrue(self.successResultOf(store.lock("n", "t1", 10)))
        self.assertFalse(self.successResultOf(other.lock("n", "t2", 10)))
        self.assertFalse(self.successResultOf(other.unlock("n", "t2")))
        self.assertFalse(self.successResultOf(other.renewLock("n", "t2", 10)))
        clock.advance(9)
        self.assertTrue(self.successResultOf(store.renewLock("n", "t1", 10)))
        clock.advance(9)
        self.assertFalse(self.successResultOf(other.lock("n", "t2", 10)))
        clock.advance(1)
        self.assertTrue(self.successResultOf(other.lock("n", "t2", 10)))
        self.assertFalse(self.successResultOf(store.renewLock("n", "t1", 10)))
        self.assertFalse(self.successResultOf(store.unlock("n", "t1")))
        self.assertTrue(self.successResultOf(other.unlock("n", "t2")))
        self.assertTrue(self.successResultOf(store.lock("n", "t1", 10)))
        store.lose()
        self.failureResultOf(store.lock("m", "t1", 10), ConnectionError)


class RedisLockTests(TestCase):
    """
    The lock of L{manualb.redisstate.RedisStateStore}, in a real Redis.
    """

    timeout = 30

    @inlineCallbacks
    def setUp(self):
        requireRedis()
        from manualb.redisstate import RedisStateStore
        from manualb.state import parseStateURL

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.server = RedisServer(reactor, directory)
        yield self.server.start()
        self.addCleanup(self.server.stop)
        self.stores = []
        for each in range(2):
            store = RedisStateStore(reactor, parseStateURL(self.server.url))
            connected = Deferred()
            listener = _Listener(connected)
            store.start(listener)
            self.addCleanup(store.stop)
            yield connected
            self.stores.append(store)

    @inlineCallbacks
    def test_lock(self):
        one, two = self.stores
        verifyObject(IStateStore, one)
        self.assertTrue((yield one.lock("n", "t1", 30)))
        self.assertFalse((yield two.lock("n", "t2", 30)))
        ttl = yield one._call("PTTL", one.prefix + "lock:n")
        self.assertTrue(0 < int(ttl) <= 30000)
        self.assertFalse((yield two.renewLock("n", "t2", 30)))
        self.assertFalse((yield two.unlock("n", "t2")))
        self.assertTrue((yield one.renewLock("n", "t1", 60)))
        ttl = yield one._call("PTTL", one.prefix + "lock:n")
        self.assertTrue(30000 < int(ttl) <= 60000)
        self.assertTrue((yield one.unlock("n", "t1")))
        self.assertFalse((yield one.unlock("n", "t1")))
        self.assertTrue((yield two.lock("n", "t2", 30)))

    @inlineCallbacks
    def test_certificateShared(self):
        """
        The certificate one instance obtains is published through Redis, and
        the other (with its own storage) serves it.
        """
        from manualb.service import LoadBalancer

        orders = Orders()
        balancers = []
        for instance in "ab":
            storage = os.path.abspath(self.mktemp())
            cfg = config(
                storage, main="instance = %s\nstate = %s" % (instance, self.server.url)
            )
            lb = LoadBalancer(cfg, reactor)
            orders.install(lb.acme)
            lb.start()
            self.addCleanup(lb.close)
            balancers.append(lb)
        while not orders.pending:
            yield _later(0.01)
        self.assertEqual(len(orders.pending), 1)
        stored = certificate()
        events = []
        for lb in balancers:
            lb.acme.whenChanged(lambda *event: events.append(event))
        orders.pending.pop()[1].callback(stored)
        while len(events) < 2:
            yield _later(0.01)
        for lb in balancers:
            connection = SSL.Connection(lb.tls.contextFor(NAME), None)
            self.assertEqual(connection.get_certificate().to_cryptography(), stored.leaf)
        self.assertEqual(orders.pending, [])


class _Listener:
    def __init__(self, connected: Deferred):
        self.connected = connected

    def stateConnected(self):
        if not self.connected.called:
            self.connected.callback(None)

    def stateLost(self, reason):
        pass

    def stateChanged(self, topic, key, value, version):
        pass


def _later(seconds: float) -> Deferred:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


class RetryAfterTests(SynchronousTestCase):
    def test_parse(self):
        self.assertEqual(retryAfterSeconds("120", 1000.0), 120.0)
        self.assertIsNone(retryAfterSeconds(None, 1000.0))
        self.assertIsNone(retryAfterSeconds("soon", 1000.0))
        date = email.utils.formatdate(1000.0 + 3600, usegmt=True)
        self.assertEqual(retryAfterSeconds(date, 1000.0), 3600.0)
        self.assertEqual(retryAfterSeconds(date, 1000.0 + 7200), 0.0)

    def test_fromResponse(self):
        """
        A refusal of the ACME server carries its Retry-After.
        """
        from acme import messages

        from manualb.acmeclient import _network

        response = requests.Response()
        response.status_code = 429
        response.headers["Content-Type"] = "application/problem+json"
        response.headers["Retry-After"] = "3600"
        response._content = json.dumps(
            {"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many"}
        ).encode("ascii")
        with self.assertRaises(messages.Error) as caught:
            _network()._check_response(response)
        self.assertEqual(caught.exception.code, "rateLimited")
        self.assertEqual(caught.exception.retryAfter, 3600.0)

    def test_followed(self):
        """
        A rate limit with a Retry-After is retried then (bounded), and
        logged once.
        """
        from acme import messages

        clock = MemoryReactorClock()
        orders = Orders()
        lb = MemoryBalancer(config(os.path.abspath(self.mktemp())), clock)
        orders.install(lb.balancer.acme)
        self.addCleanup(lb.balancer.acme.stop)
        logged = []
        observer = logged.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        for retryAfter, expected in ((7200.0, 7200.0), (10 * 86400.0, autotls.MAX_RETRY_AFTER)):
            clock.advance(0)
            error = messages.Error.with_code("rateLimited", detail="too many certificates")
            error.retryAfter = retryAfter
            orders.pending.pop()[1].errback(error)
            status = lb.balancer.acme.status[NAME]
            self.assertEqual(status.nextCheck, clock.seconds() + expected)
            self.assertIn("too many certificates", status.error)
            clock.advance(expected)
        lines = [e for e in logged if "no certificate for" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertIn("Retry-After", lines[0]["asked"])


class ReloadTests(SynchronousTestCase):
    def setUp(self):
        self.clock = MemoryReactorClock()
        self.storage = os.path.abspath(self.mktemp())
        self.orders = Orders()
        self.lb = MemoryBalancer(config(self.storage), self.clock)
        self.orders.install(self.lb.balancer.acme)
        self.addCleanup(self.lb.balancer.acme.stop)
        self.clock.advance(0)
        self.orders.pending.pop()[1].callback(certificate())

    def test_namesChanged(self):
        """
        A reload that adds a name obtains it, one that removes a name drops
        it; the log line says so.
        """
        other = "api.example.com"
        message = self.lb.balancer.reload(config(self.storage, names=(other,)))
        self.assertIn("acme: added api.example.com; removed www.example.com", message)
        self.assertNotIn("restart", message)
        acme = self.lb.balancer.acme
        self.assertEqual(list(acme.status), [other])
        self.assertEqual(self.lb.balancer.tls.names[-1:], [other])
        self.clock.advance(0)
        self.assertEqual([name for name, d in self.orders.pending], [other])
        stored = certificate(other)
        self.orders.pending.pop()[1].callback(stored)
        self.assertEqual(served(self.lb, other), stored.leaf)

    def test_settingsChanged(self):
        message = self.lb.balancer.reload(
            config(self.storage, more="renew_before = 36500d")
        )
        self.assertIn("acme: settings changed", message)
        self.assertEqual(self.lb.balancer.acme.config.renew_before, 36500 * 86400)
        self.clock.advance(0)
        self.assertEqual(len(self.orders.pending), 1)

    def test_sectionRemoved(self):
        """
        Removing C{[acme]} needs a restart, which the log line says; the
        names keep being served meanwhile.
        """
        text = (
            "[manualb]\nlisten = tcp:80\naccess_log = off\n[upstream u]\n"
            "servers = 127.0.0.1:9\n[route r]\npath = /\nupstream = u\n"
        )
        message = self.lb.balancer.reload(parseConfig(text, "<test>"))
        self.assertIn("needs a restart to take effect, kept as it was: acme", message)
        self.assertEqual(self.lb.balancer.config.acme.hosts, (NAME,))
        self.assertFalse(served(self.lb).issuer == served(self.lb).subject)


class RedirectTests(SynchronousTestCase):
    def test_http01BeforeRedirect(self):
        """
        On a plain listener that redirects to https, the HTTP-01 challenge
        is answered, and every other path still redirected.
        """
        clock = MemoryReactorClock()
        lb = MemoryBalancer(
            config(os.path.abspath(self.mktemp()), main="redirect_https = on"), clock
        )
        Orders().install(lb.balancer.acme)
        self.addCleanup(lb.balancer.acme.stop)
        lb.balancer.acme.stage.tokens[b"tok"] = b"tok.thumb"
        agent = lb.agent()
        headers = Headers({b"host": [NAME.encode("ascii")]})
        response = self.successResultOf(
            agent.request(b"GET", b"http://%s/.well-known/acme-challenge/tok" % (NAME.encode(),), headers)
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(self.successResultOf(responseBody(response)), b"tok.thumb")
        for path in (b"/", b"/.well-known/acme-challenge/other"):
            response = self.successResultOf(
                agent.request(b"GET", b"http://%s%s" % (NAME.encode(), path), headers)
            )
            self.assertEqual(response.code, 301)
            self.assertEqual(
                response.headers.getRawHeaders(b"location"),
                [b"https://%s%s" % (NAME.encode(), path)],
            )
