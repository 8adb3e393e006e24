"""
Tests for L{manualb.config} and L{manualb.durations}.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from manualb.config import (
    Config,
    ConfigError,
    RouteConfig,
    ServerAddress,
    UpstreamConfig,
    loadConfig,
    parseConfig,
)
from manualb.durations import formatDuration, parseDuration

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
    10.128.0.2:80
    10.128.0.3:8080   # the new one
    [2001:db8::1]:81
    backend.example
    http://other.example:8000
balance = round_robin
connect_timeout = 500ms
read_timeout = 1m30s
send_timeout = 10
keepalive = 0
keepalive_timeout = 1h
keepalive_requests = 1

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
                            ServerAddress("10.128.0.2", 80),
                            ServerAddress("10.128.0.3", 8080),
                            ServerAddress("2001:db8::1", 81),
                            ServerAddress("backend.example", 80),
                            ServerAddress("other.example", 8000, "http"),
                        ),
                        balance="round_robin",
                        connect_timeout=0.5,
                        read_timeout=90.0,
                        send_timeout=10.0,
                        keepalive=0,
                        keepalive_timeout=3600.0,
                        keepalive_requests=1,
                    ),
                    "spare": UpstreamConfig(
                        name="spare", servers=(ServerAddress("spare.example", 80),)
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
                servers=(ServerAddress("10.0.0.1", 80, "http"),),
                balance="round_robin",
                connect_timeout=5.0,
                read_timeout=60.0,
                send_timeout=60.0,
                keepalive=32,
                keepalive_timeout=60.0,
                keepalive_requests=1000,
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
            servers, (ServerAddress("::1", 8080), ServerAddress("fe80::1", 80))
        )
        self.assertEqual([s.name for s in servers], ["[::1]:8080", "[fe80::1]:80"])

    def test_serverName(self) -> None:
        self.assertEqual(ServerAddress("10.0.0.1", 80).name, "10.0.0.1:80")
        self.assertEqual(ServerAddress("backend", 8080).name, "backend:8080")

    def test_sequencesBecomeTuples(self) -> None:
        """
        Lists given to the attrs classes become tuples, so values stay frozen.
        """
        servers = [ServerAddress("a", 1)]
        upstream = UpstreamConfig("pool", servers)  # type: ignore[arg-type]
        self.assertEqual(upstream.servers, (ServerAddress("a", 1),))


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
            "keepalive_timeout, keepalive_requests)",
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

    def test_unknownBalance(self) -> None:
        self.assertError(
            "servers = a:1\nbalance = least_conn\n",
            "balance: unknown method 'least_conn' (known: round_robin)",
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


class ClientTimeoutTests(SynchronousTestCase):
    def test_clientTimeout(self):
        text = "[manualb]\nlisten = tcp:0\n{}[upstream u]\nservers = a:1\n[route r]\npath = /\nupstream = u\n"
        self.assertEqual(parseConfig(text.format("")).client_timeout, 60.0)
        self.assertEqual(parseConfig(text.format("client_timeout = 1m30s\n")).client_timeout, 90.0)
        with self.assertRaises(ConfigError) as caught:
            parseConfig(text.format("client_timeout = soon\n"), "f.ini")
        self.assertIn("f.ini: [manualb] client_timeout: ", str(caught.exception))
