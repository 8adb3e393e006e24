"""
The checks every front end makes of a request head (L{manualb.rules}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from manualb import rules
from manualb.config import GatekeeperConfig
from manualb.rules import requestProblem, validHost


def problem(method: bytes = b"GET", host: bytes = b"example.com") -> tuple | None:
    return requestProblem(
        method, b"/", b"HTTP/1.1", Headers({b"host": [host]}), GatekeeperConfig()
    )


class RequestProblemTests(SynchronousTestCase):
    def test_methods(self) -> None:
        """
        The common methods pass without a pattern match; any other is
        matched as nginx's parser would take it: upper-case letters, digits,
        C{_} and C{-}.
        """
        for method in [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH",
                       b"PROPFIND", b"M-SEARCH", b"X_1"]:
            self.assertIsNone(problem(method), method)
        for method in [b"get", b"Get", b"GET ", b"G\x00T", b"G\xc3\x89T", b"G/T"]:
            self.assertEqual(problem(method)[0], 400, method)

    def test_hosts(self) -> None:
        """
        A valid C{Host} passes, the first time and again; an invalid one is
        refused each time.
        """
        for _ in range(2):
            for host in [b"example.com", b"example.com:8080", b"[::1]:80", b"a-b.c_d"]:
                self.assertIsNone(problem(host=host), host)
            for host in [b"a b", b"a/b", b"a\tb", b"[::1", b"a@b", b"a:b:c"]:
                self.assertEqual(problem(host=host), (400, b"Bad Request",
                                                      b"The Host header is not valid."), host)


class ValidHostTests(SynchronousTestCase):
    def setUp(self) -> None:
        rules._validHosts.clear()
        self.addCleanup(rules._validHosts.clear)

    def test_bounded(self) -> None:
        """
        The valid hosts kept never number more than the limit, however many
        different ones come.
        """
        for number in range(3 * rules._VALID_HOSTS_LIMIT):
            self.assertTrue(validHost(b"host%d.example" % (number,)))
            self.assertLessEqual(len(rules._validHosts), rules._VALID_HOSTS_LIMIT)

    def test_invalidNotKept(self) -> None:
        for host in [b"a b", b"a/b"] * 3:
            self.assertFalse(validHost(host))
        self.assertEqual(rules._validHosts, set())
