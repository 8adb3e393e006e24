"""
End-to-end test of automatic HTTPS with C{workers = 2}: C{twistd -n
manualb} obtains its certificate from pebble by HTTP-01, whichever worker
pebble's validation connections land on.
"""

from __future__ import annotations

import os
import socket
import ssl

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread

from tests.pebbleserver import LoopbackDNS, Pebble, listenDNS, requirePebble
from tests.redisserver import freePort
from tests.test_workers import WorkersTestCase

NAME = "www.example.com"


def _served(port: int):
    """
    The certificate the C{sni:} listener on C{port} serves for L{NAME}.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=NAME) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


class ACMEWorkersTests(WorkersTestCase):
    timeout = 180

    @inlineCallbacks
    def obtain(self, kind: str):
        """
        Start pebble and two workers whose listeners answer the challenges
        of C{kind} only, and wait for the order's end.

        @return: The port of the C{sni:} listener.
        """
        requirePebble()
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        httpPort, tlsPort = freePort(), freePort()
        dns = LoopbackDNS()
        dnsPort = listenDNS(reactor, dns)
        self.addCleanup(dnsPort.stopListening)
        pebble = Pebble(reactor, workdir, httpPort, tlsPort, dnsPort.getHost().port)
        yield pebble.start()
        self.addCleanup(pebble.stop)
        if kind == "http-01":
            self.listen = (
                "    tcp:%d:interface=127.0.0.1\n    sni:0:interface=127.0.0.1\n" % (httpPort,)
            )
        else:
            self.listen = "    sni:%d:interface=127.0.0.1\n" % (tlsPort,)
        yield self.start(
            ["127.0.0.1:9"],
            extra=(
                "[tls]\ncertificates = %s acme\n"
                "[acme]\naccept_terms = yes\nstorage = %s\ndirectory = %s\n"
                "directory_ca = %s\nhttp_port = %d\ntls_port = %d\n"
                % (
                    NAME, os.path.join(workdir, "storage"), pebble.directory, pebble.ca,
                    httpPort, tlsPort,
                )
            ),
        )
        [sniPort] = yield self.process.waitFor(rb"sni:\d+:\S* listening at 127\.0\.0\.1:(\d+)")
        found = yield self.process.waitFor(
            rb"ACME: (new certificate for|no certificate for)[^\n]*"
        )
        self.assertEqual(found[0], b"new certificate for", self.process.output[-4000:])
        return int(sniPort)

    @inlineCallbacks
    def assertServed(self, port: int):
        """
        The C{sni:} listener on C{port} comes to serve the certificate
        obtained (the worker that did not order loads it from the storage).
        """
        served = yield deferToThread(_served, port)
        while served.issuer == served.subject:
            yield _later(0.2)
            served = yield deferToThread(_served, port)
        self.assertIn(
            x509.DNSName(NAME),
            served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
        )

    @inlineCallbacks
    def test_http01(self):
        """
        With two workers on the plain listener pebble validates HTTP-01 on,
        the order succeeds: the worker that did not order answers the
        token too (pebble validates each token several times, over new
        connections, which the kernel shares between the workers).
        """
        port = yield self.obtain("http-01")
        yield self.assertServed(port)

    @inlineCallbacks
    def test_tlsAlpn01(self):
        """
        The same with TLS-ALPN-01, on the sni: listener of both workers.
        """
        port = yield self.obtain("tls-alpn-01")
        yield self.assertServed(port)


def _later(seconds: float):
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)
