"""
HSTS per listener, per certificate (the host it is chosen for) and per
route, over TLS only.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody

from manualb.config import ConfigError
from manualb.configfile import loadConfig, parseConfig
from manualb.hsts import HostStrictTransport, listenerHSTS
from manualb.service import LoadBalancer
from manualb.testing import MemoryBalancer, NamedBackend, listenBackend, responseBody, serverAddress
from manualb.tlstesting import makeCA, writeCA, writeTLSFiles

from .test_edge import httpsGet

HSTS = b"strict-transport-security"


class Files:
    def __init__(self, case: SynchronousTestCase) -> None:
        self.directory = os.path.abspath(case.mktemp())
        os.makedirs(self.directory)
        self.ca = makeCA("manualb hsts test CA")
        self.caPath = writeCA(self.directory, self.ca)
        self.www = writeTLSFiles(self.directory, self.ca, ["www.example.com"])
        self.api = writeTLSFiles(self.directory, self.ca, ["*.api.example.com"])

    def config(self, server: str = "10.0.0.1:80", side: str = "max-age=60") -> str:
        return f"""\
[manualb]
listen =
    tcp:0:interface=127.0.0.1
    sni:0:interface=127.0.0.1
access_log = off

[listener side]
listen =
    sni:0:interface=127.0.0.1
    tcp:0:interface=127.0.0.1
hsts = {side}

[tls]
certificates =
    www.example.com   {self.www[0]} {self.www[1]}
    *.api.example.com {self.api[0]} {self.api[1]} hsts=max-age=120;includeSubDomains
hsts = max-age=31536000

[upstream app]
servers = {server}

[route special]
host = www.example.com
path = /special
upstream = app
hsts = off

[route long]
host = www.example.com
path = /long
upstream = app
hsts = max-age=999; preload

[route default]
path = /
upstream = app
"""

    def parse(self, text: str):
        return parseConfig(text, os.path.join(self.directory, "lb.ini"))


class ConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.files = Files(self)

    def assertError(self, text: str, start: str) -> None:
        error = self.assertRaises(ConfigError, self.files.parse, text)
        message = str(error).split(": ", 1)[1]
        self.assertTrue(message.startswith(start), message)

    def test_read(self) -> None:
        config = self.files.parse(self.files.config())
        listeners = {listener.name: listener for listener in config.listeners}
        self.assertIsNone(listeners["default"].hsts)
        self.assertEqual(listeners["side"].hsts, "max-age=60")
        self.assertEqual(
            [certificate.hsts for certificate in config.tls.certificates],
            [None, "max-age=120;includeSubDomains"],
        )
        self.assertEqual([route.hsts for route in config.routes], ["off", "max-age=999; preload", None])
        self.assertEqual(listenerHSTS(config, "side"), b"max-age=60")
        self.assertEqual(listenerHSTS(config, "default"), b"max-age=31536000")

    def test_listenerOff(self) -> None:
        config = self.files.parse(self.files.config(side="off"))
        self.assertIsNone(listenerHSTS(config, "side"))

    def test_refused(self) -> None:
        text = self.files.config()
        for old, new, start in [
            ("hsts = max-age=60", "hsts = max-age=soon", "[listener side] hsts: must start with max-age="),
            ("hsts = off", "hsts = max-age=5; includeSubDomain",
             "[route special] hsts: unknown directive 'includeSubDomain'"),
            ("hsts=max-age=120;includeSubDomains", "hsts=max-age=1;preload;preload",
             "[tls] certificates: preload given twice"),
            ("hsts=max-age=120;includeSubDomains", "hst=max-age=1",
             "[tls] certificates: expected NAME CERTFILE KEYFILE"),
        ]:
            self.assertIn(old, text)
            self.assertError(text.replace(old, new, 1), start)

    def test_listenerWithoutTLS(self) -> None:
        text = self.files.config().replace(
            "    sni:0:interface=127.0.0.1\n    tcp:0:interface=127.0.0.1\nhsts",
            "    tcp:0:interface=127.0.0.1\nhsts",
        )
        self.assertError(text, "[listener side] hsts: this listener has no TLS endpoint")

    def test_check(self) -> None:
        """
        The error names the file and the line.
        """
        path = os.path.join(self.files.directory, "lb.ini")
        with open(path, "w") as f:
            f.write(self.files.config().replace("hsts = off", "hsts = max-age"))
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(error.line, 26)
        self.assertTrue(str(error).startswith(f"{path}, line 26: [route special] hsts: "), str(error))


class MemoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.files = Files(self)
        self.lb = MemoryBalancer(self.files.parse(self.files.config()))
        self.lb.addBackend("10.0.0.1:80", NamedBackend("app"))

    def hsts(self, url: bytes, listener: str | None = None) -> list[bytes] | None:
        d = self.lb.agent(listener).request(b"GET", url)
        self.lb.flush()
        response = self.successResultOf(d)
        self.successResultOf(responseBody(response))
        return response.headers.getRawHeaders(HSTS)

    def test_mostSpecificWins(self) -> None:
        """
        The route's, else the certificate's, else the listener's, else
        C{[tls]}'s.
        """
        self.assertEqual(self.hsts(b"https://www.example.com/"), [b"max-age=31536000"])
        self.assertEqual(self.hsts(b"https://a.api.example.com/"), [b"max-age=120;includeSubDomains"])
        self.assertIsNone(self.hsts(b"https://www.example.com/special"))
        self.assertEqual(self.hsts(b"https://www.example.com/long"), [b"max-age=999; preload"])
        self.assertEqual(self.hsts(b"https://www.example.com/", "side"), [b"max-age=60"])
        self.assertEqual(
            self.hsts(b"https://b.a.api.example.com/", "side"), [b"max-age=120;includeSubDomains"]
        )
        self.assertIsNone(self.hsts(b"https://www.example.com/special", "side"))

    def test_neverPlain(self) -> None:
        for url in (b"http://www.example.com/", b"http://www.example.com/long", b"http://a.api.example.com/"):
            self.assertIsNone(self.hsts(url))
            self.assertIsNone(self.hsts(url, "side"))

    def test_noStageWithoutValues(self) -> None:
        """
        A configuration without certificate or route HSTS has no stage for
        them: it costs nothing.
        """
        text = self.files.config().replace(" hsts=max-age=120;includeSubDomains", "")
        text = text.replace("hsts = off\n", "").replace("hsts = max-age=999; preload\n", "")
        lb = MemoryBalancer(self.files.parse(text))
        stages = lb.balancer.resource.stages
        self.assertFalse([stage for stage in stages if isinstance(stage, HostStrictTransport)])
        self.assertTrue(
            [s for s in self.lb.balancer.resource.stages if isinstance(s, HostStrictTransport)]
        )

    def test_reload(self) -> None:
        """
        A reload gives the listener its new value, and takes the stage away
        with the last route or certificate value.
        """
        text = self.files.config(side="max-age=7")
        text = text.replace(" hsts=max-age=120;includeSubDomains", "")
        text = text.replace("hsts = off\n", "").replace("hsts = max-age=999; preload\n", "")
        self.lb.balancer.reload(self.files.parse(text))
        self.assertEqual(self.hsts(b"https://a.api.example.com/", "side"), [b"max-age=7"])
        self.assertEqual(self.hsts(b"https://www.example.com/special"), [b"max-age=31536000"])
        for site in [self.lb.balancer.site, *self.lb.balancer.sites.values()]:
            self.assertFalse(
                [s for s in site.resource.stages if isinstance(s, HostStrictTransport)]
            )


class EndToEndTests(TestCase):
    @inlineCallbacks
    def test_overTLS(self):
        """
        Over real TLS connections, the listener's and the certificate's
        values are sent; over plain HTTP none.
        """
        files = Files(self)
        backend = yield listenBackend(reactor, NamedBackend("app"))
        self.addCleanup(backend.stopListening)
        config = files.parse(files.config(serverAddress(backend)))
        balancer = LoadBalancer(config, reactor)
        balancer.start()
        self.addCleanup(balancer.close)
        [side] = [listener for listener in config.listeners if listener.name == "side"]
        ports = {}
        for description in side.listen:
            port = yield balancer.endpoint(description).listen(balancer.factoryFor(side, description))
            self.addCleanup(port.stopListening)
            ports[description.split(":")[0]] = port.getHost().port
        name, response, _ = yield deferToThread(httpsGet, ports["sni"], "www.example.com", files.caPath)
        self.assertIn(b"\r\nStrict-Transport-Security: max-age=60\r\n", response)
        name, response, _ = yield deferToThread(httpsGet, ports["sni"], "x.api.example.com", files.caPath)
        self.assertEqual(name, "*.api.example.com")
        self.assertIn(b"\r\nStrict-Transport-Security: max-age=120;includeSubDomains\r\n", response)
        response = yield Agent(reactor).request(b"GET", b"http://127.0.0.1:%d/" % (ports["tcp"],))
        self.assertEqual((yield readBody(response)), b"app\n")
        self.assertIsNone(response.headers.getRawHeaders(HSTS))
