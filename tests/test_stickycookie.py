"""
The options of C{balance = cookie NAME ...} (C{secure}, C{samesite=},
C{max_age=}, C{domain=}, C{path=}, C{httponly}) and a server's C{route=}
value, from the configuration file to the C{Set-Cookie} a client gets.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from manualb.balancers import Cookie, serverID
from manualb.config import ConfigError, ServerAddress, ServerConfig
from manualb.configfile import parseConfig
from manualb.selection import Server
from manualb.service import LoadBalancer
from manualb.stickycookie import parseCookieArgument
from manualb.testing import NamedBackend, listenBackend, serverAddress
from manualb.view import RequestView

from .test_balancers import FakeHealth, request

MAIN = "[manualb]\nlisten = tcp:0:interface=127.0.0.1\naccess_log = off\n\n"
ROUTE = "\n[route default]\npath = /\nupstream = app\n"


def routed(host: str, route: str | None) -> Server:
    return Server(ServerConfig(ServerAddress(host, 80), route=route), FakeHealth(), None)


class OptionTests(SynchronousTestCase):
    def attributes(self, argument: str | None) -> str:
        return parseCookieArgument(argument).attributes

    def test_default(self) -> None:
        """
        Without options the cookie is what it always was.
        """
        settings = parseCookieArgument(None)
        self.assertEqual((settings.name, settings.attributes), ("manualb_server", "; Path=/; HttpOnly"))
        self.assertEqual(self.attributes("srv httponly"), "; Path=/; HttpOnly")

    def test_everyOption(self) -> None:
        settings = parseCookieArgument(
            "srv secure samesite=none max_age=1d domain=.Example.com path=/app httponly"
        )
        self.assertEqual(settings.name, "srv")
        self.assertEqual(
            settings.attributes,
            "; Path=/app; Domain=example.com; Max-Age=86400; Secure; HttpOnly; SameSite=None",
        )

    def test_optionsWithoutName(self) -> None:
        settings = parseCookieArgument("secure samesite=Lax")
        self.assertEqual(settings.name, "manualb_server")
        self.assertEqual(settings.attributes, "; Path=/; Secure; HttpOnly; SameSite=Lax")

    def test_refused(self) -> None:
        for argument, message in [
            ("srv samsite=Lax", "did you mean 'samesite'?"),
            ("srv secur", "did you mean 'secure'?"),
            ("srv secure=on", "secure takes no value"),
            ("srv samesite", "write samesite=VALUE"),
            ("srv samesite=Loose", "samesite='Loose': expected Strict, Lax or None"),
            ("srv samesite=None", "samesite=None needs secure"),
            ("srv max_age=soon", "max_age='soon'"),
            ("srv domain=a..b", "domain='a..b'"),
            ("srv path=app", "path='app': expected a path starting with /"),
            ("srv secure secure", "cookie option secure given twice"),
            ("bad;name", "not a valid cookie name"),
        ]:
            error = self.assertRaises(ValueError, parseCookieArgument, argument)
            self.assertIn(message, str(error), argument)

    def test_setCookie(self) -> None:
        """
        The balancer sets the cookie with its attributes.
        """
        balancer = Cookie("srv secure samesite=Strict")
        a = routed("10.0.0.1", None)
        self.assertEqual(
            list(balancer.affinityHeaders(a, request())),
            [(b"Set-Cookie", b"srv=" + serverID(a) + b"; Path=/; Secure; HttpOnly; SameSite=Strict")],
        )

    def test_route(self) -> None:
        """
        A server's C{route=} is its cookie value, and a request carrying it
        goes back to that server.
        """
        balancer = Cookie("srv")
        a, b = routed("10.0.0.1", "s1"), routed("10.0.0.2", "s2")
        self.assertEqual(serverID(b), b"s2")
        req: RequestView = request(cookies={b"srv": b"s2"})
        for _ in range(3):
            self.assertIs(balancer.pick([a, b], req), b)
        self.assertEqual(list(balancer.affinityHeaders(b, req)), [])
        self.assertEqual(
            list(balancer.affinityHeaders(a, req)),
            [(b"Set-Cookie", b"srv=s1; Path=/; HttpOnly")],
        )


class ConfigTests(SynchronousTestCase):
    def assertError(self, text: str, message: str) -> None:
        error = self.assertRaises(ConfigError, parseConfig, text, "lb.ini")
        self.assertEqual(str(error), message)

    def test_options(self) -> None:
        config = parseConfig(
            MAIN + "[upstream app]\nservers =\n    127.0.0.1:9 route=a\n    127.0.0.1:10 route=b\n"
            "balance = cookie srv secure samesite=Lax\n" + ROUTE
        )
        upstream = config.upstreams["app"]
        self.assertEqual([server.route for server in upstream.servers], ["a", "b"])
        self.assertEqual(upstream.balance_argument, "srv secure samesite=Lax")

    def test_unknownOption(self) -> None:
        self.assertError(
            MAIN + "[upstream app]\nservers = 127.0.0.1:9\nbalance = cookie srv samsite=Lax\n" + ROUTE,
            "lb.ini: [upstream app] balance: cannot use 'cookie srv samsite=Lax': "
            "unknown cookie option 'samsite=Lax' (known: secure, httponly, "
            "samesite=Strict|Lax|None, max_age=DURATION, domain=NAME, path=/PATH); "
            "did you mean 'samesite'?",
        )

    def test_sameSiteNoneNeedsSecure(self) -> None:
        self.assertError(
            MAIN + "[upstream app]\nservers = 127.0.0.1:9\nbalance = cookie srv samesite=None\n" + ROUTE,
            "lb.ini: [upstream app] balance: cannot use 'cookie srv samesite=None': "
            "samesite=None needs secure: browsers drop a SameSite=None cookie that is not Secure",
        )

    def test_routeWithoutCookie(self) -> None:
        self.assertError(
            MAIN + "[upstream app]\nservers = 127.0.0.1:9 route=s1\n" + ROUTE,
            "lb.ini: [upstream app] servers: route=s1 is the value of the sticky "
            "cookie, which only balance = cookie sets, in '127.0.0.1:9 route=s1'",
        )

    def test_routeTwice(self) -> None:
        self.assertError(
            MAIN + "[upstream app]\nservers =\n    127.0.0.1:9 route=s\n    127.0.0.1:10 route=s\n"
            "balance = cookie\n" + ROUTE,
            "lb.ini: [upstream app] servers: route=s given to two servers, in "
            "'127.0.0.1:10 route=s'",
        )

    def test_routeNotACookieValue(self) -> None:
        self.assertError(
            MAIN + "[upstream app]\nservers = 127.0.0.1:9 route=a;b\nbalance = cookie\n" + ROUTE,
            "lb.ini: [upstream app] servers: route='a;b' cannot be a cookie value "
            "(printable ASCII without spaces, quotes, commas, semicolons or backslashes), "
            "in '127.0.0.1:9 route=a;b'",
        )

    def test_misspeltRoute(self) -> None:
        error = self.assertRaises(
            ConfigError,
            parseConfig,
            MAIN + "[upstream app]\nservers = 127.0.0.1:9 rout=s1\nbalance = cookie\n" + ROUTE,
            "lb.ini",
        )
        self.assertIn("did you mean 'route", str(error))


class EndToEndTests(TestCase):
    @inlineCallbacks
    def test_stickyOverSockets(self):
        """
        Over real sockets: the first response sets the cookie with its
        options and the server's C{route=}; requests carrying it go to that
        server.
        """
        ports = []
        for name in ("A", "B"):
            port = yield listenBackend(reactor, NamedBackend(name))
            self.addCleanup(port.stopListening)
            ports.append(port)
        config = parseConfig(
            MAIN + "[upstream app]\nservers =\n"
            f"    {serverAddress(ports[0])} route=alpha\n"
            f"    {serverAddress(ports[1])} route=beta\n"
            "balance = cookie srv secure samesite=Lax max_age=1h\n" + ROUTE
        )
        balancer = LoadBalancer(config, reactor)
        self.addCleanup(balancer.close)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(balancer.site)
        self.addCleanup(port.stopListening)
        url = b"http://127.0.0.1:%d/" % (port.getHost().port,)
        agent = Agent(reactor)
        response = yield agent.request(b"GET", url)
        body = yield readBody(response)
        value = {b"A\n": b"alpha", b"B\n": b"beta"}[body]
        self.assertEqual(
            response.headers.getRawHeaders(b"set-cookie"),
            [b"srv=" + value + b"; Path=/; Max-Age=3600; Secure; HttpOnly; SameSite=Lax"],
        )
        for _ in range(3):
            response = yield agent.request(b"GET", url, Headers({b"cookie": [b"srv=" + value]}))
            self.assertEqual((yield readBody(response)), body)
            self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))
