"""
Tests for L{manualb.config} and L{manualb.durations}.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from manualb.config import (
    Config,
    ConfigError,
    HealthCheckConfig,
    RouteConfig,
    ServerAddress,
    ServerConfig,
    UpstreamConfig,
    loadConfig,
    parseConfig,
)
from manualb.durations import formatDuration, parseDuration, parseSize

MAIN = """\
[manualb]
listen = tcp:8080
"""

UPSTREAM = """\
[upstream pool]
servers = 10.0.0.1:80
"""

ROUTE = """\
[route default]
path = /
upstream = pool
"""

FULL = """\
# A complete file using every key.
[manualb]
listen =
    tcp:8080
    tcp6:8443:interface=\\:\\:1   ; IPv6 listener
access_log = /var/log/manualb/access.log

[upstream my_backend_pool]
servers =
    10.128.0.2:80 weight=3 max_fails=2 fail_timeout=30s
    10.128.0.3:8080   # the new one
    [2001:db8::1]:81 slow_start=1m max_conns=100
    backend.example   backup
    http://other.example:8000 down
balance = hash $request_uri
connect_timeout = 500ms
read_timeout = 1m30s
send_timeout = 10
keepalive = 0
keepalive_timeout = 1h
keepalive_requests = 1
passive_fail_on = 502 503 504
tries = 3
retry_timeout = 10s
retry_body_limit = 64k
health_check = path=/healthz interval=2s timeout=1s rise=1 fall=5 expect=200,3xx \
body=ok host=www.example

[upstream spare]
servers = spare.example:80

[route api]
path = /api/
upstream = spare

[route default]
path = /
upstream = my_backend_pool
"""


class ConfigErrorTests(SynchronousTestCase):
    """
    L{ConfigError} renders one message naming the file, line, section and
    key, leaving out what is unknown.
    """

    def test_everything(self) -> None:
        error = ConfigError("lb.ini", "upstream pool", "servers", "oops", 7)
        self.assertEqual(str(error), "lb.ini, line 7: [upstream pool] servers: oops")
        self.assertEqual(
            (error.source, error.section, error.key, error.message, error.line),
            ("lb.ini", "upstream pool", "servers", "oops", 7),
        )

    def test_noLine(self) -> None:
        error = ConfigError("lb.ini", "upstream pool", "servers", "oops")
        self.assertEqual(str(error), "lb.ini: [upstream pool] servers: oops")
        self.assertIsNone(error.line)

    def test_sectionOnly(self) -> None:
        error = ConfigError("lb.ini", "manualb", None, "oops")
        self.assertEqual(str(error), "lb.ini: [manualb]: oops")

    def test_fileOnly(self) -> None:
        self.assertEqual(str(ConfigError("lb.ini", None, None, "oops")), "lb.ini: oops")


class ValidConfigTests(SynchronousTestCase):
    """
    Valid files become the expected L{Config}.
    """

    def test_fullFile(self) -> None:
        """
        Every key of every section ends up in the result, in file order.
        """
        config = parseConfig(FULL, "conf/lb.ini")
        self.assertEqual(
            config,
            Config(
                source="conf/lb.ini",
                listen=("tcp:8080", "tcp6:8443:interface=\\:\\:1"),
                access_log="/var/log/manualb/access.log",
                upstreams={
                    "my_backend_pool": UpstreamConfig(
                        name="my_backend_pool",
                        servers=(
                            ServerConfig(
                                ServerAddress("10.128.0.2", 80),
                                weight=3,
                                max_fails=2,
                                fail_timeout=30.0,
                            ),
                            ServerConfig(ServerAddress("10.128.0.3", 8080)),
                            ServerConfig(
                                ServerAddress("2001:db8::1", 81),
                                slow_start=60.0,
                                max_conns=100,
                            ),
                            ServerConfig(
                                ServerAddress("backend.example", 80), backup=True
                            ),
                            ServerConfig(
                                ServerAddress("other.example", 8000, "http"),
                                down=True,
                            ),
                        ),
                        balance="hash",
                        balance_argument="$request_uri",
                        connect_timeout=0.5,
                        read_timeout=90.0,
                        send_timeout=10.0,
                        keepalive=0,
                        keepalive_timeout=3600.0,
                        keepalive_requests=1,
                        passive_fail_on=frozenset([502, 503, 504]),
                        tries=3,
                        retry_timeout=10.0,
                        retry_body_limit=64 * 1024,
                        health_check=HealthCheckConfig(
                            path="/healthz",
                            interval=2.0,
                            timeout=1.0,
                            rise=1,
                            fall=5,
                            expect=frozenset([200, *range(300, 400)]),
                            body="ok",
                            host="www.example",
                        ),
                    ),
                    "spare": UpstreamConfig(
                        name="spare",
                        servers=(ServerConfig(ServerAddress("spare.example", 80)),),
                    ),
                },
                routes=(
                    RouteConfig("api", "/api/", "spare"),
                    RouteConfig("default", "/", "my_backend_pool"),
                ),
            ),
        )
        self.assertEqual(list(config.upstreams), ["my_backend_pool", "spare"])

    def test_defaults(self) -> None:
        """
        Optional keys take the documented defaults; access logging goes to
        standard output.
        """
        config = parseConfig(MAIN + UPSTREAM + ROUTE)
        self.assertEqual(config.source, "<string>")
        self.assertEqual(config.access_log, "-")
        self.assertEqual(
            config.upstreams["pool"],
            UpstreamConfig(
                name="pool",
                servers=(
                    ServerConfig(
                        ServerAddress("10.0.0.1", 80, "http"),
                        weight=1,
                        max_fails=1,
                        fail_timeout=10.0,
                        backup=False,
                        down=False,
                        slow_start=0.0,
                        max_conns=0,
                    ),
                ),
                balance="round_robin",
                balance_argument=None,
                connect_timeout=5.0,
                read_timeout=60.0,
                send_timeout=60.0,
                keepalive=32,
                keepalive_timeout=60.0,
                keepalive_requests=1000,
                passive_fail_on=frozenset(),
                tries=0,
                retry_timeout=0.0,
                retry_body_limit=1024 * 1024,
                health_check=None,
            ),
        )

    def test_accessLogOff(self) -> None:
        config = parseConfig(MAIN + "access_log = off\n" + UPSTREAM + ROUTE)
        self.assertIsNone(config.access_log)

    def test_accessLogStdout(self) -> None:
        config = parseConfig(MAIN + "access_log = -\n" + UPSTREAM + ROUTE)
        self.assertEqual(config.access_log, "-")

    def test_keysAreCaseInsensitive(self) -> None:
        config = parseConfig("[manualb]\nLISTEN = tcp:8080\n" + UPSTREAM + ROUTE)
        self.assertEqual(config.listen, ("tcp:8080",))

    def test_unusedUpstream(self) -> None:
        """
        An upstream that no route uses is allowed (kept for later use).
        """
        config = parseConfig(MAIN + UPSTREAM + ROUTE + "[upstream idle]\nservers = x\n")
        self.assertEqual(list(config.upstreams), ["pool", "idle"])

    def test_ipv6Server(self) -> None:
        """
        IPv6 servers are written in brackets, stored without them, and named
        with them.
        """
        config = parseConfig(
            MAIN + "[upstream pool]\nservers = [::1]:8080\n  [fe80::1]\n" + ROUTE
        )
        servers = config.upstreams["pool"].servers
        self.assertEqual(
            servers,
            (
                ServerConfig(ServerAddress("::1", 8080)),
                ServerConfig(ServerAddress("fe80::1", 80)),
            ),
        )
        self.assertEqual([s.name for s in servers], ["[::1]:8080", "[fe80::1]:80"])

    def test_serverName(self) -> None:
        self.assertEqual(ServerAddress("10.0.0.1", 80).name, "10.0.0.1:80")
        self.assertEqual(ServerAddress("backend", 8080).name, "backend:8080")

    def test_sequencesBecomeTuples(self) -> None:
        """
        Lists given to the attrs classes become tuples, so values stay frozen;
        bare addresses become servers with every option at its default.
        """
        servers = [ServerAddress("a", 1), ServerConfig(ServerAddress("b", 2), weight=2)]
        upstream = UpstreamConfig("pool", servers)  # type: ignore[arg-type]
        self.assertEqual(
            upstream.servers,
            (
                ServerConfig(ServerAddress("a", 1)),
                ServerConfig(ServerAddress("b", 2), weight=2),
            ),
        )


class ParserErrorTests(SynchronousTestCase):
    """
    Mistakes that configparser finds are reported with their line number.
    """

    def assertError(self, text: str, expected: str) -> ConfigError:
        error = self.assertRaises(ConfigError, parseConfig, text, "lb.ini")
        self.assertEqual(str(error), expected)
        return error

    def test_missingSectionHeader(self) -> None:
        self.assertError(
            "listen = tcp:8080\n",
            "lb.ini, line 1: 'listen = tcp:8080' comes before any section header "
            "(the file must start with a section such as [manualb])",
        )

    def test_badLine(self) -> None:
        error = self.assertError(
            MAIN + "oops\n",
            "lb.ini, line 3: cannot parse 'oops': expected 'key = value' "
            "or a [section] header",
        )
        self.assertEqual(error.line, 3)

    def test_colonIsNotADelimiter(self) -> None:
        """
        Only C{=} separates keys from values, because values such as
        endpoints and addresses are full of colons.
        """
        self.assertError(
            "[manualb]\nlisten: tcp:8080\n",
            "lb.ini, line 2: cannot parse 'listen: tcp:8080': expected "
            "'key = value' or a [section] header",
        )

    def test_continuationAfterComment(self) -> None:
        """
        A comment line ends a multi-line value; the message says so.
        """
        self.assertError(
            MAIN + "[upstream pool]\nservers =\n    a:1\n#   b:2\n    c:3\n",
            "lb.ini, line 7: cannot parse 'c:3': expected 'key = value' or a "
            "continuation line directly below a key (a blank or comment line "
            "ends a multi-line value)",
        )

    def test_junkAfterSectionHeader(self) -> None:
        self.assertError(
            MAIN + "[route a] b\n",
            "lb.ini, line 3: cannot parse '[route a] b': expected 'key = value' "
            "or a [section] header",
        )

    def test_duplicateSection(self) -> None:
        error = self.assertError(
            MAIN + UPSTREAM + UPSTREAM,
            "lb.ini, line 5: [upstream pool]: duplicate section",
        )
        self.assertEqual((error.section, error.key), ("upstream pool", None))

    def test_duplicateSectionSpelledDifferently(self) -> None:
        self.assertError(
            MAIN + UPSTREAM + "[upstream  pool]\nservers = b:1\n",
            "lb.ini: [upstream  pool]: duplicate section (see [upstream pool])",
        )

    def test_duplicateKey(self) -> None:
        error = self.assertError(
            MAIN + "Listen = tcp:8081\n",
            "lb.ini, line 3: [manualb] listen: duplicate key "
            "(each key may appear once per section)",
        )
        self.assertEqual((error.section, error.key), ("manualb", "listen"))


class SectionErrorTests(SynchronousTestCase):
    """
    Unknown, misnamed or missing sections and keys are reported.
    """

    def assertError(self, text: str, expected: str) -> None:
        error = self.assertRaises(ConfigError, parseConfig, text, "lb.ini")
        self.assertEqual(str(error), expected)

    def test_unknownSection(self) -> None:
        self.assertError(
            MAIN + "[upstreams pool]\n",
            "lb.ini: [upstreams pool]: unknown section "
            "(known sections: [manualb], [upstream NAME], [route NAME])",
        )

    def test_defaultIsUnknown(self) -> None:
        """
        C{[DEFAULT]} has no special meaning: it is just an unknown section.
        """
        self.assertError(
            "[DEFAULT]\nlisten = tcp:8080\n" + MAIN,
            "lb.ini: [DEFAULT]: unknown section "
            "(known sections: [manualb], [upstream NAME], [route NAME])",
        )

    def test_upstreamWithoutName(self) -> None:
        self.assertError(
            MAIN + "[upstream]\nservers = a:1\n",
            "lb.ini: [upstream]: section needs a name: [upstream NAME]",
        )

    def test_upstreamNameWithSpaces(self) -> None:
        self.assertError(
            MAIN + "[upstream my pool]\nservers = a:1\n",
            "lb.ini: [upstream my pool]: section name must be one word "
            "without spaces: [upstream NAME]",
        )

    def test_routeWithoutName(self) -> None:
        self.assertError(
            MAIN + UPSTREAM + "[route]\npath = /\nupstream = pool\n",
            "lb.ini: [route]: section needs a name: [route NAME]",
        )

    def test_mainWithName(self) -> None:
        self.assertError(
            "[manualb main]\nlisten = tcp:8080\n",
            "lb.ini: [manualb main]: [manualb] takes no name",
        )

    def test_unknownKeyInMain(self) -> None:
        self.assertError(
            MAIN + "acces_log = -\n",
            "lb.ini: [manualb] acces_log: unknown key "
            "(known keys: listen, access_log, client_timeout)",
        )

    def test_unknownKeyInUpstream(self) -> None:
        self.assertError(
            MAIN + UPSTREAM + "timeout = 5s\n",
            "lb.ini: [upstream pool] timeout: unknown key (known keys: servers, "
            "balance, connect_timeout, read_timeout, send_timeout, keepalive, "
            "keepalive_timeout, keepalive_requests, passive_fail_on, tries, "
            "retry_timeout, retry_body_limit, health_check)",
        )

    def test_unknownKeyInRoute(self) -> None:
        self.assertError(
            MAIN + UPSTREAM + ROUTE + "backend = pool\n",
            "lb.ini: [route default] backend: unknown key "
            "(known keys: path, upstream)",
        )

    def test_missingMain(self) -> None:
        self.assertError(
            UPSTREAM + ROUTE,
            "lb.ini: [manualb]: missing section (it holds 'listen', which is required)",
        )

    def test_emptyFile(self) -> None:
        self.assertError(
            "",
            "lb.ini: [manualb]: missing section (it holds 'listen', which is required)",
        )

    def test_noRoute(self) -> None:
        self.assertError(
            MAIN + UPSTREAM,
            "lb.ini: no [route NAME] section; at least one route is needed, "
            "such as [route default] with path = / and upstream = NAME",
        )


class MainSectionErrorTests(SynchronousTestCase):
    """
    Mistakes in C{[manualb]}.
    """

    def assertError(self, main: str, expected: str) -> None:
        text = "[manualb]\n" + main + UPSTREAM + ROUTE
        error = self.assertRaises(ConfigError, parseConfig, text, "lb.ini")
        self.assertEqual(str(error), expected)

    def test_noListen(self) -> None:
        self.assertError(
            "access_log = -\n", "lb.ini: [manualb] listen: missing required key"
        )

    def test_emptyListen(self) -> None:
        self.assertError(
            "listen =\n",
            "lb.ini: [manualb] listen: needs at least one endpoint, such as tcp:8080",
        )

    def test_unknownEndpointType(self) -> None:
        self.assertError(
            "listen = xyz:1\n",
            "lb.ini: [manualb] listen: cannot parse endpoint 'xyz:1' "
            "(Unknown endpoint type: 'xyz')",
        )

    def test_badEndpointArgument(self) -> None:
        """
        Errors from the endpoint type's own parser are reported too, here for
        the second of two endpoints.
        """
        self.assertError(
            "listen = tcp:8080\n    tcp:http\n",
            "lb.ini: [manualb] listen: cannot parse endpoint 'tcp:http' "
            "(invalid literal for int() with base 10: 'http')",
        )

    def test_endpointMissingArgument(self) -> None:
        error = self.assertRaises(
            ConfigError,
            parseConfig,
            "[manualb]\nlisten = tcp\n" + UPSTREAM + ROUTE,
            "lb.ini",
        )
        self.assertEqual((error.section, error.key), ("manualb", "listen"))
        self.assertTrue(
            error.message.startswith("cannot parse endpoint 'tcp' ("), error.message
        )

    def test_duplicateEndpoint(self) -> None:
        self.assertError(
            "listen = tcp:8080\n  tcp:8080\n",
            "lb.ini: [manualb] listen: duplicate endpoint 'tcp:8080'",
        )

    def test_emptyAccessLog(self) -> None:
        self.assertError(
            "listen = tcp:8080\naccess_log =\n",
            "lb.ini: [manualb] access_log: empty value",
        )

    def test_twoAccessLogs(self) -> None:
        self.assertError(
            "listen = tcp:8080\naccess_log = a.log\n  b.log\n",
            "lb.ini: [manualb] access_log: expected a single value, got 2 lines",
        )


class UpstreamErrorTests(SynchronousTestCase):
    """
    Mistakes in C{[upstream NAME]}.
    """

    def assertError(self, upstream: str, expected: str) -> None:
        text = MAIN + "[upstream pool]\n" + upstream + ROUTE
        error = self.assertRaises(ConfigError, parseConfig, text, "conf/lb.ini")
        self.assertEqual(str(error), "conf/lb.ini: [upstream pool] " + expected)

    def assertServerError(self, server: str, expected: str) -> None:
        self.assertError(f"servers = {server}\n", "servers: " + expected)

    def test_missingServers(self) -> None:
        self.assertError("balance = round_robin\n", "servers: missing required key")

    def test_emptyServers(self) -> None:
        self.assertError(
            "servers =\n",
            "servers: needs at least one server, such as 10.0.0.1:80",
        )

    def test_badPort(self) -> None:
        self.assertServerError("a:x", "bad port 'x' in 'a:x'")

    def test_emptyPort(self) -> None:
        self.assertServerError("a:", "bad port '' in 'a:'")

    def test_signedPort(self) -> None:
        self.assertServerError("a:+80", "bad port '+80' in 'a:+80'")

    def test_portTooLarge(self) -> None:
        self.assertServerError(
            "a:65536", "port 65536 out of range 1..65535 in 'a:65536'"
        )

    def test_portZero(self) -> None:
        self.assertServerError("a:0", "port 0 out of range 1..65535 in 'a:0'")

    def test_emptyHost(self) -> None:
        self.assertServerError(":80", "empty host in ':80'")

    def test_emptyHostWithScheme(self) -> None:
        self.assertServerError("http://:80", "empty host in 'http://:80'")

    def test_emptyIPv6Host(self) -> None:
        self.assertServerError("[]:80", "empty host in '[]:80'")

    def test_badHost(self) -> None:
        self.assertServerError("a/b:80", "bad host 'a/b' in 'a/b:80'")

    def test_unbracketedIPv6(self) -> None:
        self.assertServerError(
            "::1:80", "IPv6 address needs brackets, like [::1]:8080, in '::1:80'"
        )

    def test_badIPv6(self) -> None:
        self.assertServerError(
            "[10.0.0.1]:80", "bad IPv6 address '10.0.0.1' in '[10.0.0.1]:80'"
        )

    def test_unclosedBracket(self) -> None:
        self.assertServerError("[::1:80", "missing ']' in '[::1:80'")

    def test_junkAfterBracket(self) -> None:
        self.assertServerError("[::1]80", "unexpected '80' after ']' in '[::1]80'")

    def test_unsupportedScheme(self) -> None:
        self.assertServerError(
            "https://a:443",
            "unsupported scheme 'https' in 'https://a:443' (supported: http)",
        )

    def test_path(self) -> None:
        self.assertServerError(
            "http://a:80/app",
            "unexpected path in 'http://a:80/app'; give only scheme://host:port",
        )

    def test_duplicateServer(self) -> None:
        self.assertServerError(
            "a:80\n  b:80\n  A:80", "duplicate server 'A:80' (same as 'a:80')"
        )

    def test_duplicateServerDefaultPort(self) -> None:
        self.assertServerError(
            "http://a\n  a:80", "duplicate server 'a:80' (same as 'http://a')"
        )

    def test_duplicateIPv6Server(self) -> None:
        self.assertServerError(
            "[::1]:80\n  [0::1]:80", "duplicate server '[0::1]:80' (same as '[::1]:80')"
        )

    def test_badDuration(self) -> None:
        self.assertError(
            "servers = a:1\nconnect_timeout = 5sec\n",
            "connect_timeout: bad duration '5sec': unknown unit 'sec' "
            "(known units: d, h, m, s, ms)",
        )

    def test_negativeDuration(self) -> None:
        self.assertError(
            "servers = a:1\nread_timeout = -1s\n",
            "read_timeout: bad duration '-1s': negative durations are not allowed",
        )

    def test_zeroDuration(self) -> None:
        self.assertError(
            "servers = a:1\nsend_timeout = 0s\n",
            "send_timeout: must be greater than zero, got '0s'",
        )

    def test_emptyDuration(self) -> None:
        self.assertError(
            "servers = a:1\nkeepalive_timeout =\n", "keepalive_timeout: empty value"
        )

    def test_badInteger(self) -> None:
        self.assertError(
            "servers = a:1\nkeepalive = lots\n", "keepalive: bad integer 'lots'"
        )

    def test_fractionalInteger(self) -> None:
        self.assertError(
            "servers = a:1\nkeepalive = 1.5\n", "keepalive: bad integer '1.5'"
        )

    def test_negativeKeepalive(self) -> None:
        self.assertError(
            "servers = a:1\nkeepalive = -1\n", "keepalive: must be at least 0, got -1"
        )

    def test_zeroKeepaliveRequests(self) -> None:
        self.assertError(
            "servers = a:1\nkeepalive_requests = 0\n",
            "keepalive_requests: must be at least 1, got 0",
        )


def makeTestBalancer(argument: str | None) -> object:
    """
    A balancer factory of a user's, for C{balance = tests.test_config...}:
    round robin, refusing the argument C{"bad"}.
    """
    from manualb.balancers import RoundRobin

    if argument == "bad":
        raise ValueError("makeTestBalancer does not like 'bad'")
    return RoundRobin()


def notABalancer(argument: str | None) -> object:
    """
    A factory that makes something other than a balancer.
    """
    return object()


class _UpstreamTestCase(SynchronousTestCase):
    """
    Helpers for the tests of single keys of C{[upstream pool]}.
    """

    def upstream(self, keys: str) -> UpstreamConfig:
        """
        Parse a file whose C{[upstream pool]} section has C{keys}.
        """
        return parseConfig(MAIN + "[upstream pool]\n" + keys + ROUTE).upstreams[
            "pool"
        ]

    def assertError(self, keys: str, expected: str) -> ConfigError:
        """
        A file whose C{[upstream pool]} section has C{keys} is refused with
        the message C{expected}, after the file and section.
        """
        text = MAIN + "[upstream pool]\n" + keys + ROUTE
        error = self.assertRaises(ConfigError, parseConfig, text, "lb.ini")
        self.assertEqual(str(error), "lb.ini: [upstream pool] " + expected)
        return error


class ServerOptionTests(_UpstreamTestCase):
    """
    The options after the address of each C{servers} line, nginx's C{server}
    parameters.
    """

    def servers(self, lines: str) -> tuple[ServerConfig, ...]:
        return self.upstream(f"servers = {lines}\n").servers

    def test_defaults(self) -> None:
        """
        A server without options has nginx's defaults: weight 1, max_fails 1,
        fail_timeout 10s.
        """
        (server,) = self.servers("a:1")
        self.assertEqual(
            server,
            ServerConfig(
                ServerAddress("a", 1),
                weight=1,
                max_fails=1,
                fail_timeout=10.0,
                backup=False,
                down=False,
                slow_start=0.0,
                max_conns=0,
            ),
        )
        self.assertEqual(server.name, "a:1")

    def test_everyOption(self) -> None:
        """
        Every option, in any order, separated by any spaces.
        """
        self.assertEqual(
            self.servers(
                "10.0.0.1:80 weight=3 max_fails=2 fail_timeout=30s "
                "slow_start=30s max_conns=100\n"
                "  10.0.0.2:80   backup\n"
                "  10.0.0.3:80 down max_conns=5 weight=2\n"
            ),
            (
                ServerConfig(
                    ServerAddress("10.0.0.1", 80),
                    weight=3,
                    max_fails=2,
                    fail_timeout=30.0,
                    slow_start=30.0,
                    max_conns=100,
                ),
                ServerConfig(ServerAddress("10.0.0.2", 80), backup=True),
                ServerConfig(
                    ServerAddress("10.0.0.3", 80), down=True, max_conns=5, weight=2
                ),
            ),
        )

    def test_zeroes(self) -> None:
        """
        C{max_fails=0} turns passive accounting off, C{max_conns=0} is no
        limit and C{slow_start=0} no ramp.
        """
        (server,) = self.servers("a:1 max_fails=0 max_conns=0 slow_start=0")
        self.assertEqual(
            (server.max_fails, server.max_conns, server.slow_start), (0, 0, 0.0)
        )

    def test_durations(self) -> None:
        (server,) = self.servers("a:1 fail_timeout=500ms slow_start=1m30s")
        self.assertEqual((server.fail_timeout, server.slow_start), (0.5, 90.0))

    def test_optionsAfterEveryKindOfAddress(self) -> None:
        servers = self.servers(
            "[::1]:8080 weight=2\n  http://b.example weight=3\n  c weight=4\n"
        )
        self.assertEqual(
            [(server.name, server.weight) for server in servers],
            [("[::1]:8080", 2), ("b.example:80", 3), ("c:80", 4)],
        )

    def test_inlineComment(self) -> None:
        (server,) = self.servers("a:1 weight=2   ; heavier")
        self.assertEqual(server.weight, 2)

    def test_allDownIsAllowed(self) -> None:
        """
        Every server may be marked down by hand (the pool then answers 502):
        a pool being emptied for maintenance.
        """
        servers = self.servers("a:1 down\n  b:1 down")
        self.assertEqual([server.down for server in servers], [True, True])

    def test_backupAndDownServersBesidesOneDown(self) -> None:
        servers = self.servers("a:1 down\n  b:1 backup")
        self.assertEqual(
            [(server.down, server.backup) for server in servers],
            [(True, False), (False, True)],
        )

    def assertServerError(self, lines: str, expected: str) -> None:
        self.assertError(f"servers = {lines}\n", "servers: " + expected)

    def test_unknownOption(self) -> None:
        self.assertServerError(
            "a:1 wieght=3",
            "unknown option 'wieght' in 'a:1 wieght=3' (known options: weight, "
            "max_fails, fail_timeout, backup, down, slow_start, max_conns)",
        )

    def test_unknownFlag(self) -> None:
        self.assertServerError(
            "a:1 bakup",
            "unknown option 'bakup' in 'a:1 bakup' (known options: weight, "
            "max_fails, fail_timeout, backup, down, slow_start, max_conns)",
        )

    def test_optionsAreCaseSensitive(self) -> None:
        self.assertServerError(
            "a:1 Weight=3",
            "unknown option 'Weight' in 'a:1 Weight=3' (known options: weight, "
            "max_fails, fail_timeout, backup, down, slow_start, max_conns)",
        )

    def test_twoServersOnOneLine(self) -> None:
        """
        A second address on a line is an unknown option: one server per line.
        """
        self.assertServerError(
            "a:1 b:1",
            "unknown option 'b:1' in 'a:1 b:1' (known options: weight, "
            "max_fails, fail_timeout, backup, down, slow_start, max_conns)",
        )

    def test_optionTwice(self) -> None:
        self.assertServerError(
            "a:1 weight=2 weight=3",
            "option 'weight' given twice in 'a:1 weight=2 weight=3'",
        )

    def test_flagTwice(self) -> None:
        self.assertServerError(
            "a:1 down down", "option 'down' given twice in 'a:1 down down'"
        )

    def test_flagWithValue(self) -> None:
        self.assertServerError(
            "a:1 backup=1",
            "option 'backup' takes no value, got 'backup=1' in 'a:1 backup=1'",
        )

    def test_flagWithEmptyValue(self) -> None:
        self.assertServerError(
            "b:1\n  a:1 down=",
            "option 'down' takes no value, got 'down=' in 'a:1 down='",
        )

    def test_optionWithoutValue(self) -> None:
        self.assertServerError(
            "a:1 weight",
            "option 'weight' needs a value, such as weight=3, in 'a:1 weight'",
        )

    def test_optionWithEmptyValue(self) -> None:
        self.assertServerError(
            "a:1 max_conns=",
            "option 'max_conns' needs a value, such as max_conns=100, "
            "in 'a:1 max_conns='",
        )

    def test_spaceAroundEquals(self) -> None:
        """
        Options are single words, as in nginx: C{weight = 3} is not one.
        """
        self.assertServerError(
            "a:1 weight = 3",
            "option 'weight' needs a value, such as weight=3, in 'a:1 weight = 3'",
        )

    def test_badWeight(self) -> None:
        self.assertServerError(
            "a:1 weight=heavy",
            "bad weight in 'a:1 weight=heavy': bad integer 'heavy'",
        )

    def test_zeroWeight(self) -> None:
        self.assertServerError(
            "a:1 weight=0", "bad weight in 'a:1 weight=0': must be at least 1, got 0"
        )

    def test_fractionalWeight(self) -> None:
        self.assertServerError(
            "a:1 weight=1.5", "bad weight in 'a:1 weight=1.5': bad integer '1.5'"
        )

    def test_negativeMaxFails(self) -> None:
        self.assertServerError(
            "a:1 max_fails=-1",
            "bad max_fails in 'a:1 max_fails=-1': must be at least 0, got -1",
        )

    def test_negativeMaxConns(self) -> None:
        self.assertServerError(
            "a:1 max_conns=-5",
            "bad max_conns in 'a:1 max_conns=-5': must be at least 0, got -5",
        )

    def test_zeroFailTimeout(self) -> None:
        self.assertServerError(
            "a:1 fail_timeout=0s",
            "bad fail_timeout in 'a:1 fail_timeout=0s': must be greater than "
            "zero, got '0s'",
        )

    def test_badFailTimeout(self) -> None:
        self.assertServerError(
            "a:1 fail_timeout=30sec",
            "bad fail_timeout in 'a:1 fail_timeout=30sec': bad duration '30sec': "
            "unknown unit 'sec' (known units: d, h, m, s, ms)",
        )

    def test_negativeSlowStart(self) -> None:
        self.assertServerError(
            "a:1 slow_start=-1s",
            "bad slow_start in 'a:1 slow_start=-1s': bad duration '-1s': "
            "negative durations are not allowed",
        )

    def test_badAddressBeforeOptions(self) -> None:
        """
        The address is checked as without options, and quoted alone.
        """
        self.assertServerError("a:x weight=2", "bad port 'x' in 'a:x'")

    def test_optionInsteadOfAddress(self) -> None:
        self.assertServerError("weight=2 a:1", "bad host 'weight=2' in 'weight=2'")

    def test_onlyBackups(self) -> None:
        self.assertServerError(
            "a:1 backup\n  b:1 backup",
            "every server is a backup; at least one must not be, since backup "
            "servers take requests only when no other server can",
        )

    def test_duplicateWithOptions(self) -> None:
        """
        Servers are duplicates when their addresses are, whatever their
        options; the message quotes the addresses.
        """
        self.assertServerError(
            "a:80 weight=2\n  b:80\n  A:80 backup",
            "duplicate server 'A:80' (same as 'a:80')",
        )


class BalanceTests(_UpstreamTestCase):
    """
    C{balance = METHOD [ARGUMENT]}, checked by making the balancer.
    """

    def balance(self, value: str) -> tuple[str, str | None]:
        upstream = self.upstream(f"servers = a:1\nbalance = {value}\n")
        return upstream.balance, upstream.balance_argument

    def test_builtIn(self) -> None:
        """
        Each built-in method; the argument, if any, stripped.
        """
        for value, expected in [
            ("round_robin", ("round_robin", None)),
            ("least_conn", ("least_conn", None)),
            ("ip_hash", ("ip_hash", None)),
            ("random", ("random", None)),
            ("hash $request_uri", ("hash", "$request_uri")),
            ("hash    $host$uri   ", ("hash", "$host$uri")),
            ("hash $cookie_sid consistent", ("hash", "$cookie_sid consistent")),
            ("cookie", ("cookie", None)),
            ("cookie SRVID", ("cookie", "SRVID")),
        ]:
            self.assertEqual(self.balance(value), expected, value)

    def test_knownMethodsAreTheBalancers(self) -> None:
        """
        Every method of L{manualb.balancers.BALANCERS} is accepted (with an
        argument for those that need one).
        """
        from manualb import balancers

        for method in balancers.BALANCERS:
            value = f"{method} $request_uri" if method == "hash" else method
            self.assertEqual(self.balance(value)[0], method)

    def test_dottedName(self) -> None:
        """
        A dotted name is a factory of the user's, called with the argument.
        """
        name = f"{__name__}.makeTestBalancer"
        self.assertEqual(self.balance(name), (name, None))
        self.assertEqual(self.balance(f"{name}  fastest "), (name, "fastest"))

    def test_dottedNameOfBuiltIn(self) -> None:
        self.assertEqual(
            self.balance("manualb.balancers.RoundRobin"),
            ("manualb.balancers.RoundRobin", None),
        )

    def test_unknownMethod(self) -> None:
        from manualb import balancers

        self.assertError(
            "servers = a:1\nbalance = round-robin\n",
            f"balance: unknown method 'round-robin' "
            f"(known: {', '.join(balancers.BALANCERS)}; or the dotted name of "
            f"your own balancer's factory, such as mypackage.balancers.Fastest)",
        )

    def test_unknownMethodWithArgument(self) -> None:
        error = self.assertRaises(
            ConfigError,
            self.upstream,
            "servers = a:1\nbalance = sticky cookie\n",
        )
        self.assertEqual(error.key, "balance")
        self.assertTrue(
            error.message.startswith("unknown method 'sticky' (known: "),
            error.message,
        )

    def test_methodsAreCaseSensitive(self) -> None:
        error = self.assertRaises(
            ConfigError, self.upstream, "servers = a:1\nbalance = Round_Robin\n"
        )
        self.assertTrue(error.message.startswith("unknown method 'Round_Robin' "))

    def assertCannotUse(self, value: str) -> str:
        """
        C{balance = value} is refused with C{cannot use 'value': REASON};
        return the reason.
        """
        error = self.assertRaises(
            ConfigError, parseConfig,
            MAIN + f"[upstream pool]\nservers = a:1\nbalance = {value}\n" + ROUTE,
            "lb.ini",
        )
        self.assertEqual(
            (error.source, error.section, error.key),
            ("lb.ini", "upstream pool", "balance"),
        )
        prefix = f"cannot use {value.strip()!r}: "
        self.assertTrue(error.message.startswith(prefix), error.message)
        reason = error.message[len(prefix) :]
        self.assertTrue(reason)
        return reason

    def test_badArgument(self) -> None:
        """
        The factory's ValueError for a bad argument is the message.
        """
        self.assertEqual(
            self.assertCannotUse(f"{__name__}.makeTestBalancer bad"),
            "makeTestBalancer does not like 'bad'",
        )

    def test_hashWithoutKey(self) -> None:
        self.assertCannotUse("hash")

    def test_hashWithUnknownVariable(self) -> None:
        self.assertIn("$nope", self.assertCannotUse("hash $nope"))

    def test_argumentToMethodWithout(self) -> None:
        self.assertCannotUse("round_robin x")

    def test_missingModule(self) -> None:
        self.assertCannotUse("nosuchpackage.balancers.Fastest")

    def test_missingName(self) -> None:
        self.assertCannotUse("manualb.balancers.Fastest")

    def test_notCallable(self) -> None:
        self.assertCannotUse("manualb.config.SCHEMES")

    def test_factoryRefusesArgument(self) -> None:
        """
        A factory that cannot be called with the argument: its TypeError is
        the message.
        """
        self.assertCannotUse("os.getcwd")

    def test_notABalancer(self) -> None:
        self.assertCannotUse(f"{__name__}.notABalancer")

    def test_empty(self) -> None:
        self.assertError("servers = a:1\nbalance =\n", "balance: empty value")


class PassiveFailOnTests(_UpstreamTestCase):
    """
    C{passive_fail_on}: the response codes that count as failures, as
    nginx's C{proxy_next_upstream http_502 ...}.
    """

    def test_default(self) -> None:
        self.assertEqual(self.upstream("servers = a:1\n").passive_fail_on, frozenset())

    def test_codes(self) -> None:
        self.assertEqual(
            self.upstream("servers = a:1\npassive_fail_on = 502   503 504\n")
            .passive_fail_on,
            frozenset([502, 503, 504]),
        )

    def test_bounds(self) -> None:
        self.assertEqual(
            self.upstream("servers = a:1\npassive_fail_on = 599 500\n")
            .passive_fail_on,
            frozenset([500, 599]),
        )

    def test_empty(self) -> None:
        """
        The key, when present, needs a code: leave it out for none.
        """
        self.assertError(
            "servers = a:1\npassive_fail_on =\n", "passive_fail_on: empty value"
        )

    def test_notFailure(self) -> None:
        self.assertError(
            "servers = a:1\npassive_fail_on = 502 404\n",
            "passive_fail_on: bad status code '404' in '502 404' (expected codes "
            "from 500 to 599 separated by spaces, like 502 503 504)",
        )

    def test_nginxSpelling(self) -> None:
        self.assertError(
            "servers = a:1\npassive_fail_on = http_502\n",
            "passive_fail_on: bad status code 'http_502' in 'http_502' (expected "
            "codes from 500 to 599 separated by spaces, like 502 503 504)",
        )

    def test_commas(self) -> None:
        self.assertError(
            "servers = a:1\npassive_fail_on = 502,503\n",
            "passive_fail_on: bad status code '502,503' in '502,503' (expected "
            "codes from 500 to 599 separated by spaces, like 502 503 504)",
        )

    def test_tooManyDigits(self) -> None:
        self.assertError(
            "servers = a:1\npassive_fail_on = 5020\n",
            "passive_fail_on: bad status code '5020' in '5020' (expected "
            "codes from 500 to 599 separated by spaces, like 502 503 504)",
        )

    def test_off(self) -> None:
        """
        There is no C{off}: the key is left out instead.
        """
        self.assertError(
            "servers = a:1\npassive_fail_on = off\n",
            "passive_fail_on: bad status code 'off' in 'off' (expected "
            "codes from 500 to 599 separated by spaces, like 502 503 504)",
        )

    def test_twice(self) -> None:
        self.assertError(
            "servers = a:1\npassive_fail_on = 502 503 502\n",
            "passive_fail_on: status code 502 given twice in '502 503 502'",
        )

    def test_severalLines(self) -> None:
        self.assertError(
            "servers = a:1\npassive_fail_on = 502\n  503\n",
            "passive_fail_on: expected a single value, got 2 lines",
        )


class RetryTests(_UpstreamTestCase):
    """
    C{tries}, C{retry_timeout} and C{retry_body_limit}: nginx's
    C{proxy_next_upstream_tries} and C{proxy_next_upstream_timeout}, and how
    much of a body is kept to send it again.
    """

    def test_defaults(self) -> None:
        upstream = self.upstream("servers = a:1\n")
        self.assertEqual(
            (upstream.tries, upstream.retry_timeout, upstream.retry_body_limit),
            (0, 0.0, 1024 * 1024),
        )

    def test_values(self) -> None:
        upstream = self.upstream(
            "servers = a:1\ntries = 3\nretry_timeout = 1m30s\n"
            "retry_body_limit = 64k\n"
        )
        self.assertEqual(
            (upstream.tries, upstream.retry_timeout, upstream.retry_body_limit),
            (3, 90.0, 64 * 1024),
        )

    def test_zeroes(self) -> None:
        """
        C{0} is every server once, no time limit, and no body kept.
        """
        upstream = self.upstream(
            "servers = a:1\ntries = 0\nretry_timeout = 0\nretry_body_limit = 0\n"
        )
        self.assertEqual(
            (upstream.tries, upstream.retry_timeout, upstream.retry_body_limit),
            (0, 0.0, 0),
        )

    def test_sizeUnits(self) -> None:
        for text, size in [("512", 512), ("1m", 1024**2), ("1g", 1024**3)]:
            upstream = self.upstream(f"servers = a:1\nretry_body_limit = {text}\n")
            self.assertEqual(upstream.retry_body_limit, size, text)

    def test_negativeTries(self) -> None:
        self.assertError(
            "servers = a:1\ntries = -1\n", "tries: must be at least 0, got -1"
        )

    def test_badTries(self) -> None:
        self.assertError("servers = a:1\ntries = all\n", "tries: bad integer 'all'")

    def test_negativeRetryTimeout(self) -> None:
        self.assertError(
            "servers = a:1\nretry_timeout = -5s\n",
            "retry_timeout: bad duration '-5s': negative durations are not allowed",
        )

    def test_badRetryTimeout(self) -> None:
        self.assertError(
            "servers = a:1\nretry_timeout = 5 s\n",
            "retry_timeout: bad duration '5 s': no space allowed between a "
            "number and its unit",
        )

    def test_badRetryBodyLimit(self) -> None:
        self.assertError(
            "servers = a:1\nretry_body_limit = 1MB\n",
            "retry_body_limit: bad size '1MB': unknown unit 'MB' "
            "(known units: k, m, g)",
        )

    def test_negativeRetryBodyLimit(self) -> None:
        self.assertError(
            "servers = a:1\nretry_body_limit = -1\n",
            "retry_body_limit: bad size '-1': negative sizes are not allowed",
        )

    def test_emptyRetryBodyLimit(self) -> None:
        self.assertError(
            "servers = a:1\nretry_body_limit =\n", "retry_body_limit: empty value"
        )


class HealthCheckTests(_UpstreamTestCase):
    """
    C{health_check}: active probes, as HAProxy's C{check inter rise fall}
    and C{http-check expect}.
    """

    def healthCheck(self, value: str) -> HealthCheckConfig | None:
        return self.upstream(f"servers = a:1\nhealth_check = {value}\n").health_check

    def test_absent(self) -> None:
        self.assertIsNone(self.upstream("servers = a:1\n").health_check)

    def test_on(self) -> None:
        """
        C{on} alone is every default.
        """
        self.assertEqual(
            self.healthCheck("on"),
            HealthCheckConfig(
                path="/",
                interval=5.0,
                timeout=2.0,
                rise=2,
                fall=3,
                expect=frozenset([200]),
                body=None,
                host=None,
            ),
        )
        self.assertEqual(self.healthCheck("ON"), HealthCheckConfig())

    def test_off(self) -> None:
        """
        C{off}, as for access_log, is the same as leaving the key out.
        """
        self.assertIsNone(self.healthCheck("off"))

    def test_everyOption(self) -> None:
        self.assertEqual(
            self.healthCheck(
                "path=/healthz?full=1 interval=2s timeout=1s rise=1 fall=5 "
                "expect=200,204 body=^ok\\s*$ host=www.example:8080"
            ),
            HealthCheckConfig(
                path="/healthz?full=1",
                interval=2.0,
                timeout=1.0,
                rise=1,
                fall=5,
                expect=frozenset([200, 204]),
                body="^ok\\s*$",
                host="www.example:8080",
            ),
        )

    def test_someOptions(self) -> None:
        """
        Options left out keep their defaults, whatever the order.
        """
        self.assertEqual(
            self.healthCheck("fall=4   path=/up"),
            HealthCheckConfig(path="/up", fall=4),
        )

    def test_expectClasses(self) -> None:
        self.assertEqual(
            self.healthCheck("expect=2xx,3XX").expect,  # type: ignore[union-attr]
            frozenset(range(200, 400)),
        )

    def test_expectCodeAndItsClass(self) -> None:
        self.assertEqual(
            self.healthCheck("expect=204,2xx").expect,  # type: ignore[union-attr]
            frozenset(range(200, 300)),
        )

    def test_timeoutEqualToInterval(self) -> None:
        check = self.healthCheck("interval=3s timeout=3s")
        self.assertEqual((check.interval, check.timeout), (3.0, 3.0))  # type: ignore[union-attr]

    def test_shortIntervalShortensDefaultTimeout(self) -> None:
        """
        With an interval shorter than the default timeout and no timeout, the
        timeout is the interval (as HAProxy's check timeout defaults to its
        inter).
        """
        check = self.healthCheck("interval=500ms")
        self.assertEqual((check.interval, check.timeout), (0.5, 0.5))  # type: ignore[union-attr]

    def test_ipv6Host(self) -> None:
        self.assertEqual(self.healthCheck("host=[::1]:80").host, "[::1]:80")  # type: ignore[union-attr]

    def assertHealthError(self, value: str, expected: str) -> None:
        self.assertError(
            f"servers = a:1\nhealth_check = {value}\n", "health_check: " + expected
        )

    def test_empty(self) -> None:
        self.assertError("servers = a:1\nhealth_check =\n", "health_check: empty value")

    def test_unknownOption(self) -> None:
        self.assertHealthError(
            "inter=2s",
            "unknown option 'inter' in 'inter=2s' (known options: path, interval, "
            "timeout, rise, fall, expect, body, host)",
        )

    def test_missingEquals(self) -> None:
        self.assertHealthError(
            "/healthz",
            "expected name=value, got '/healthz' in '/healthz' (known names: path, "
            "interval, timeout, rise, fall, expect, body, host)",
        )

    def test_nameWithoutValue(self) -> None:
        self.assertHealthError(
            "rise=2 path",
            "option 'path' needs a value, such as path=/healthz, in 'rise=2 path'",
        )

    def test_emptyValue(self) -> None:
        self.assertHealthError(
            "interval=",
            "option 'interval' needs a value, such as interval=2s, in 'interval='",
        )

    def test_optionTwice(self) -> None:
        self.assertHealthError(
            "rise=2 fall=3 rise=3",
            "option 'rise' given twice in 'rise=2 fall=3 rise=3'",
        )

    def test_onWithOptions(self) -> None:
        self.assertHealthError(
            "on rise=3",
            "'on' stands alone, got 'on rise=3'; give either on, off or "
            "name=value options",
        )

    def test_relativePath(self) -> None:
        self.assertHealthError(
            "path=healthz",
            "bad path in 'path=healthz': must start with '/', got 'healthz'",
        )

    def test_badInterval(self) -> None:
        self.assertHealthError(
            "interval=2x",
            "bad interval in 'interval=2x': bad duration '2x': unknown unit 'x' "
            "(known units: d, h, m, s, ms)",
        )

    def test_zeroInterval(self) -> None:
        self.assertHealthError(
            "interval=0",
            "bad interval in 'interval=0': must be greater than zero, got '0'",
        )

    def test_zeroTimeout(self) -> None:
        self.assertHealthError(
            "timeout=0s",
            "bad timeout in 'timeout=0s': must be greater than zero, got '0s'",
        )

    def test_timeoutLongerThanInterval(self) -> None:
        self.assertHealthError(
            "interval=1s timeout=1500ms",
            "timeout=1500ms is longer than interval=1s in "
            "'interval=1s timeout=1500ms' (a probe may take at most the interval)",
        )

    def test_timeoutLongerThanDefaultInterval(self) -> None:
        self.assertHealthError(
            "timeout=10s",
            "timeout=10s is longer than interval=5s (the default) in "
            "'timeout=10s' (a probe may take at most the interval)",
        )

    def test_zeroRise(self) -> None:
        self.assertHealthError(
            "rise=0", "bad rise in 'rise=0': must be at least 1, got 0"
        )

    def test_badFall(self) -> None:
        self.assertHealthError("fall=x", "bad fall in 'fall=x': bad integer 'x'")

    def test_badExpect(self) -> None:
        self.assertHealthError(
            "expect=20",
            "bad expect in 'expect=20': bad status '20' (expected codes such as "
            "200 or classes such as 2xx, separated by commas)",
        )

    def test_expectOutOfRange(self) -> None:
        self.assertHealthError(
            "expect=600",
            "bad expect in 'expect=600': bad status '600' (expected codes such as "
            "200 or classes such as 2xx, separated by commas)",
        )

    def test_expectEmptyItem(self) -> None:
        self.assertHealthError(
            "expect=200,",
            "bad expect in 'expect=200,': bad status '' (expected codes such as "
            "200 or classes such as 2xx, separated by commas)",
        )

    def test_expectTwice(self) -> None:
        self.assertHealthError(
            "expect=2xx,200,2XX",
            "bad expect in 'expect=2xx,200,2XX': status '2XX' given twice",
        )

    def test_badBody(self) -> None:
        self.assertHealthError(
            "body=(ok",
            "bad body in 'body=(ok': not a valid regular expression: "
            "missing ), unterminated subpattern at position 0",
        )

    def test_badHost(self) -> None:
        self.assertHealthError(
            "host=a/b",
            "bad host in 'host=a/b': expected a host name with an optional port, "
            "like backend.example or backend.example:8080, got 'a/b'",
        )

    def test_severalLines(self) -> None:
        self.assertHealthError(
            "rise=2\n  fall=3", "expected a single value, got 2 lines"
        )


class ShippedConfigTests(SynchronousTestCase):
    """
    The commented example configuration, C{conf/lb.ini}.
    """

    def setUp(self) -> None:
        path = os.path.join(os.path.dirname(__file__), os.pardir, "conf", "lb.ini")
        with open(path, encoding="utf-8") as f:
            self.text = f.read()

    def test_valid(self) -> None:
        upstream = parseConfig(self.text).upstreams["my_backend_pool"]
        self.assertEqual(upstream.balance, "round_robin")
        self.assertTrue(any(server.backup for server in upstream.servers))
        self.assertIsNone(upstream.health_check)

    def test_commentedExamples(self) -> None:
        """
        The keys given as commented-out examples are valid once uncommented.
        """
        text = self.text
        for key in ("passive_fail_on", "health_check"):
            self.assertIn(f"\n;{key} = ", text)
            text = text.replace(f"\n;{key} = ", f"\n{key} = ")
        upstream = parseConfig(text).upstreams["my_backend_pool"]
        self.assertTrue(upstream.passive_fail_on)
        self.assertIsNotNone(upstream.health_check)


class RouteErrorTests(SynchronousTestCase):
    """
    Mistakes in C{[route NAME]} sections.
    """

    def assertError(self, routes: str, expected: str) -> None:
        text = MAIN + UPSTREAM + routes
        error = self.assertRaises(ConfigError, parseConfig, text, "lb.ini")
        self.assertEqual(str(error), expected)

    def test_missingPath(self) -> None:
        self.assertError(
            "[route r]\nupstream = pool\n",
            "lb.ini: [route r] path: missing required key",
        )

    def test_missingUpstream(self) -> None:
        self.assertError(
            "[route r]\npath = /\n", "lb.ini: [route r] upstream: missing required key"
        )

    def test_relativePath(self) -> None:
        self.assertError(
            "[route r]\npath = api\nupstream = pool\n",
            "lb.ini: [route r] path: must start with '/', got 'api'",
        )

    def test_pathWithSpace(self) -> None:
        self.assertError(
            "[route r]\npath = /a b\nupstream = pool\n",
            "lb.ini: [route r] path: must not contain spaces, got '/a b'",
        )

    def test_unknownUpstream(self) -> None:
        self.assertError(
            "[route r]\npath = /\nupstream = pol\n",
            "lb.ini: [route r] upstream: no section [upstream pol] "
            "(defined upstreams: pool)",
        )

    def test_noUpstreams(self) -> None:
        error = self.assertRaises(
            ConfigError, parseConfig, MAIN + ROUTE, "lb.ini"
        )
        self.assertEqual(
            str(error),
            "lb.ini: [route default] upstream: no section [upstream pool] "
            "(defined upstreams: none)",
        )

    def test_samePathTwice(self) -> None:
        self.assertError(
            ROUTE + "[route other]\npath = /\nupstream = pool\n",
            "lb.ini: [route other] path: path '/' is already used by [route default]",
        )


class LoadConfigTests(SynchronousTestCase):
    """
    L{loadConfig} reads files and reports unreadable ones.
    """

    def test_load(self) -> None:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(FULL)
        config = loadConfig(path)
        self.assertEqual(config, parseConfig(FULL, path))
        self.assertEqual(config.source, path)

    def test_byteOrderMark(self) -> None:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8-sig") as f:
            f.write(MAIN + UPSTREAM + ROUTE)
        self.assertEqual(loadConfig(path).listen, ("tcp:8080",))

    def test_errorNamesFile(self) -> None:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(MAIN + "bogus = 1\n")
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(error.source, path)
        self.assertTrue(str(error).startswith(path + ": [manualb] bogus: "))

    def test_missingFile(self) -> None:
        path = self.mktemp()
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(
            str(error), f"{path}: cannot read file: No such file or directory"
        )
        self.assertEqual((error.source, error.section, error.key), (path, None, None))

    def test_directory(self) -> None:
        path = self.mktemp()
        os.mkdir(path)
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertTrue(str(error).startswith(f"{path}: cannot read file: "))

    def test_notUTF8(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"[manualb]\nlisten = \xff\n")
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(str(error), f"{path}: not UTF-8 text (bad byte at offset 19)")


class ParseDurationTests(SynchronousTestCase):
    """
    L{parseDuration} reads nginx-style durations as seconds.
    """

    def test_units(self) -> None:
        for text, seconds in [
            ("500ms", 0.5),
            ("10s", 10.0),
            ("1m", 60.0),
            ("1h", 3600.0),
            ("1d", 86400.0),
        ]:
            self.assertEqual(parseDuration(text), seconds, text)

    def test_bareNumberIsSeconds(self) -> None:
        self.assertEqual(parseDuration("10"), 10.0)
        self.assertEqual(parseDuration("0.25"), 0.25)

    def test_decimals(self) -> None:
        self.assertEqual(parseDuration("1.5s"), 1.5)
        self.assertEqual(parseDuration(".5m"), 30.0)

    def test_combinations(self) -> None:
        self.assertEqual(parseDuration("1m30s"), 90.0)
        self.assertEqual(parseDuration("1h 30m"), 5400.0)
        self.assertAlmostEqual(parseDuration("1d2h3m4s5ms"), 93784.005)

    def test_surroundingSpace(self) -> None:
        self.assertEqual(parseDuration("  10s "), 10.0)

    def test_zero(self) -> None:
        self.assertEqual(parseDuration("0s"), 0.0)

    def assertBad(self, text: str, expected: str) -> None:
        error = self.assertRaises(ValueError, parseDuration, text)
        self.assertEqual(str(error), expected)

    def test_empty(self) -> None:
        self.assertBad("  ", "empty duration (expected a value like 500ms, 10s, 1m30s)")

    def test_negative(self) -> None:
        self.assertBad("-5s", "bad duration '-5s': negative durations are not allowed")

    def test_unknownUnit(self) -> None:
        self.assertBad(
            "10x", "bad duration '10x': unknown unit 'x' (known units: d, h, m, s, ms)"
        )

    def test_unitsAreCaseSensitive(self) -> None:
        """
        nginx uses C{M} for months, so C{10S} is not silently 10 seconds.
        """
        self.assertRaises(ValueError, parseDuration, "10S")

    def test_missingUnit(self) -> None:
        self.assertBad(
            "1m30",
            "bad duration '1m30': missing unit after '30' "
            "(known units: d, h, m, s, ms)",
        )

    def test_spaceBeforeUnit(self) -> None:
        self.assertBad(
            "5 s", "bad duration '5 s': no space allowed between a number and its unit"
        )

    def test_unitsOutOfOrder(self) -> None:
        self.assertBad(
            "30s1m",
            "bad duration '30s1m': units must go from the largest to the "
            "smallest, each at most once (d, h, m, s, ms)",
        )

    def test_unitTwice(self) -> None:
        self.assertRaises(ValueError, parseDuration, "1s1s")

    def test_notANumber(self) -> None:
        self.assertBad("fast", "bad duration 'fast': expected a number at 'fast'")
        self.assertRaises(ValueError, parseDuration, "inf")
        self.assertRaises(ValueError, parseDuration, "nan")
        self.assertRaises(ValueError, parseDuration, "1e3")

    def test_tooLarge(self) -> None:
        self.assertRaises(ValueError, parseDuration, "9" * 400)


class FormatDurationTests(SynchronousTestCase):
    """
    L{formatDuration} writes seconds the way L{parseDuration} reads them.
    """

    def test_examples(self) -> None:
        for seconds, text in [
            (0, "0s"),
            (0.5, "500ms"),
            (10, "10s"),
            (90, "1m30s"),
            (3600, "1h"),
            (1.5, "1s500ms"),
            (86400 + 0.001, "1d1ms"),
        ]:
            self.assertEqual(formatDuration(seconds), text, seconds)

    def test_roundTrip(self) -> None:
        for seconds in [0.001, 0.5, 5, 60, 61.25, 3600, 93784.005]:
            self.assertAlmostEqual(parseDuration(formatDuration(seconds)), seconds)

    def test_negative(self) -> None:
        self.assertRaises(ValueError, formatDuration, -1)


class ParseSizeTests(SynchronousTestCase):
    """
    L{parseSize} reads nginx-style sizes as bytes.
    """

    def test_bytes(self) -> None:
        self.assertEqual(parseSize("512"), 512)
        self.assertEqual(parseSize("0"), 0)

    def test_units(self) -> None:
        for text, size in [
            ("64k", 64 * 1024),
            ("1m", 1024 * 1024),
            ("2g", 2 * 1024**3),
        ]:
            self.assertEqual(parseSize(text), size, text)

    def test_upperCase(self) -> None:
        """
        As in nginx, C{K}, C{M} and C{G} are C{k}, C{m} and C{g}.
        """
        self.assertEqual(parseSize("64K"), 64 * 1024)
        self.assertEqual(parseSize("1M"), 1024 * 1024)
        self.assertEqual(parseSize("1G"), 1024**3)

    def test_surroundingSpace(self) -> None:
        self.assertEqual(parseSize("  8k "), 8192)

    def assertBad(self, text: str, expected: str) -> None:
        error = self.assertRaises(ValueError, parseSize, text)
        self.assertEqual(str(error), expected)

    def test_empty(self) -> None:
        self.assertBad(" ", "empty size (expected a value like 512, 64k, 1m)")

    def test_negative(self) -> None:
        self.assertBad("-1k", "bad size '-1k': negative sizes are not allowed")

    def test_unknownUnit(self) -> None:
        self.assertBad("1t", "bad size '1t': unknown unit 't' (known units: k, m, g)")
        self.assertBad(
            "1kb", "bad size '1kb': unknown unit 'kb' (known units: k, m, g)"
        )

    def test_fraction(self) -> None:
        self.assertBad(
            "1.5m", "bad size '1.5m': must be a whole number (use a smaller unit)"
        )

    def test_spaceBeforeUnit(self) -> None:
        self.assertBad(
            "64 k", "bad size '64 k': no space allowed between a number and its unit"
        )

    def test_notASize(self) -> None:
        for text in ["lots", "k", "+5", "1k2", "1e3", "\u0661\u0660"]:
            self.assertBad(
                text,
                f"bad size {text!r}: expected a whole number of bytes with an "
                f"optional unit (k, m, g), like 512, 64k, 1m",
            )


class ClientTimeoutTests(SynchronousTestCase):
    def test_clientTimeout(self):
        text = "[manualb]\nlisten = tcp:0\n{}[upstream u]\nservers = a:1\n[route r]\npath = /\nupstream = u\n"
        self.assertEqual(parseConfig(text.format("")).client_timeout, 60.0)
        self.assertEqual(parseConfig(text.format("client_timeout = 1m30s\n")).client_timeout, 90.0)
        with self.assertRaises(ConfigError) as caught:
            parseConfig(text.format("client_timeout = soon\n"), "f.ini")
        self.assertIn("f.ini: [manualb] client_timeout: ", str(caught.exception))
