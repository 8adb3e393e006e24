"""
A route's controls: its header rules (C{set_header}, C{hide_header},
C{pass_header}, C{add_header}), its own answer (C{return}),
C{redirect_https = off}, error pages and C{server_tokens}, and gzip.
"""

from __future__ import annotations

import gzip
import os
import zlib

import attrs
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from manualb.compression import acceptsGzip, encoderFor
from manualb.config import ConfigError, GzipConfig
from manualb.configfile import loadConfig, parseConfig
from manualb.headers import HeaderRules
from manualb.service import LoadBalancer
from manualb.stages import requestView
from manualb.testing import (
    MemoryBalancer,
    balancerConfig,
    listenBackend,
    responseBody,
    serverAddress,
)

BACKEND = "10.0.0.1:8001"
HTML = b"<html>" + b"hello world " * 100 + b"</html>"


class Echo(Resource):
    """
    A backend that keeps each request's headers, and answers with an HTML
    page and the headers its C{respond} says.
    """

    isLeaf = True

    def __init__(self, body: bytes = HTML, headers=(), code: int = 200):
        super().__init__()
        self.seen: list[Headers] = []
        self.body = body
        self.headers = list(headers)
        self.code = code

    def render(self, request):
        self.seen.append(request.requestHeaders)
        request.setResponseCode(self.code)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        for name, value in self.headers:
            request.responseHeaders.setRawHeaders(name, [value])
        return self.body


def configText(route: str, main: str = "", extra: str = "") -> str:
    return (
        "[manualb]\naccess_log = off\n" + main + "\n"
        "[upstream pool]\nservers = " + BACKEND + "\n\n"
        "[route default]\npath = /\n" + route + "\n" + extra
    )


def routeWith(route: str, **kwargs) -> str:
    return configText("upstream = pool\n" + route, **kwargs)


class MemoryTests(SynchronousTestCase):
    def balancer(self, text: str, backend: Resource | None = None) -> MemoryBalancer:
        lb = MemoryBalancer(parseConfig(text, "<test>"))
        self.backend = backend if backend is not None else Echo()
        lb.addBackend(BACKEND, self.backend)
        return lb

    def request(self, lb, path=b"/", method=b"GET", headers=None, listener=None):
        response = self.successResultOf(
            lb.agent(listener).request(method, b"http://example.com" + path, Headers(headers or {}))
        )
        return response, self.successResultOf(responseBody(response))


class HeaderTests(MemoryTests):
    def test_setHeader(self):
        """
        C{set_header} sends each header in place of the client's, with its
        variables computed; an empty value removes the header; a new Host
        goes to the backend while X-Forwarded-Host keeps the client's.
        """
        lb = self.balancer(
            routeWith(
                'set_header =\n    X-Real-IP $remote_addr\n    X-Debug ""\n'
                "    Host backend.internal\n    X-Route $route:$arg_a\n"
            )
        )
        self.request(lb, b"/?a=1", headers={b"X-Debug": [b"1"], b"X-Real-IP": [b"6.6.6.6"]})
        [seen] = self.backend.seen
        self.assertEqual(seen.getRawHeaders(b"x-real-ip"), [b"127.0.0.1"])
        self.assertIsNone(seen.getRawHeaders(b"x-debug"))
        self.assertEqual(seen.getRawHeaders(b"host"), [b"backend.internal"])
        self.assertEqual(seen.getRawHeaders(b"x-forwarded-host"), [b"example.com"])
        self.assertEqual(seen.getRawHeaders(b"x-route"), [b"default:1"])

    def test_setForwardedHeader(self):
        """
        A route may set the proxy's own headers too, in place of its
        values.
        """
        lb = self.balancer(routeWith("set_header = X-Forwarded-Proto https\n"))
        self.request(lb)
        [seen] = self.backend.seen
        self.assertEqual(seen.getRawHeaders(b"x-forwarded-proto"), [b"https"])

    def test_headerVariables(self):
        """
        Header values also know nginx's C{$scheme}, C{$request_id} and
        C{$proxy_add_x_forwarded_for}.
        """
        lb = self.balancer(
            routeWith(
                "set_header =\n    X-Forwarded-For $proxy_add_x_forwarded_for\n"
                "    X-Scheme ${scheme}://$host\n    X-Trace id=$request_id\n"
                "add_header = X-Trace $request_id\n"
            )
        )
        response, body = self.request(lb, headers={b"X-Forwarded-For": [b"192.0.2.1"]})
        [seen] = self.backend.seen
        [requestId] = response.headers.getRawHeaders(b"x-request-id")
        self.assertEqual(seen.getRawHeaders(b"x-forwarded-for"), [b"192.0.2.1, 127.0.0.1"])
        self.assertEqual(seen.getRawHeaders(b"x-scheme"), [b"http://example.com"])
        self.assertEqual(seen.getRawHeaders(b"x-trace"), [b"id=" + requestId])
        self.assertEqual(response.headers.getRawHeaders(b"x-trace"), [requestId])

    def test_hostNotValid(self):
        """
        A Host whose variables give no host leaves the client's.
        """
        lb = self.balancer(routeWith("set_header = Host $http_x_host\n"))
        self.request(lb, headers={b"X-Host": [b"a b"]})
        self.request(lb, headers={b"X-Host": [b"good.example"]})
        self.assertEqual(
            [seen.getRawHeaders(b"host") for seen in self.backend.seen],
            [[b"example.com"], [b"good.example"]],
        )

    def test_hideAndPassHeader(self):
        """
        C{hide_header} removes the backend's headers; C{pass_header} passes
        its C{Server} in place of the proxy's; the proxy's own headers stay.
        """
        backend = Echo(headers=[(b"X-Powered-By", b"php"), (b"Server", b"apache")])
        lb = self.balancer(
            routeWith("hide_header = X-Powered-By X-Request-Id\npass_header = Server\n"), backend
        )
        response, body = self.request(lb)
        self.assertIsNone(response.headers.getRawHeaders(b"x-powered-by"))
        self.assertEqual(response.headers.getRawHeaders(b"server"), [b"apache"])
        self.assertEqual(len(response.headers.getRawHeaders(b"x-request-id")), 1)

    def test_addHeader(self):
        """
        C{add_header} adds to 2xx and 3xx responses, to others only with
        C{always}, and to the proxy's own answers with C{always}.
        """
        text = routeWith("add_header =\n    X-Frame-Options DENY always\n    X-Ok yes $host\n")
        lb = self.balancer(text)
        response, body = self.request(lb)
        self.assertEqual(response.headers.getRawHeaders(b"x-frame-options"), [b"DENY"])
        self.assertEqual(response.headers.getRawHeaders(b"x-ok"), [b"yes example.com"])
        self.backend.code = 404
        response, body = self.request(lb)
        self.assertEqual(response.headers.getRawHeaders(b"x-frame-options"), [b"DENY"])
        self.assertIsNone(response.headers.getRawHeaders(b"x-ok"))
        response, body = self.request(lb, method=b"TRACE")
        self.assertEqual(response.code, 405)

    def test_addHeaderOnLocalAnswer(self):
        lb = self.balancer(configText("return = 503\nadd_header = Retry-After 30 always\n"))
        response, body = self.request(lb)
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"30"])

    def test_hostileValue(self):
        """
        A value whose variables give a control character is not sent.
        """
        rules = HeaderRules(
            [("X-Agent", "$http_user_agent")], (), (), [("X-A", "$http_user_agent", True)]
        )
        view = requestView(
            "127.0.0.1", False, b"GET", b"/", [(b"Host", b"a"), (b"User-Agent", b"a\r\nX-Evil: 1")]
        )
        head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Agent: old\r\n\r\n"
        self.assertEqual(rules.requestHead(head, view, None), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(rules.addedHeaders(200, view, None), [])
        self.flushLoggedErrors()

    def test_untouchedWithoutRules(self):
        """
        A route without controls has none compiled.
        """
        lb = self.balancer(routeWith(""))
        [route] = lb.balancer.site.resource.urlMap.routes
        self.assertIsNone(route.controls)


class ReturnTests(MemoryTests):
    def test_text(self):
        lb = self.balancer(configText("return = 200 ok $host\n"))
        response, body = self.request(lb, b"/healthz")
        self.assertEqual((response.code, body), (200, b"ok example.com"))
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"]
        )
        self.assertEqual(self.backend.seen, [])

    def test_redirect(self):
        lb = self.balancer(configText("return = 301 https://$host$request_uri\n"))
        response, body = self.request(lb, b"/a?b=c")
        self.assertEqual(response.code, 301)
        self.assertEqual(
            response.headers.getRawHeaders(b"location"), [b"https://example.com/a?b=c"]
        )

    def test_redirectHTTPSOff(self):
        """
        A route with C{redirect_https = off} is served on a listener that
        redirects the others to https.
        """
        text = (
            "[manualb]\naccess_log = off\nlisten = tcp:8080\nredirect_https = on\n\n"
            "[upstream pool]\nservers = " + BACKEND + "\n\n"
            "[route default]\npath = /\nupstream = pool\n\n"
            "[route acme]\npath = ^~ /.well-known/acme-challenge/\nupstream = pool\n"
            "redirect_https = off\n"
        )
        lb = self.balancer(text)
        response, body = self.request(lb, b"/.well-known/acme-challenge/token")
        self.assertEqual((response.code, body), (200, HTML))
        response, body = self.request(lb, b"/login")
        self.assertEqual(response.code, 301)
        response, body = self.request(lb, b"/.well-known/acme-challenge/x", method=b"TRACE")
        self.assertEqual(response.code, 405)


class PageFiles(MemoryTests):
    """
    Page files in a directory, and configurations there.
    """

    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        for name, text in [("404.html", b"<p>lost</p>"), ("503.html", b"<p>later</p>")]:
            with open(os.path.join(self.directory, name), "wb") as f:
                f.write(text)

    def load(self, text: str):
        path = os.path.join(self.directory, "lb.ini")
        with open(path, "w") as f:
            f.write(text)
        return loadConfig(path)


class PageTests(PageFiles):
    def test_pages(self):
        """
        The route's page comes first, then [manualb]'s; C{server_tokens =
        off} leaves the version out of C{Server}.
        """
        config = self.load(
            configText(
                "return = 503\nerror_page = 503 503.html\n",
                main="server_tokens = off\nerror_page = 404 503 404.html\n",
                extra="[route other]\npath = /other\nupstream = pool\n",
            )
        )
        lb = MemoryBalancer(config)
        response, body = self.request(lb)
        self.assertEqual((response.code, body), (503, b"<p>later</p>"))
        self.assertEqual(response.headers.getRawHeaders(b"server"), [b"manualb"])
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"]
        )
        lb.addBackend(BACKEND, Echo())
        response, body = self.request(lb, b"/other")
        self.assertEqual(response.headers.getRawHeaders(b"server"), [b"manualb"])

    def test_listenerPage(self):
        config = self.load(
            "[manualb]\naccess_log = off\n\n[listener web]\nlisten = tcp:8080\n"
            "error_page = 404 404.html\n\n[upstream pool]\nservers = " + BACKEND + "\n\n"
            "[route default]\npath = /app\nupstream = pool\n"
        )
        lb = MemoryBalancer(config)
        response, body = self.request(lb, b"/nothing", listener="web")
        self.assertEqual((response.code, body), (404, b"<p>lost</p>"))

    def test_missingFile(self):
        """
        A page file that cannot be read is a configuration error naming the
        file and the line.
        """
        error = self.assertRaises(
            ConfigError,
            self.load,
            configText("upstream = pool\nerror_page =\n    404 404.html\n    502 gone.html\n"),
        )
        self.assertIn(
            ", line 12: [route default] error_page: '502 gone.html': cannot read ", str(error)
        )
        self.assertIn("gone.html: No such file or directory", str(error))
        self.assertNotIn("\n", str(error))


class ConfigErrorTests(SynchronousTestCase):
    """
    C{check} refuses each misuse with one line naming the file, the line and
    the key.
    """

    def assertRefused(self, route: str, expected: str, main: str = "") -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "lb.ini")
        with open(path, "w") as f:
            f.write(configText(route, main=main))
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertIn(expected, str(error))
        self.assertIn(", line ", str(error))
        self.assertNotIn("\n", str(error))

    def test_misuses(self):
        for route, expected in [
            ("upstream = pool\nset_header = X:Bad 1\n", "set_header: 'X:Bad' is not a header name"),
            (
                "upstream = pool\nset_header = Content-Length 5\n",
                "manualb writes this header itself",
            ),
            ('upstream = pool\nset_header = Host ""\n', "the backend needs a Host"),
            ("upstream = pool\nset_header = X-A $nope\n", "unknown variable $nope"),
            ("upstream = pool\nset_header =\n    X-A 1\n    x-a 2\n", "x-a is set twice"),
            ("upstream = pool\nadd_header = X-A\n", "expected NAME VALUE [always]"),
            (
                "upstream = pool\nadd_header = Transfer-Encoding chunked\n",
                "manualb writes this header itself",
            ),
            ("upstream = pool\npass_header = X-Powered-By\n", "is passed on already"),
            ("upstream = pool\nreturn = 200 ok\n", "remove one of them"),
            ("return = 301\n", "needs the URL to redirect to"),
            ("return = 99 x\n", "not a status code from 200 to 599"),
            ("", "upstream: missing required key"),
            ("upstream = pool\nredirect_https = maybe\n", "redirect_https:"),
            ("upstream = pool\nerror_page = 200 x.html\n", "cannot read"),
            ("upstream = pool\ngzip_types = text/css\n", "has no use without gzip = on"),
            ("upstream = pool\ngzip = on\ngzip_types = css\n", "is not a media type"),
            ("upstream = pool\ngzip = on\ngzip_min_length = lots\n", "gzip_min_length"),
            ("upstream = pool\ngzip = maybe\n", "[route default] gzip:"),
            ("upstream = pool\nset_header = Host a/b\n", "'a/b' is not a host"),
            ("return = 204 done\n", "a 204 has no body"),
        ]:
            self.assertRefused(route, expected)
        self.assertRefused("upstream = pool\n", "server_tokens", main="server_tokens = hidden\n")


class CheckCommandTests(SynchronousTestCase):
    def test_check(self):
        """
        C{python -m manualb check} refuses a misuse with one line naming the
        file, the line and the key.
        """
        import sys
        from io import StringIO

        from manualb.__main__ import main

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "lb.ini")
        with open(path, "w") as f:
            f.write(
                "[manualb]\nlisten = tcp:0\n\n"
                + configText("upstream = pool\nadd_header = X-A\n")[len("[manualb]\n") :]
            )
        out, err = StringIO(), StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.assertEqual(main(["check", path]), 1)
        self.assertEqual(
            err.getvalue().splitlines()[0],
            f"manualb: {path}, line 12: [route default] add_header: 'X-A': expected NAME VALUE [always]",
        )


class ReloadTests(PageFiles):
    def test_reload(self):
        """
        A reload reads the page files again, and takes server_tokens and
        a listener's pages away as it gives them.
        """
        text = configText(
            "upstream = pool\n", main="server_tokens = off\nerror_page = 404 404.html\n"
        )
        lb = MemoryBalancer(self.load(text + "[route x]\npath = /x\nreturn = 404\n"))
        response, body = self.request(lb, b"/x")
        self.assertEqual(body, b"<p>lost</p>")
        self.assertEqual(response.headers.getRawHeaders(b"server"), [b"manualb"])
        with open(os.path.join(self.directory, "404.html"), "wb") as f:
            f.write(b"<p>still lost</p>")
        lb.balancer.reload(self.load(text + "[route x]\npath = /x\nreturn = 404\n"))
        response, body = self.request(lb, b"/x")
        self.assertEqual(body, b"<p>still lost</p>")
        lb.balancer.reload(
            self.load(configText("upstream = pool\n") + "[route x]\npath = /x\nreturn = 404\n")
        )
        response, body = self.request(lb, b"/x")
        self.assertIn(b"404 Not Found", body)
        self.assertTrue(response.headers.getRawHeaders(b"server")[0].startswith(b"manualb/"))


class GzipTests(MemoryTests):
    def test_compressed(self):
        """
        A client that accepts gzip gets the response compressed, streamed
        (no Content-Length), with Vary; one that does not gets it as is,
        with Vary too.
        """
        lb = self.balancer(routeWith("gzip = on\n"))
        response, body = self.request(lb, headers={b"Accept-Encoding": [b"gzip, br"]})
        self.assertEqual(response.headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertEqual(response.headers.getRawHeaders(b"vary"), [b"Accept-Encoding"])
        self.assertIsNone(response.headers.getRawHeaders(b"content-length"))
        self.assertEqual(gzip.decompress(body), HTML)
        self.assertLess(len(body), len(HTML))
        response, body = self.request(lb)
        self.assertIsNone(response.headers.getRawHeaders(b"content-encoding"))
        self.assertEqual(response.headers.getRawHeaders(b"vary"), [b"Accept-Encoding"])
        self.assertEqual(body, HTML)

    def test_notCompressed(self):
        """
        A HEAD, a response already encoded, one too short, or of a type not
        listed, goes as it is.
        """
        lb = self.balancer(routeWith("gzip = on\ngzip_min_length = 2000\n"))
        accept = {b"Accept-Encoding": [b"gzip"]}
        response, body = self.request(lb, headers=accept)
        self.assertIsNone(response.headers.getRawHeaders(b"content-encoding"))
        response, body = self.request(lb, headers=accept, method=b"HEAD")
        self.assertIsNone(response.headers.getRawHeaders(b"content-encoding"))
        outgoing = [(b"Content-Type", b"text/html"), (b"Content-Encoding", b"br")]
        self.assertIsNone(encoderFor(GzipConfig(), b"GET", 200, [b"gzip"], outgoing))
        outgoing = [(b"Content-Type", b"text/css")]
        self.assertIsNone(encoderFor(GzipConfig(), b"GET", 200, [b"gzip"], outgoing))
        self.assertIsNone(
            encoderFor(GzipConfig(), b"GET", 304, [b"gzip"], [(b"Content-Type", b"text/html")])
        )
        self.assertIsNotNone(encoderFor(GzipConfig(("*",)), b"GET", 200, [b"gzip"], outgoing))

    def test_accepts(self):
        self.assertTrue(acceptsGzip([b"deflate, gzip;q=0.5"]))
        self.assertFalse(acceptsGzip([b"gzip;q=0"]))
        self.assertFalse(acceptsGzip([b"*;q=0.1, gzip;q=0"]))
        self.assertTrue(acceptsGzip([b"*"]))
        self.assertFalse(acceptsGzip([b"br", b"identity"]))
        self.assertFalse(acceptsGzip([]))

    def test_streamed(self):
        """
        Each piece comes out whole at once (flushed), and the stream ends a
        valid gzip member; a strong ETag becomes weak.
        """
        outgoing = [(b"Content-Type", b"text/html"), (b"Content-Length", b"300"), (b"ETag", b'"x"')]
        encoder = encoderFor(GzipConfig(), b"GET", 200, [b"gzip"], outgoing)
        self.assertIn((b"ETag", b'W/"x"'), outgoing)
        self.assertNotIn(b"Content-Length", [name for name, value in outgoing])
        decoder = zlib.decompressobj(31)
        self.assertEqual(decoder.decompress(encoder.compress(b"a" * 100)), b"a" * 100)
        self.assertEqual(encoder.compress(b""), b"")
        self.assertEqual(
            decoder.decompress(encoder.compress(b"b" * 200) + encoder.finish()), b"b" * 200
        )
        self.assertTrue(decoder.eof)


class RealSocketTests(TestCase):
    @inlineCallbacks
    def test_controlsOverTCP(self):
        """
        Over real sockets: gzip, add_header, set_header, and a route's own
        answer.
        """
        backend = Echo()
        port = yield listenBackend(reactor, backend)
        self.addCleanup(port.stopListening)
        config = balancerConfig([serverAddress(port)])
        route = attrs.evolve(
            config.routes[0],
            gzip=GzipConfig(),
            add_header=(("X-Frame-Options", "DENY", False),),
            set_header=(("X-Real-IP", "$remote_addr"),),
        )
        health = attrs.evolve(
            config.routes[0], name="health", path="/healthz", upstream=None, answer=(200, "ok")
        )
        config = attrs.evolve(config, routes=(route, health))
        balancer = LoadBalancer(config, reactor)
        self.addCleanup(balancer.close)
        listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            balancer.site
        )
        self.addCleanup(listening.stopListening)
        url = b"http://127.0.0.1:%d" % (listening.getHost().port,)
        agent = Agent(reactor)
        response = yield agent.request(b"GET", url + b"/", Headers({b"Accept-Encoding": [b"gzip"]}))
        body = yield readBody(response)
        self.assertEqual(gzip.decompress(body), HTML)
        self.assertEqual(response.headers.getRawHeaders(b"x-frame-options"), [b"DENY"])
        self.assertEqual(backend.seen[0].getRawHeaders(b"x-real-ip"), [b"127.0.0.1"])
        response = yield agent.request(b"GET", url + b"/healthz")
        body = yield readBody(response)
        self.assertEqual((response.code, body), (200, b"ok"))
        self.assertEqual(len(backend.seen), 1)

    @inlineCallbacks
    def test_serverTokensOnRefusals(self):
        """
        With C{server_tokens = off}, the answers the front end makes itself
        (a request it cannot read, a connection over C{max_connections})
        say C{Server: manualb} without the version too, on either front
        end.
        """
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.protocol import Protocol
        from twisted.internet.defer import Deferred

        from manualb.front import serving

        class Collect(Protocol):
            def __init__(self):
                self.data = b""
                self.done = Deferred()

            def connectionMade(self):
                self.transport.write(b"GET / HTTP/1.1\r\n\r\n")

            def dataReceived(self, data):
                self.data += data

            def connectionLost(self, reason=None):
                self.done.callback(self.data)

        config = attrs.evolve(balancerConfig(["127.0.0.1:1"]), server_tokens=False)
        balancer = LoadBalancer(config, reactor)
        self.addCleanup(balancer.close)
        most = balancer.connections.limit
        for frontEnd in ("lean", "twisted"):
            listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
                serving(balancer.site, frontEnd)
            )
            self.addCleanup(listening.stopListening)
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", listening.getHost().port)
            client = yield connectProtocol(endpoint, Collect())
            answer = yield client.done
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), (frontEnd, answer))
            self.assertIn(b"\r\nServer: manualb\r\n", answer, frontEnd)
            balancer.connections.limit = 0
            client = yield connectProtocol(endpoint, Collect())
            answer = yield client.done
            balancer.connections.limit = most
            self.assertTrue(answer.startswith(b"HTTP/1.1 503 "), (frontEnd, answer))
            self.assertIn(b"\r\nServer: manualb\r\n", answer, frontEnd)
