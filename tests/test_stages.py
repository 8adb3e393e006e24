"""
The small stages: forwarding headers and the access log line.
"""

from io import BytesIO

from twisted.trial.unittest import SynchronousTestCase


from manualb.accesslog import AccessLog
from manualb.forwarding import requestHead, responseHeaders
from manualb.view import RequestView


def head(headers, bodyLength=0, method=b"GET", secure=False):
    lines = [(name, value) for name, values in headers for value in values]
    return requestHead(
        method, b"/p?q", lines, b"192.0.2.1", b"HTTP/1.1", secure, bodyLength, b"b:80"
    )


class ForwardingTests(SynchronousTestCase):
    def test_bodyFraming(self):
        """
        A body of known length goes with Content-Length, one of unknown
        length chunked, and a bodiless GET with neither; the client's own
        framing headers are never copied.
        """
        client = [(b"Content-Length", [b"999"]), (b"Transfer-Encoding", [b"chunked"])]
        self.assertIn(b"\r\nContent-Length: 5\r\n", head(client, 5, b"POST"))
        self.assertNotIn(b"999", head(client, 5, b"POST"))
        chunked = head(client, None, b"POST")
        self.assertIn(b"\r\nTransfer-Encoding: chunked\r\n", chunked)
        self.assertNotIn(b"Content-Length", chunked)
        self.assertNotIn(b"Content-Length", head([], 0, b"GET"))
        self.assertIn(b"\r\nContent-Length: 0\r\n", head([], 0, b"POST"))

    def test_expectDropped(self):
        """
        The proxy answered 100-continue itself; the backend is not asked to.
        """
        self.assertNotIn(b"Expect", head([(b"Expect", [b"100-continue"])], 5, b"POST"))

    def test_forwardedProtoHttps(self):
        sent = head([(b"Host", [b"h"]), (b"X-Forwarded-Proto", [b"gopher"])], secure=True)
        self.assertIn(b"\r\nX-Forwarded-Proto: https\r\n", sent)
        self.assertNotIn(b"gopher", sent)

    def test_responseHeaders(self):
        self.assertEqual(
            responseHeaders(
                [(b"Connection", b"close, X-A"), (b"X-A", b"1"), (b"Transfer-Encoding", b"chunked"),
                 (b"Server", b"s"), (b"Set-Cookie", b"a"), (b"Set-Cookie", b"b")]
            ),
            [(b"Set-Cookie", b"a"), (b"Set-Cookie", b"b")],
        )

    def test_responseHeadersHostile(self):
        """
        A backend cannot keep a hop-by-hop header, or one the proxy sends
        itself, by naming it in mixed case, in several Connection headers,
        or with stray spaces; an upgrade keeps only Upgrade and Connection
        of the hop-by-hop headers, never one that Connection names.
        """
        headers = [
            (b"CONNECTION", b" Keep-Alive ,x-Secret"),
            (b"connection", b"X-Other"),
            (b"X-SECRET", b"1"),
            (b"x-other", b"2"),
            (b"keep-alive", b"timeout=5"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"X-Request-Id", b"forged"),
            (b"DATE", b"then"),
            (b"Upgrade", b"websocket"),
            (b"X-Kept", b"3"),
        ]
        self.assertEqual(
            responseHeaders(headers, replaced=frozenset([b"x-request-id"])),
            [(b"X-Kept", b"3")],
        )
        self.assertEqual(
            responseHeaders(headers, upgrade=True),
            [
                (b"CONNECTION", b" Keep-Alive ,x-Secret"),
                (b"connection", b"X-Other"),
                (b"X-Request-Id", b"forged"),
                (b"Upgrade", b"websocket"),
                (b"X-Kept", b"3"),
            ],
        )


class AccessLogTests(SynchronousTestCase):
    def test_hostileValuesEscaped(self):
        """
        Quotes, backslashes, control and non-ASCII bytes are escaped, so a
        request cannot forge a log line.
        """
        output = BytesIO()
        log = AccessLog(output, clock=lambda: 0)
        request = RequestView(
            "127.0.0.1",
            method=b"GET",
            target=b'/\n127.0.0.1 - - "x\\',
            headers=[(b"User-Agent", b"\xff\"")],
        )
        log.record(request, b"HTTP/1.1", 404, 0, [], [])
        line = output.getvalue()
        self.assertEqual(line.count(b"\n"), 1)
        self.assertIn(b'"GET /\\x0A127.0.0.1 - - \\x22x\\x5C HTTP/1.1" 404 0 "-" "\\xFF\\x22" - -\n', line)
