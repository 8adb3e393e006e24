"""
Tests for L{manualb.autotls}: automatic HTTPS by ACME, against a real ACME
server (pebble, see L{tests.pebbleserver}) for the end-to-end ones.
"""

from __future__ import annotations

import os
import socket
import ssl
import stat

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from manualb.autotls import ChallengeStage, alpnChallengeCertificate, toAnswer, writePrivate
from manualb.config import ConfigError
from manualb.configfile import parseConfig
from manualb.service import makeService
from manualb.view import Passage, RequestView
from tests.pebbleserver import LoopbackDNS, Pebble, listenDNS, requirePebble
from tests.redisserver import freePort

_CONFIG = """\
[manualb]
listen =
{listen}
admin = tcp:0:interface=127.0.0.1

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
{more}
"""


def _config(storage: str, listen: list[str], more: str = "", name: str = "www.example.com"):
    return parseConfig(
        _CONFIG.format(
            listen="\n".join("    " + line for line in listen),
            storage=storage,
            more=more,
            name=name,
        )
    )


class ConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """
        C{NAME acme} lines of C{[tls]} name the hosts; the directory is Let's
        Encrypt's; an sni: line on 443 answers TLS-ALPN-01, a plain one on
        80 HTTP-01.
        """
        config = _config("/tmp/x", ["tcp:80", "sni:443"])
        self.assertEqual(config.acme.hosts, ("www.example.com",))
        self.assertEqual(config.acme.challenges, ("tls-alpn-01", "http-01"))
        self.assertIn("letsencrypt.org", config.acme.directory)
        self.assertEqual(config.acme.renew_before, 30 * 86400)
        self.assertEqual(config.tls.certificates, ())

    def test_hostsKey(self) -> None:
        """
        The C{hosts} key adds names.
        """
        config = _config("/tmp/x", ["tcp:80"], "hosts = a.example.com b.example.com")
        self.assertEqual(
            config.acme.hosts, ("www.example.com", "a.example.com", "b.example.com")
        )
        self.assertEqual(config.acme.challenges, ("http-01",))

    def test_termsRequired(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parseConfig(_CONFIG.format(listen="    tcp:80", storage="/tmp/x", more="", name="a.b")
                        .replace("accept_terms = yes", ""))
        self.assertIn("accept_terms", str(caught.exception))

    def test_noChallengePossible(self) -> None:
        """
        Without an sni: line on tls_port nor a plain one on http_port, the
        configuration is refused, naming the section.
        """
        with self.assertRaises(ConfigError) as caught:
            _config("/tmp/x", ["tcp:8080", "sni:8443"])
        self.assertIn("[acme]", str(caught.exception))
        self.assertIn("port 443", str(caught.exception))

    def test_checkedWithoutServer(self) -> None:
        """
        A C{[tls]} of ACME names only is checked (as C{check} does) without
        any certificate: there is none before the server gives one.
        """
        from manualb.termination import contextFactoryFor

        config = _config("/tmp/x", ["tcp:80"])
        self.assertIsNone(contextFactoryFor(config.tls, config.source))

    def test_acmeLinesNeedSection(self) -> None:
        text = _CONFIG.format(listen="    tcp:80", storage="/tmp/x", more="", name="a.b")
        text = text[: text.index("[acme]")]
        with self.assertRaises(ConfigError) as caught:
            parseConfig(text)
        self.assertIn("[acme]", str(caught.exception))


class PiecesTests(SynchronousTestCase):
    def test_challengeStage(self) -> None:
        """
        The stage answers a pending token with its key authorization, and
        lets everything else go by.
        """
        stage = ChallengeStage()
        stage.tokens[b"abc"] = b"abc.thumb"
        view = RequestView("1.2.3.4", path=b"/.well-known/acme-challenge/abc")
        answer = stage.handle(Passage(view))
        self.assertEqual((answer.code, answer.page), (200, b"abc.thumb"))
        other = RequestView("1.2.3.4", path=b"/.well-known/acme-challenge/other")
        self.assertIsNone(stage.handle(Passage(other)))
        self.assertIsNone(stage.handle(Passage(RequestView("1.2.3.4", path=b"/"))))

    def test_alpnCertificate(self) -> None:
        """
        The TLS-ALPN-01 certificate names the host and carries the digest of
        the key authorization in a critical acmeIdentifier extension.
        """
        import hashlib

        leaf, key = alpnChallengeCertificate("www.example.com", "token.thumb")
        extension = leaf.extensions.get_extension_for_oid(
            x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
        )
        self.assertTrue(extension.critical)
        self.assertEqual(
            extension.value.value, b"\x04\x20" + hashlib.sha256(b"token.thumb").digest()
        )

    def test_writePrivate(self) -> None:
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "f.key")
        writePrivate(path, b"one")
        writePrivate(path, b"two")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"two")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(os.listdir(directory), ["f.key"])


def _served(port: int, name: str) -> Deferred[x509.Certificate]:
    """
    The certificate the sni: listener on C{port} serves to a client naming
    C{name}.
    """

    def get():
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        # As browsers do; a client that offers no ALPN gets the challenge's
        # certificate while a TLS-ALPN-01 challenge is pending.
        context.set_alpn_protocols(["http/1.1"])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))

    return deferToThread(get)


def _selfSigned(certificate: x509.Certificate) -> bool:
    return certificate.issuer == certificate.subject


class AuthorizationTests(SynchronousTestCase):
    def test_validNotAnswered(self):
        """
        An order may hold an authorization the server validated already (a
        recent one it reuses): its challenges are not answered again, which
        the server would refuse (pebble: "Cannot update challenge with
        status valid"); pending ones are.
        """
        from acme import messages

        def authorization(status):
            return messages.AuthorizationResource(
                body=messages.Authorization(status=status, challenges=[]), uri="u"
            )

        valid, pending = authorization(messages.STATUS_VALID), authorization(messages.STATUS_PENDING)
        self.assertEqual(toAnswer([valid, pending, valid]), [pending])
        self.assertEqual(toAnswer([valid]), [])


class PebbleTests(TestCase):
    """
    Certificates obtained from pebble, on free loopback ports.
    """

    timeout = 120

    @inlineCallbacks
    def setUp(self):
        requirePebble()
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.storage = os.path.join(self.workdir, "storage")
        self.httpPort = freePort()
        self.tlsPort = freePort()
        self.dns = LoopbackDNS()
        dnsPort = listenDNS(reactor, self.dns)
        self.addCleanup(dnsPort.stopListening)
        self.pebble = Pebble(
            reactor, self.workdir, self.httpPort, self.tlsPort, dnsPort.getHost().port
        )
        yield self.pebble.start()
        self.addCleanup(self.pebble.stop)

    def serve(self, listen: list[str], more: str = ""):
        more += "\ndirectory = %s\ndirectory_ca = %s\n" % (self.pebble.directory, self.pebble.ca)
        more += "http_port = %d\ntls_port = %d\n" % (self.httpPort, self.tlsPort)
        config = _config(self.storage, listen, more)
        service = makeService(config, reactor)
        self.events: list = []
        self.waiting: list = []
        balancer = service.balancer
        balancer.acme.whenChanged(self._event)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        return balancer

    def _event(self, name, event, reason):
        self.events.append((name, event, reason))
        if self.waiting:
            self.waiting.pop(0).callback(self.events.pop(0))

    def nextEvent(self) -> Deferred:
        """
        The next event of the balancer's ACME client not yet taken.
        """
        d = Deferred()
        if self.events:
            d.callback(self.events.pop(0))
        else:
            self.waiting.append(d)
        return d

    @inlineCallbacks
    def test_http01(self):
        """
        With only a plain listener on the port pebble validates HTTP-01 on,
        the certificate is obtained by HTTP-01, stored (0600), and served by
        the sni: listener in place of the placeholder.
        """
        sniPort = freePort()
        balancer = self.serve(
            ["tcp:%d:interface=127.0.0.1" % (self.httpPort,), "sni:%d:interface=127.0.0.1" % (sniPort,)]
        )
        self.assertEqual(balancer.config.acme.challenges, ("http-01",))
        before = yield _served(sniPort, "www.example.com")
        self.assertTrue(_selfSigned(before))
        event = yield self.nextEvent()
        self.assertEqual(event[:2], ("www.example.com", "obtained"), self.pebble.output[-3000:])
        after = yield _served(sniPort, "www.example.com")
        self.assertFalse(_selfSigned(after))
        self.assertIn(
            x509.DNSName("www.example.com"),
            after.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
        )
        for name in ("www.example.com.crt", "www.example.com.key", "account.key"):
            mode = os.stat(os.path.join(self.storage, name)).st_mode
            self.assertEqual(stat.S_IMODE(mode), 0o600)
        status = balancer.admin.status()["acme"]["hosts"]["www.example.com"]
        self.assertEqual(status["state"], "valid")
        self.assertIsNone(status["error"])

    @inlineCallbacks
    def test_tlsAlpn01(self):
        """
        With only an sni: listener on the port pebble validates TLS-ALPN-01
        on, the certificate is obtained by TLS-ALPN-01.
        """
        balancer = self.serve(["sni:%d:interface=127.0.0.1" % (self.tlsPort,)])
        self.assertEqual(balancer.config.acme.challenges, ("tls-alpn-01",))
        event = yield self.nextEvent()
        self.assertEqual(event[:2], ("www.example.com", "obtained"), self.pebble.output[-3000:])
        after = yield _served(self.tlsPort, "www.example.com")
        self.assertFalse(_selfSigned(after))

    @inlineCallbacks
    def test_renewalAndFailure(self):
        """
        A certificate due for renewal (renew_before longer than pebble's
        validity) is renewed and the new one served; when pebble then
        refuses (its validation finds no address), the failure is logged
        and shown once with its reason, and the last certificate keeps
        serving.
        """
        balancer = self.serve(
            ["sni:%d:interface=127.0.0.1" % (self.tlsPort,)], "renew_before = 36500d"
        )
        first = yield self.nextEvent()
        self.assertEqual(first[1], "obtained")
        one = yield _served(self.tlsPort, "www.example.com")
        second = yield self.nextEvent()
        self.assertEqual(second[1], "obtained")
        two = yield _served(self.tlsPort, "www.example.com")
        self.assertNotEqual(one.serial_number, two.serial_number)
        self.assertFalse(_selfSigned(two))
        self.dns.refuse = True
        while True:
            event = yield self.nextEvent()
            if event[1] == "failed":
                break
            two = yield _served(self.tlsPort, "www.example.com")
        self.assertTrue(event[2])
        still = yield _served(self.tlsPort, "www.example.com")
        self.assertEqual(still.serial_number, two.serial_number)
        status = balancer.admin.status()["acme"]["hosts"]["www.example.com"]
        self.assertEqual(status["error"], event[2])
        self.assertEqual(status["failures"], 1)
        self.flushLoggedErrors()
