"""
Tests for L{manualb.config}, L{manualb.configfile} and L{manualb.syntax}.
"""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from manualb import syntax as syntaxModule
from manualb.config import (
    SCHEMES,
    GatekeeperConfig,
    EXACT,
    PREFIX,
    PREFIX_NO_REGEX,
    REGEX,
    REGEX_CASELESS,
    CertificateConfig,
    Config,
    ConfigError,
    HealthCheckConfig,
    ListenerConfig,
    RouteConfig,
    ServerAddress,
    ServerConfig,
    StreamConfig,
    TLSConfig,
    UpstreamConfig,
)
from manualb.config import keys as declaredKeys
from manualb.configfile import KNOWN_KEYS, loadConfig, parseConfig
from manualb.syntax import DEFAULT_PORTS, formatDuration, parseDuration, parseSize

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
client_timeout = 30s
redirect_https = 8443

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
body=ok host=www.example type=http
tunnel_timeout = 5m
tls_verify = on
tls_name = Internal.Example

[upstream spare]
servers = spare.example:80

[upstream secure]
servers =
    https://secure.example
    https://[2001:db8::2]:8443 weight=2
tls_verify = off

[route api]
path = /api/
upstream = spare

[route default]
path = /
upstream = my_backend_pool

[route static]
host = *.Example.COM
path = ^~ /static/
strip_prefix = on
upstream = spare

[route login]
host = www.example.com
path = = /login
upstream = secure

[route images]
host = *
path = ~* \.(gif|jpg)$
upstream = spare

[route old]
path = ~ ^/old/
rewrite = ^/old/(.*)$ /new/$1
strip_prefix = off
upstream = my_backend_pool

[listener admin]
listen = tcp:9090
    tcp:9091
routes = login api
redirect_https = on

[stream postgres]
listen = tcp:5432
upstream = spare
proxy_protocol = v2
idle_timeout = 1h
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
                            type="http",
                        ),
                        tunnel_timeout=300.0,
                        tls_verify=True,
                        tls_name="internal.example",
                    ),
                    "spare": UpstreamConfig(
                        name="spare",
                        servers=(ServerConfig(ServerAddress("spare.example", 80)),),
                    ),
                    "secure": UpstreamConfig(
                        name="secure",
                        servers=(
                            ServerConfig(ServerAddress("secure.example", 443, "https")),
                            ServerConfig(
                                ServerAddress("2001:db8::2", 8443, "https"), weight=2
                            ),
                        ),
                        tls_verify=False,
                    ),
                },
                routes=(
                    RouteConfig("api", "/api/", "spare"),
                    RouteConfig("default", "/", "my_backend_pool"),
                    RouteConfig(
                        "static",
                        "/static/",
                        "spare",
                        match=PREFIX_NO_REGEX,
                        host="*.example.com",
                        strip_prefix=True,
                    ),
                    RouteConfig(
                        "login", "/login", "secure", match=EXACT, host="www.example.com"
                    ),
                    RouteConfig(
                        "images", "\\.(gif|jpg)$", "spare", match=REGEX_CASELESS
                    ),
                    RouteConfig(
                        "old",
                        "^/old/",
                        "my_backend_pool",
                        match=REGEX,
                        rewrite=("^/old/(.*)$", "/new/$1"),
                    ),
                ),
                client_timeout=30.0,
                listeners=(
                    ListenerConfig(
                        "default",
                        ("tcp:8080", "tcp6:8443:interface=\\:\\:1"),
                        None,
                        8443,
                    ),
                    ListenerConfig(
                        "admin", ("tcp:9090", "tcp:9091"), ("login", "api"), 443
                    ),
                ),
                tls=None,
                streams=(
                    StreamConfig(
                        "postgres",
                        ("tcp:5432",),
                        "spare",
                        proxy_protocol="v2",
                        idle_timeout=3600.0,
                    ),
                ),
                gatekeeper=GatekeeperConfig(
                    client_header_timeout=30.0,
                    client_body_timeout=30.0,
                    keepalive_timeout=30.0,
                ),
            ),
        )
        self.assertEqual(
            list(config.upstreams), ["my_backend_pool", "spare", "secure"]
        )

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
                tls_verify=True,
                tls_ca=None,
                tls_name=None,
                tunnel_timeout=3600.0,
            ),
        )
        self.assertEqual(
            config.routes,
            (
                RouteConfig(
                    "default",
                    "/",
                    "pool",
                    match=PREFIX,
                    host=None,
                    strip_prefix=False,
                    rewrite=None,
                ),
            ),
        )
        self.assertEqual(
            config.listeners,
            (
                ListenerConfig(
                    "default", ("tcp:8080",), routes=None, redirect_https=None
                ),
            ),
        )
        self.assertEqual((config.tls, config.streams), (None, ()))

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


def _assertNothingToListenOn(
    self: SynchronousTestCase, text: str, expected: str
) -> ConfigError:
    """
    C{text} is a good file for an embedder, which listens on nothing; it is
    refused with C{expected} when it must listen (C{requireListen}).
    """
    config = parseConfig(text, "lb.ini")
    self.assertEqual((config.listeners, config.streams), ((), ()))
    error = self.assertRaises(
        ConfigError, parseConfig, text, "lb.ini", requireListen=True
    )
    self.assertEqual(str(error), expected)
    return error


class SectionErrorTests(SynchronousTestCase):
    """
    Unknown, misnamed or missing sections and keys are reported.
    """

    def assertError(self, text: str, expected: str) -> None:
        error = self.assertRaises(ConfigError, parseConfig, text, "lb.ini")
        self.assertEqual(str(error), expected)

    assertNothingToListenOn = _assertNothingToListenOn

    def test_unknownSection(self) -> None:
        self.assertError(
            MAIN + "[upstreams pool]\n",
            "lb.ini: [upstreams pool]: unknown section "
            "(known sections: [manualb], [gatekeeper], [upstream NAME], [route NAME], "
            "[listener NAME], [stream NAME], [tls], [acme]); did you mean [upstream pool]?",
        )

    def test_defaultIsUnknown(self) -> None:
        """
        C{[DEFAULT]} has no special meaning: it is just an unknown section.
        """
        self.assertError(
            "[DEFAULT]\nlisten = tcp:8080\n" + MAIN,
            "lb.ini: [DEFAULT]: unknown section "
            "(known sections: [manualb], [gatekeeper], [upstream NAME], [route NAME], "
            "[listener NAME], [stream NAME], [tls], [acme])",
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
            "(known keys: listen, access_log, log_format, client_timeout, shutdown_timeout, "
            "admin, admin_token_file, explain_records, workers, state, instance, front_end, "
            "server_tokens, error_page, redirect_https, include); "
            "did you mean 'access_log'?",
        )

    def test_unknownKeyInUpstream(self) -> None:
        self.assertError(
            MAIN + UPSTREAM + "timeout = 5s\n",
            "lb.ini: [upstream pool] timeout: unknown key (known keys: servers, "
            "balance, connect_timeout, read_timeout, send_timeout, keepalive, "
            "keepalive_timeout, keepalive_requests, passive_fail_on, tries, "
            "retry_timeout, retry_body_limit, health_check, tunnel_timeout, "
            "tls_verify, tls_ca, tls_name); did you mean 'send_timeout'?",
        )

    def test_unknownKeyInRoute(self) -> None:
        self.assertError(
            MAIN + UPSTREAM + ROUTE + "backend = pool\n",
            "lb.ini: [route default] backend: unknown key "
            "(known keys: path, upstream, host, strip_prefix, rewrite, allow, "
            "deny, waf, waf_level, rate, client_max_body_size, set_header, "
            "hide_header, pass_header, add_header, redirect_https, error_page, gzip, "
            "connect_timeout, read_timeout, send_timeout, tries, hsts, "
            "rate_key, return, gzip_types, gzip_min_length)",
        )

    def test_missingMain(self) -> None:
        self.assertNothingToListenOn(
            UPSTREAM + ROUTE,
            "lb.ini: [manualb]: missing section (it holds 'listen', which is required)",
        )

    def test_emptyFile(self) -> None:
        self.assertNothingToListenOn(
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

    assertNothingToListenOn = _assertNothingToListenOn

    def test_noListen(self) -> None:
        """
        Without C{[listener]} or C{[stream]} sections, C{listen} is needed
        by a process that serves the file.
        """
        error = self.assertNothingToListenOn(
            "[manualb]\naccess_log = -\n" + UPSTREAM + ROUTE,
            "lb.ini: [manualb] listen: nothing to listen on: give endpoints "
            "here, such as listen = tcp:8080, or add a [listener NAME] or "
            "[stream NAME] section",
        )
        self.assertEqual(
            (error.source, error.section, error.key), ("lb.ini", "manualb", "listen")
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
            "ftp://a:21",
            "unsupported scheme 'ftp' in 'ftp://a:21' (supported: http, https)",
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
            "max_fails, fail_timeout, backup, down, slow_start, max_conns, route); "
            "did you mean 'weight'?",
        )

    def test_unknownFlag(self) -> None:
        self.assertServerError(
            "a:1 bakup",
            "unknown option 'bakup' in 'a:1 bakup' (known options: weight, "
            "max_fails, fail_timeout, backup, down, slow_start, max_conns, route); "
            "did you mean 'backup'?",
        )

    def test_optionsAreCaseSensitive(self) -> None:
        self.assertServerError(
            "a:1 Weight=3",
            "unknown option 'Weight' in 'a:1 Weight=3' (known options: weight, "
            "max_fails, fail_timeout, backup, down, slow_start, max_conns, route); "
            "did you mean 'weight'?",
        )

    def test_twoServersOnOneLine(self) -> None:
        """
        A second address on a line is an unknown option: one server per line.
        """
        self.assertServerError(
            "a:1 b:1",
            "unknown option 'b:1' in 'a:1 b:1' (known options: weight, "
            "max_fails, fail_timeout, backup, down, slow_start, max_conns, route)",
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
                type="http",
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
            "timeout, rise, fall, expect, body, host, type); did you mean 'interval'?",
        )

    def test_missingEquals(self) -> None:
        self.assertHealthError(
            "/healthz",
            "expected name=value, got '/healthz' in '/healthz' (known names: path, "
            "interval, timeout, rise, fall, expect, body, host, type)",
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

    def test_typeDefaultsToHTTP(self) -> None:
        check = self.healthCheck("rise=3")
        assert check is not None
        self.assertEqual(check.type, "http")

    def test_typeHTTP(self) -> None:
        self.assertEqual(
            self.healthCheck("type=http path=/up"),
            HealthCheckConfig(path="/up", type="http"),
        )

    def test_typeTCP(self) -> None:
        """
        A TCP check takes the timing options; its type is lower-cased.
        """
        self.assertEqual(
            self.healthCheck("type=TCP interval=1s timeout=500ms rise=1 fall=2"),
            HealthCheckConfig(interval=1.0, timeout=0.5, rise=1, fall=2, type="tcp"),
        )

    def test_badType(self) -> None:
        self.assertHealthError(
            "type=udp", "bad type in 'type=udp': expected http or tcp, got 'udp'"
        )

    def test_typeTCPRefusesHTTPOptions(self) -> None:
        """
        C{path}, C{expect}, C{body} and C{host} are about the request and its
        response, which a TCP check does not have.
        """
        for option in ["path=/up", "expect=2xx", "body=ok", "host=a.example"]:
            name = option.split("=")[0]
            self.assertHealthError(
                f"type=tcp {option}",
                f"option {name!r} does not apply to type=tcp in "
                f"'type=tcp {option}' (a TCP check only connects; use "
                f"type=http to send a request)",
            )


class BackendTLSTests(_UpstreamTestCase):
    """
    C{https://} servers and the C{tls_verify}, C{tls_ca} and C{tls_name}
    keys of an upstream.
    """

    def test_httpsServer(self) -> None:
        """
        An https server's port defaults to 443.
        """
        servers = self.upstream(
            "servers = https://a.example\n  HTTPS://b.example:8443\n"
            "  https://[::1]\n  c.example\n"
        ).servers
        self.assertEqual(
            [server.address for server in servers],
            [
                ServerAddress("a.example", 443, "https"),
                ServerAddress("b.example", 8443, "https"),
                ServerAddress("::1", 443, "https"),
                ServerAddress("c.example", 80, "http"),
            ],
        )
        self.assertEqual(servers[0].name, "a.example:443")

    def test_httpsWithPath(self) -> None:
        self.assertError(
            "servers = https://a/x\n",
            "servers: unexpected path in 'https://a/x'; give only "
            "scheme://host:port",
        )

    def test_sameAddressOtherScheme(self) -> None:
        """
        A server is its host and port: the same one given with http and
        https is a duplicate.
        """
        self.assertError(
            "servers = a:443\n  https://a\n",
            "servers: duplicate server 'https://a' (same as 'a:443')",
        )

    def test_defaults(self) -> None:
        upstream = self.upstream("servers = https://a\n")
        self.assertEqual(
            (upstream.tls_verify, upstream.tls_ca, upstream.tls_name),
            (True, None, None),
        )

    def test_keysAllowedWithoutHTTPSServers(self) -> None:
        upstream = self.upstream("servers = a:80\ntls_verify = off\ntls_name = b\n")
        self.assertEqual((upstream.tls_verify, upstream.tls_name), (False, "b"))

    def test_tlsVerify(self) -> None:
        for text, value in [("on", True), ("off", False), ("OFF", False), ("On", True)]:
            upstream = self.upstream(f"servers = https://a\ntls_verify = {text}\n")
            self.assertEqual(upstream.tls_verify, value, text)

    def test_badTLSVerify(self) -> None:
        self.assertError(
            "servers = https://a\ntls_verify = no\n",
            "tls_verify: expected on or off, got 'no'",
        )

    def test_tlsCA(self) -> None:
        """
        C{tls_ca} is relative to the directory of the configuration file,
        and kept as an absolute path.
        """
        directory = self.mktemp()
        os.makedirs(os.path.join(directory, "certs"))
        ca = os.path.join(directory, "certs", "ca.pem")
        with open(ca, "w") as f:
            f.write("ca\n")
        path = os.path.join(directory, "lb.ini")
        with open(path, "w") as f:
            f.write(
                MAIN
                + "[upstream pool]\nservers = https://a\ntls_ca = certs/ca.pem\n"
                + ROUTE
            )
        self.assertEqual(
            loadConfig(path).upstreams["pool"].tls_ca, os.path.abspath(ca)
        )

    def test_tlsCAAbsolute(self) -> None:
        ca = os.path.abspath(self.mktemp())
        with open(ca, "w") as f:
            f.write("ca\n")
        upstream = self.upstream(f"servers = https://a\ntls_ca = {ca}\n")
        self.assertEqual(upstream.tls_ca, ca)

    def test_missingTLSCA(self) -> None:
        error = self.assertRaises(
            ConfigError, self.upstream, "servers = https://a\ntls_ca = nope.pem\n"
        )
        self.assertEqual(
            error.message,
            f"no such file 'nope.pem' ({os.path.abspath('nope.pem')})",
        )
        self.assertEqual(error.key, "tls_ca")

    def test_tlsCAIsADirectory(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        self.assertError(
            f"servers = https://a\ntls_ca = {directory}\n",
            f"tls_ca: not a file: {directory!r}",
        )

    def test_unreadableTLSCA(self) -> None:
        ca = os.path.abspath(self.mktemp())
        with open(ca, "w") as f:
            f.write("ca\n")
        # Checked with os.access, which is always true for root: pretend.
        self.patch(syntaxModule.os, "access", lambda path, mode: False)
        self.assertError(
            f"servers = https://a\ntls_ca = {ca}\n",
            f"tls_ca: cannot read {ca!r}: permission denied",
        )

    def test_tlsCAWithoutVerify(self) -> None:
        ca = os.path.abspath(self.mktemp())
        with open(ca, "w") as f:
            f.write("ca\n")
        self.assertError(
            f"servers = https://a\ntls_verify = off\ntls_ca = {ca}\n",
            "tls_ca: has no use with tls_verify = off, which trusts any "
            "certificate; remove one of them",
        )

    def test_tlsName(self) -> None:
        upstream = self.upstream("servers = https://10.0.0.1\ntls_name = API.Example\n")
        self.assertEqual(upstream.tls_name, "api.example")

    def test_tlsNameWildcard(self) -> None:
        self.assertError(
            "servers = https://a\ntls_name = *.example.com\n",
            "tls_name: expected a host name without wildcard, got '*.example.com'",
        )

    def test_tlsNameWithPort(self) -> None:
        self.assertError(
            "servers = https://a\ntls_name = api.example:443\n",
            "tls_name: a host name has no port, got 'api.example:443'",
        )

    def test_badTLSName(self) -> None:
        self.assertError(
            "servers = https://a\ntls_name = api_1.example\n",
            "tls_name: bad host name 'api_1.example' (expected letters, digits "
            "and '-' in labels separated by dots, such as www.example.com)",
        )


class TunnelTimeoutTests(_UpstreamTestCase):
    """
    C{tunnel_timeout}: HAProxy's C{timeout tunnel}, for upgraded
    connections.
    """

    def test_default(self) -> None:
        self.assertEqual(self.upstream("servers = a:1\n").tunnel_timeout, 3600.0)

    def test_value(self) -> None:
        upstream = self.upstream("servers = a:1\ntunnel_timeout = 1d\n")
        self.assertEqual(upstream.tunnel_timeout, 86400.0)

    def test_zero(self) -> None:
        self.assertError(
            "servers = a:1\ntunnel_timeout = 0\n",
            "tunnel_timeout: must be greater than zero, got '0'",
        )

    def test_bad(self) -> None:
        self.assertError(
            "servers = a:1\ntunnel_timeout = forever\n",
            "tunnel_timeout: bad duration 'forever': expected a number at 'forever'",
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
        config = parseConfig(self.text)
        upstream = config.upstreams["my_backend_pool"]
        self.assertEqual(upstream.balance, "round_robin")
        self.assertTrue(any(server.backup for server in upstream.servers))
        self.assertIsNone(upstream.health_check)
        self.assertEqual(
            config.listeners, (ListenerConfig("default", ("tcp:8080",)),)
        )
        self.assertEqual((config.tls, config.streams), (None, ()))

    def test_commentedExamples(self) -> None:
        """
        The lines given as examples, commented out with C{#}, are valid once
        uncommented, all together (with the files they name).
        """
        lines = self.text.splitlines(keepends=True)
        examples = [line[1:] for line in lines if line.startswith("#")]
        text = "".join(line[1:] if line.startswith("#") else line for line in lines)
        files = re.findall(r"\S+\.(?:pem|key|token|html)\b", "".join(examples))
        self.assertTrue(files)
        directory = makeFiles(self, *files)
        path = os.path.join(directory, "lb.ini")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        config = loadConfig(path)

        upstream = config.upstreams["my_backend_pool"]
        self.assertTrue(upstream.passive_fail_on)
        self.assertIsNotNone(upstream.health_check)
        secure = config.upstreams["secure_pool"]
        self.assertEqual(
            {server.address.scheme for server in secure.servers}, {"https"}
        )
        self.assertEqual(
            secure.tls_ca, os.path.join(directory, "certs", "backend-ca.pem")
        )
        self.assertIsNotNone(secure.tls_name)
        self.assertEqual(
            [(route.match, route.host is not None) for route in config.routes],
            [(PREFIX, False), (PREFIX_NO_REGEX, True), (EXACT, False),
             (REGEX_CASELESS, True), (EXACT, False), (PREFIX_NO_REGEX, False)],
        )
        self.assertEqual(config.routes[4].answer, (200, "ok"))
        self.assertFalse(config.routes[5].redirect_https)
        self.assertTrue(config.routes[0].gzip)
        self.assertFalse(config.server_tokens)
        self.assertEqual(len(config.listeners[1].error_page), 3)
        self.assertIsNotNone(config.routes[0].rewrite)
        self.assertTrue(config.routes[1].strip_prefix)
        self.assertEqual(
            [(listener.name, listener.redirect_https) for listener in config.listeners],
            [("default", 443), ("public", 443)],
        )
        self.assertTrue(any(e.startswith("sni:") for e in config.listeners[1].listen))
        assert config.tls is not None
        self.assertEqual(len(config.tls.certificates), 2)
        self.assertIsNotNone(config.tls.hsts)
        self.assertIsNotNone(config.tls.ciphers)
        self.assertEqual([stream.name for stream in config.streams], ["postgres"])
        check = config.upstreams["postgres"].health_check
        assert check is not None
        self.assertEqual(check.type, "tcp")

    def test_examplesUseHash(self) -> None:
        """
        Examples are commented out with C{#}; C{;} starts explanations only.
        """
        self.assertEqual(re.findall(r"(?m)^;\w+ *=.*$", self.text), [])

    def test_everyKeyDocumented(self) -> None:
        """
        Every key of every kind of section is given (or given as an
        example) below a comment that explains it.
        """
        known = KNOWN_KEYS
        documented: set[tuple[str, str]] = set()
        kind = ""
        previous = ""
        for line in self.text.splitlines():
            header = re.match(r"#?\[(\w+)", line)
            if header:
                kind = header.group(1)
            key = re.match(r"#?(\w+) *=", line)
            if key and previous.startswith(";"):
                documented.add((kind, key.group(1)))
            previous = line
        missing = [
            f"[{kind}] {key}"
            for kind, keys in known.items()
            for key in keys
            if (kind, key) not in documented
        ]
        self.assertEqual(missing, [])


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


class _RouteTestCase(SynchronousTestCase):
    """
    Helpers for the tests of the keys of C{[route r]}.
    """

    def route(self, keys: str) -> RouteConfig:
        """
        Parse a file whose only route is C{[route r]} with C{keys} (and its
        upstream).
        """
        (route,) = parseConfig(
            MAIN + UPSTREAM + "[route r]\nupstream = pool\n" + keys
        ).routes
        return route

    def assertError(self, keys: str, expected: str) -> ConfigError:
        """
        A file whose C{[route r]} has C{keys} is refused with C{expected},
        after the file and section.
        """
        text = MAIN + UPSTREAM + "[route r]\nupstream = pool\n" + keys
        error = self.assertRaises(ConfigError, parseConfig, text, "lb.ini")
        self.assertEqual(str(error), "lb.ini: [route r] " + expected)
        return error


class RoutePathTests(_RouteTestCase):
    """
    C{path} in nginx's C{location} syntax: a prefix, C{^~} prefix, C{=}
    exact path, C{~} regex or C{~*} case-insensitive regex.
    """

    def test_forms(self) -> None:
        for text, match, path in [
            ("/app", PREFIX, "/app"),
            ("^~ /static/", PREFIX_NO_REGEX, "/static/"),
            ("= /login", EXACT, "/login"),
            ("~ ^/app/.*\\.php$", REGEX, "^/app/.*\\.php$"),
            ("~* \\.(gif|jpg)$", REGEX_CASELESS, "\\.(gif|jpg)$"),
            ("~   ^/a", REGEX, "^/a"),
            ("=\t/", EXACT, "/"),
        ]:
            route = self.route(f"path = {text}\n")
            self.assertEqual((route.match, route.path), (match, path), text)

    def test_gluedModifier(self) -> None:
        """
        nginx accepts C{=/login}; here the modifier takes a space after it.
        """
        for text, modifier, rest in [
            ("=/login", "=", "/login"),
            ("^~/static", "^~", "/static"),
            ("~^/a", "~", "^/a"),
            ("~*\\.jpg$", "~*", "\\.jpg$"),
        ]:
            self.assertError(
                f"path = {text}\n",
                f"path: put a space after the modifier {modifier!r}, as in "
                f"{modifier} {rest}",
            )

    def test_modifierAlone(self) -> None:
        self.assertError(
            "path = =\n", "path: '=' needs a path after it, such as = /app"
        )
        self.assertError(
            "path = ~*\n", "path: '~*' needs a path after it, such as ~* \\.php$"
        )

    def test_relativePathAfterModifier(self) -> None:
        self.assertError(
            "path = ^~ static/\n",
            "path: the path after '^~' must start with '/', got 'static/'",
        )
        self.assertError(
            "path = = login\n",
            "path: the path after '=' must start with '/', got 'login'",
        )

    def test_spaces(self) -> None:
        self.assertError(
            "path = = /a b\n", "path: must not contain spaces, got '= /a b'"
        )
        self.assertError(
            "path = ~ ^/a b$\n", "path: must not contain spaces, got '~ ^/a b$'"
        )

    def test_badRegex(self) -> None:
        self.assertError(
            "path = ~ ^/(a\n",
            "path: not a valid regular expression '^/(a': missing ), "
            "unterminated subpattern at position 2",
        )

    def test_badCaselessRegex(self) -> None:
        self.assertError(
            "path = ~* [z-a]\n",
            "path: not a valid regular expression '[z-a]': bad character range "
            "z-a at position 1",
        )

    def test_regexOnlyValidForText(self) -> None:
        """
        Paths are matched as bytes, so a regex must compile as bytes too.
        """
        self.assertError(
            "path = ~ (?u)^/a\n",
            "path: not a valid regular expression '(?u)^/a': bad inline flags: "
            "cannot use 'u' flag with a bytes pattern at position 3",
        )


class RouteHostTests(_RouteTestCase):
    """
    C{host}: the name, C{*.wildcard} or C{*} (any) a route serves, as nginx's
    C{server_name}.
    """

    def host(self, text: str) -> str | None:
        return self.route(f"path = /\nhost = {text}\n").host

    def test_absent(self) -> None:
        self.assertIsNone(self.route("path = /\n").host)

    def test_any(self) -> None:
        self.assertIsNone(self.host("*"))

    def test_name(self) -> None:
        self.assertEqual(self.host("WWW.Example.com"), "www.example.com")
        self.assertEqual(self.host("localhost"), "localhost")
        self.assertEqual(self.host("10.0.0.1"), "10.0.0.1")
        self.assertEqual(self.host("my-host.example"), "my-host.example")

    def test_wildcard(self) -> None:
        self.assertEqual(self.host("*.Example.com"), "*.example.com")

    def assertHostError(self, text: str, expected: str) -> None:
        self.assertError(f"path = /\nhost = {text}\n", "host: " + expected)

    def test_port(self) -> None:
        self.assertHostError(
            "www.example.com:8080",
            "a host name has no port, got 'www.example.com:8080'",
        )

    def test_wildcardNotLeading(self) -> None:
        for text in ["www.*.com", "*.*.example.com", "*example.com", "example.*", "**"]:
            self.assertHostError(
                text,
                f"a wildcard is allowed only as one leading '*.', such as "
                f"*.example.com, got {text!r}",
            )

    def test_bad(self) -> None:
        for text in ["a_b.example", "a..b", ".example.com", "example.com.", "*.",
                     "[::1]", "::1", "caf\u00e9.example", "a/b"]:
            self.assertHostError(
                text,
                f"bad host name {text!r} (expected letters, digits and '-' in "
                f"labels separated by dots, such as www.example.com or "
                f"*.example.com)",
            )

    def test_twoHosts(self) -> None:
        self.assertHostError(
            "a.example b.example",
            "expected one host, got 'a.example b.example' (give each host a "
            "route of its own)",
        )


class StripPrefixTests(_RouteTestCase):
    """
    C{strip_prefix = on|off}, for prefix routes.
    """

    def test_default(self) -> None:
        self.assertFalse(self.route("path = /api/\n").strip_prefix)

    def test_onAndOff(self) -> None:
        for path in ["/api/", "^~ /api/"]:
            for text, value in [("on", True), ("ON", True), ("off", False)]:
                route = self.route(f"path = {path}\nstrip_prefix = {text}\n")
                self.assertEqual(route.strip_prefix, value, (path, text))

    def test_offOnAnyRoute(self) -> None:
        self.assertFalse(self.route("path = = /a\nstrip_prefix = off\n").strip_prefix)

    def test_bad(self) -> None:
        self.assertError(
            "path = /a\nstrip_prefix = yes\n",
            "strip_prefix: expected on or off, got 'yes'",
        )

    def test_notPrefix(self) -> None:
        for path in ["= /api", "~ ^/api/", "~* ^/api/"]:
            self.assertError(
                f"path = {path}\nstrip_prefix = on\n",
                f"strip_prefix: needs a prefix path (such as /app or ^~ /app), "
                f"but the path is {path!r}",
            )


class RewriteTests(_RouteTestCase):
    """
    C{rewrite = REGEX REPLACEMENT}, as nginx's C{rewrite}.
    """

    def rewrite(self, text: str) -> tuple[str, str] | None:
        return self.route(f"path = /\nrewrite = {text}\n").rewrite

    def test_absent(self) -> None:
        self.assertIsNone(self.route("path = /\n").rewrite)

    def test_keptAsWritten(self) -> None:
        self.assertEqual(
            self.rewrite("^/old/(.*)$    /new/$1"), ("^/old/(.*)$", "/new/$1")
        )

    def test_groups(self) -> None:
        self.assertEqual(
            self.rewrite("^/(a)/(b)/(?P<c>c)$ /$3/$2/$1$1"),
            ("^/(a)/(b)/(?P<c>c)$", "/$3/$2/$1$1"),
        )

    def test_noGroups(self) -> None:
        self.assertEqual(self.rewrite("^/old /new"), ("^/old", "/new"))

    def test_withPrefixRoute(self) -> None:
        route = self.route("path = ^~ /app\nrewrite = ^/app(.*) /v2$1\n")
        self.assertEqual(route.rewrite, ("^/app(.*)", "/v2$1"))

    def test_withStripPrefixOff(self) -> None:
        route = self.route("path = /app\nstrip_prefix = off\nrewrite = ^/a /b\n")
        self.assertEqual(route.rewrite, ("^/a", "/b"))

    def assertRewriteError(self, text: str, expected: str) -> None:
        self.assertError(f"path = /\nrewrite = {text}\n", "rewrite: " + expected)

    def test_oneField(self) -> None:
        self.assertRewriteError(
            "^/old",
            "expected a regular expression and a replacement separated by a "
            "space, such as ^/old/(.*)$ /new/$1, got '^/old'",
        )

    def test_threeFields(self) -> None:
        self.assertRewriteError(
            "^/a /b /c",
            "expected a regular expression and a replacement separated by a "
            "space, such as ^/old/(.*)$ /new/$1, got '^/a /b /c'",
        )

    def test_nginxFlag(self) -> None:
        self.assertRewriteError(
            "^/a /b permanent",
            "nginx's rewrite flags such as 'permanent' are not supported, got "
            "'^/a /b permanent' (give only REGEX REPLACEMENT)",
        )

    def test_badRegex(self) -> None:
        self.assertRewriteError(
            "^/(a /b",
            "not a valid regular expression '^/(a': missing ), unterminated "
            "subpattern at position 2",
        )

    def test_relativeReplacement(self) -> None:
        self.assertRewriteError(
            "^/(.*) $1", "the replacement must start with '/', got '$1'"
        )

    def test_missingGroup(self) -> None:
        self.assertRewriteError(
            "^/(a)/b /$1/$2",
            "the replacement '/$1/$2' uses $2, but '^/(a)/b' has 1 group(s)",
        )

    def test_noGroupAtAll(self) -> None:
        self.assertRewriteError(
            "^/a /$1", "the replacement '/$1' uses $1, but '^/a' has 0 group(s)"
        )

    def test_notAGroup(self) -> None:
        for replacement in ["/$0", "/$uri", "/a$", "/$$1"]:
            self.assertRewriteError(
                f"^/(a) {replacement}",
                f"'$' must be followed by a group number from 1 to 9 in "
                f"{replacement!r} (nginx variables such as $uri are not "
                f"supported)",
            )

    def test_withStripPrefix(self) -> None:
        self.assertError(
            "path = /app/\nstrip_prefix = on\nrewrite = ^/app/(.*)$ /$1\n",
            "rewrite: cannot be used together with strip_prefix = on; let the "
            "rewrite remove the prefix too, such as rewrite = ^/app/(.*)$ /$1",
        )


class RouteDuplicateTests(SynchronousTestCase):
    """
    No two routes have the same host, kind of path and path.
    """

    def routes(self, *routes: str) -> tuple[RouteConfig, ...]:
        text = MAIN + UPSTREAM
        for index, keys in enumerate(routes):
            text += f"[route r{index}]\nupstream = pool\n{keys}"
        return parseConfig(text, "lb.ini").routes

    def assertError(self, expected: str, *routes: str) -> None:
        error = self.assertRaises(ConfigError, self.routes, *routes)
        self.assertEqual(str(error), expected)

    def test_samePathOtherHosts(self) -> None:
        routes = self.routes(
            "path = /\n",
            "path = /\nhost = a.example\n",
            "path = /\nhost = *.a.example\n",
            "path = /\nhost = b.example\n",
        )
        self.assertEqual(
            [route.host for route in routes],
            [None, "a.example", "*.a.example", "b.example"],
        )

    def test_samePathOtherKinds(self) -> None:
        """
        An exact path, a prefix and a regex may be the same text; so may a
        regex and a case-insensitive one.
        """
        routes = self.routes(
            "path = /a\n", "path = = /a\n", "path = ~ /a\n", "path = ~* /a\n"
        )
        self.assertEqual(
            [route.match for route in routes], [PREFIX, EXACT, REGEX, REGEX_CASELESS]
        )

    def test_sameHostAndPath(self) -> None:
        self.assertError(
            "lb.ini: [route r1] path: path '/' for host 'a.example' is already "
            "used by [route r0]",
            "path = /\nhost = a.example\n",
            "path = /\nhost = A.Example\n",
        )

    def test_anyHostSpelledTwoWays(self) -> None:
        self.assertError(
            "lb.ini: [route r1] path: path '/' is already used by [route r0]",
            "path = /\n",
            "path = /\nhost = *\n",
        )

    def test_sameExactPath(self) -> None:
        self.assertError(
            "lb.ini: [route r1] path: path '= /a' is already used by [route r0]",
            "path = = /a\n",
            "path = = /a\n",
        )

    def test_sameRegex(self) -> None:
        self.assertError(
            "lb.ini: [route r1] path: path '~* \\\\.jpg$' for host '*.example.com' "
            "is already used by [route r0]",
            "path = ~* \\.jpg$\nhost = *.example.com\n",
            "path = ~* \\.jpg$\nhost = *.example.com\n",
        )

    def test_prefixWithAndWithoutNoRegex(self) -> None:
        """
        As in nginx, C{/a} and C{^~ /a} are the same prefix given twice.
        """
        self.assertError(
            "lb.ini: [route r1] path: path '^~ /a' is already used by [route r0] "
            "(as '/a': a prefix is given once, with or without ^~)",
            "path = /a\n",
            "path = ^~ /a\n",
        )


def makeFiles(testCase: SynchronousTestCase, *names: str) -> str:
    """
    Make an empty file for each of C{names} (relative paths, directories
    made as needed) in a new directory; return the directory's absolute
    path.
    """
    directory = os.path.abspath(testCase.mktemp())
    os.makedirs(directory)
    for name in names:
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write("-----BEGIN PLACEHOLDER-----\n")
    return directory


class _TLSTestCase(SynchronousTestCase):
    """
    Files for a C{[tls]} section: C{self.directory} holds C{www.pem},
    C{www.key}, C{any.pem} and C{any.key}; C{self.tls} is a C{[tls]} section
    with the first two, by absolute path.
    """

    def setUp(self) -> None:
        self.directory = makeFiles(self, "www.pem", "www.key", "any.pem", "any.key")
        self.tls = "[tls]\ncertificates = www.example.com {} {}\n".format(
            self.path("www.pem"), self.path("www.key")
        )

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)


class ListenTests(SynchronousTestCase):
    """
    C{[manualb] listen} and C{[listener NAME]} sections: the HTTP listeners.
    """

    def parse(self, text: str) -> Config:
        return parseConfig(text, "lb.ini")

    def assertError(self, text: str, expected: str) -> ConfigError:
        error = self.assertRaises(ConfigError, parseConfig, text, "lb.ini")
        self.assertEqual(str(error), expected)
        return error

    assertNothingToListenOn = _assertNothingToListenOn

    def test_defaultListener(self) -> None:
        config = self.parse("[manualb]\nlisten = tcp:80\n  tcp:81\n" + UPSTREAM + ROUTE)
        self.assertEqual(
            config.listeners,
            (ListenerConfig("default", ("tcp:80", "tcp:81"), None, None),),
        )

    def test_listenersInFileOrder(self) -> None:
        """
        The default listener comes first, then the sections in file order.
        """
        config = self.parse(
            "[listener b]\nlisten = tcp:82\n"
            + MAIN
            + UPSTREAM
            + ROUTE
            + "[route api]\npath = /api\nupstream = pool\n"
            + "[listener a]\nlisten = tcp:81\n  unix:/tmp/a.sock\n"
            + "routes = api default\n"
        )
        self.assertEqual(
            config.listeners,
            (
                ListenerConfig("default", ("tcp:8080",)),
                ListenerConfig("b", ("tcp:82",)),
                ListenerConfig("a", ("tcp:81", "unix:/tmp/a.sock"), ("api", "default")),
            ),
        )
        self.assertEqual(config.listen, ("tcp:8080",))

    def test_listenOptionalWithListener(self) -> None:
        config = self.parse(
            "[manualb]\naccess_log = off\n[listener web]\nlisten = tcp:80\n"
            + UPSTREAM
            + ROUTE
        )
        self.assertEqual(config.listen, ())
        self.assertEqual(config.listeners, (ListenerConfig("web", ("tcp:80",)),))
        self.assertIsNone(config.access_log)

    def test_mainOptionalWithListener(self) -> None:
        """
        Without C{[manualb]}, its keys take their defaults.
        """
        config = self.parse("[listener web]\nlisten = tcp:80\n" + UPSTREAM + ROUTE)
        self.assertEqual(
            (config.listen, config.access_log, config.client_timeout),
            ((), "-", 60.0),
        )
        self.assertEqual([listener.name for listener in config.listeners], ["web"])

    def test_emptyListenWithListener(self) -> None:
        """
        An empty C{listen} is still a mistake: leave the key out instead.
        """
        self.assertError(
            "[manualb]\nlisten =\n[listener web]\nlisten = tcp:80\n" + UPSTREAM + ROUTE,
            "lb.ini: [manualb] listen: needs at least one endpoint, such as tcp:8080",
        )

    def test_listenerWithoutName(self) -> None:
        self.assertError(
            MAIN + "[listener]\nlisten = tcp:81\n",
            "lb.ini: [listener]: section needs a name: [listener NAME]",
        )

    def test_unknownKey(self) -> None:
        self.assertError(
            MAIN + "[listener web]\nlisten = tcp:81\nport = 81\n",
            "lb.ini: [listener web] port: unknown key "
            "(known keys: listen, routes, redirect_https, error_page, hsts, front_end)",
        )

    def test_missingListen(self) -> None:
        self.assertError(
            MAIN + UPSTREAM + ROUTE + "[listener web]\nroutes = default\n",
            "lb.ini: [listener web] listen: missing required key",
        )

    def test_emptyListenerListen(self) -> None:
        self.assertError(
            MAIN + UPSTREAM + ROUTE + "[listener web]\nlisten =\n",
            "lb.ini: [listener web] listen: needs at least one endpoint, such as "
            "tcp:8080",
        )

    def test_badListenerEndpoint(self) -> None:
        self.assertError(
            MAIN + UPSTREAM + ROUTE + "[listener web]\nlisten = xyz:1\n",
            "lb.ini: [listener web] listen: cannot parse endpoint 'xyz:1' "
            "(Unknown endpoint type: 'xyz')",
        )

    def test_duplicateListenerEndpoint(self) -> None:
        self.assertError(
            MAIN + UPSTREAM + ROUTE + "[listener web]\nlisten = tcp:81\n  tcp:81\n",
            "lb.ini: [listener web] listen: duplicate endpoint 'tcp:81'",
        )

    def test_endpointOfMainAndListener(self) -> None:
        self.assertError(
            MAIN + UPSTREAM + ROUTE + "[listener web]\nlisten = tcp:81\n  tcp:8080\n",
            "lb.ini: [listener web] listen: endpoint 'tcp:8080' is already used "
            "by [manualb]",
        )

    def test_endpointOfTwoListeners(self) -> None:
        self.assertError(
            UPSTREAM
            + ROUTE
            + "[listener a]\nlisten = tcp:81\n[listener b]\nlisten = tcp:81\n",
            "lb.ini: [listener b] listen: endpoint 'tcp:81' is already used by "
            "[listener a]",
        )

    def test_nameDefaultTaken(self) -> None:
        self.assertError(
            MAIN + UPSTREAM + ROUTE + "[listener default]\nlisten = tcp:81\n",
            "lb.ini: [listener default]: the name 'default' is taken by the "
            "listen lines of [manualb]; choose another",
        )

    def test_nameDefaultFree(self) -> None:
        """
        Without C{[manualb] listen}, a listener may be called C{default}.
        """
        config = self.parse(UPSTREAM + ROUTE + "[listener default]\nlisten = tcp:81\n")
        self.assertEqual(config.listeners, (ListenerConfig("default", ("tcp:81",)),))

    def test_nothingToListenOn(self) -> None:
        self.assertNothingToListenOn(
            "[manualb]\n" + UPSTREAM + ROUTE,
            "lb.ini: [manualb] listen: nothing to listen on: give endpoints here, "
            "such as listen = tcp:8080, or add a [listener NAME] or [stream NAME] "
            "section",
        )

    def test_noSectionListens(self) -> None:
        """
        Without C{[manualb]} or a section that listens, the file is refused
        as before, by a process that serves the file; these problems are
        found first.
        """
        self.assertNothingToListenOn(
            UPSTREAM + ROUTE,
            "lb.ini: [manualb]: missing section (it holds 'listen', which is "
            "required)",
        )
        error = self.assertRaises(
            ConfigError,
            parseConfig,
            UPSTREAM + ROUTE + "[tls]\ncertificates = a b c\n",
            "lb.ini",
            requireListen=True,
        )
        self.assertEqual(
            str(error),
            "lb.ini: [manualb]: missing section (it holds 'listen', which is "
            "required)",
        )

    def test_routesNeededForListener(self) -> None:
        self.assertError(
            UPSTREAM + "[listener web]\nlisten = tcp:80\n",
            "lb.ini: no [route NAME] section; at least one route is needed, such "
            "as [route default] with path = / and upstream = NAME",
        )


class ListenerRoutesTests(SynchronousTestCase):
    """
    C{routes} of C{[listener NAME]}: the routes it serves.
    """

    ROUTES = (
        MAIN
        + UPSTREAM
        + ROUTE
        + "[route api]\npath = /api\nupstream = pool\n"
        + "[listener web]\nlisten = tcp:81\n"
    )

    def routes(self, value: str) -> tuple[str, ...] | None:
        return parseConfig(self.ROUTES + value).listeners[1].routes

    def assertError(self, value: str, expected: str) -> None:
        error = self.assertRaises(
            ConfigError, parseConfig, self.ROUTES + value, "lb.ini"
        )
        self.assertEqual(str(error), "lb.ini: [listener web] routes: " + expected)

    def test_default(self) -> None:
        self.assertIsNone(self.routes(""))

    def test_some(self) -> None:
        self.assertEqual(self.routes("routes = api\n"), ("api",))
        self.assertEqual(self.routes("routes =   api    default\n"), ("api", "default"))

    def test_unknown(self) -> None:
        self.assertError(
            "routes = api dflt\n",
            "no section [route dflt] (defined routes: default, api)",
        )

    def test_twice(self) -> None:
        self.assertError("routes = api default api\n", "route 'api' given twice")

    def test_empty(self) -> None:
        self.assertError("routes =\n", "empty value")

    def test_severalLines(self) -> None:
        self.assertError(
            "routes = api\n  default\n", "expected a single value, got 2 lines"
        )


class RedirectHTTPSTests(SynchronousTestCase):
    """
    C{redirect_https = off|on|PORT}, of C{[manualb]} (for its listen lines)
    and of C{[listener NAME]}.
    """

    def redirect(self, value: str) -> int | None:
        config = parseConfig(
            MAIN
            + value
            + UPSTREAM
            + ROUTE
            + "[listener web]\nlisten = tcp:81\n"
            + value
        )
        (default, web) = config.listeners
        self.assertEqual(default.redirect_https, web.redirect_https)
        return web.redirect_https

    def test_default(self) -> None:
        self.assertIsNone(self.redirect(""))

    def test_values(self) -> None:
        for text, port in [
            ("off", None),
            ("OFF", None),
            ("on", 443),
            ("On", 443),
            ("8443", 8443),
            ("1", 1),
            ("65535", 65535),
        ]:
            self.assertEqual(self.redirect(f"redirect_https = {text}\n"), port, text)

    def assertError(self, text: str, expected: str) -> None:
        error = self.assertRaises(ConfigError, parseConfig, text, "lb.ini")
        self.assertEqual(str(error), expected)

    def test_bad(self) -> None:
        for text in ["yes", "443s", "-1", "https", "\u0664\u0664\u0663"]:
            self.assertError(
                MAIN + f"redirect_https = {text}\n" + UPSTREAM + ROUTE,
                f"lb.ini: [manualb] redirect_https: expected off, on (port 443) or "
                f"a port number, got {text!r}",
            )

    def test_outOfRange(self) -> None:
        for port in [0, 65536]:
            self.assertError(
                UPSTREAM
                + ROUTE
                + f"[listener web]\nlisten = tcp:80\nredirect_https = {port}\n",
                f"lb.ini: [listener web] redirect_https: port {port} out of range "
                f"1..65535",
            )

    def test_mainWithoutListen(self) -> None:
        self.assertError(
            "[manualb]\nredirect_https = on\n[listener web]\nlisten = tcp:80\n"
            + UPSTREAM
            + ROUTE,
            "lb.ini: [manualb] redirect_https: there is no listen here for it to "
            "apply to; set redirect_https in the [listener NAME] whose connections "
            "should be redirected",
        )

    def test_offWithoutListen(self) -> None:
        config = parseConfig(
            "[manualb]\nredirect_https = off\n[listener web]\nlisten = tcp:80\n"
            + UPSTREAM
            + ROUTE
        )
        self.assertEqual([listener.name for listener in config.listeners], ["web"])


class SNIEndpointTests(_TLSTestCase):
    """
    manualb's C{sni:PORT[:interface=ADDRESS][:tls=FILE]} endpoints: checked
    here rather than by Twisted, and only with a C{[tls]} section.
    """

    def listen(self, *endpoints: str) -> tuple[str, ...]:
        text = "[manualb]\nlisten = " + "\n  ".join(endpoints) + "\n"
        return parseConfig(text + UPSTREAM + ROUTE + self.tls).listen

    def assertError(self, text: str, expected: str) -> None:
        error = self.assertRaises(ConfigError, parseConfig, text, "lb.ini")
        self.assertEqual(str(error), expected)

    def assertBadEndpoint(self, endpoint: str, problem: str) -> None:
        self.assertError(
            f"[manualb]\nlisten = {endpoint}\n" + UPSTREAM + ROUTE + self.tls,
            f"lb.ini: [manualb] listen: cannot parse endpoint {endpoint!r} "
            f"({problem})",
        )

    def test_valid(self) -> None:
        endpoints = (
            "sni:443",
            "sni:0",
            "sni:65535",
            "SNI:8443",
            "sni:444:interface=127.0.0.1",
            "sni:445:interface=\\:\\:1:tls=/etc/manualb/tls.ini",
            "sni:446:tls=a\\=b.ini:interface=10.0.0.1",
            "tcp:80",
        )
        self.assertEqual(self.listen(*endpoints), endpoints)

    def test_listener(self) -> None:
        config = parseConfig(
            MAIN + UPSTREAM + ROUTE + self.tls + "[listener tls]\nlisten = sni:443\n"
        )
        self.assertEqual(config.listeners[1], ListenerConfig("tls", ("sni:443",)))

    def test_needsTLS(self) -> None:
        self.assertError(
            "[manualb]\nlisten = tcp:80\n  sni:443\n" + UPSTREAM + ROUTE,
            "lb.ini: [manualb] listen: endpoint 'sni:443' needs a [tls] section, "
            "whose certificates it serves",
        )
        self.assertError(
            MAIN + UPSTREAM + ROUTE + "[listener tls]\nlisten = sni:443\n",
            "lb.ini: [listener tls] listen: endpoint 'sni:443' needs a [tls] "
            "section, whose certificates it serves",
        )

    def test_missingPort(self) -> None:
        for endpoint in ["sni", "sni:"]:
            problem = (
                "missing port: expected sni:PORT[:interface=ADDRESS][:tls=FILE], "
                "such as sni:443"
                if endpoint == "sni"
                else "bad port '': expected sni:PORT[:interface=ADDRESS]"
                "[:tls=FILE], such as sni:443"
            )
            self.assertBadEndpoint(endpoint, problem)

    def test_badPort(self) -> None:
        for port in ["https", "-1", "port=443", "44 3"]:
            self.assertBadEndpoint(
                f"sni:{port}",
                f"bad port {port!r}: expected sni:PORT[:interface=ADDRESS]"
                f"[:tls=FILE], such as sni:443",
            )

    def test_portOutOfRange(self) -> None:
        self.assertBadEndpoint("sni:65536", "port 65536 out of range 0..65535")

    def test_positionalAfterPort(self) -> None:
        self.assertBadEndpoint(
            "sni:443:127.0.0.1",
            "unexpected '127.0.0.1': after the port, sni: takes only "
            "interface=ADDRESS, backlog=N and tls=FILE",
        )

    def test_unknownKeyword(self) -> None:
        self.assertBadEndpoint(
            "sni:443:queue=50",
            "unknown argument 'queue': after the port, sni: takes only "
            "interface=ADDRESS, backlog=N and tls=FILE",
        )

    def test_keywordTwice(self) -> None:
        self.assertBadEndpoint(
            "sni:443:tls=a:tls=b", "tls given twice"
        )

    def test_emptyKeyword(self) -> None:
        self.assertBadEndpoint("sni:443:interface=", "interface needs a value")

    def test_loneBackslash(self) -> None:
        self.assertBadEndpoint("sni:443:tls=a\\", "it ends with a lone backslash")

    def test_notInStream(self) -> None:
        self.assertError(
            MAIN
            + UPSTREAM
            + ROUTE
            + self.tls
            + "[stream s]\nlisten = sni:5432\nupstream = pool\n",
            "lb.ini: [stream s] listen: endpoint 'sni:5432' cannot be used here: "
            "sni: terminates TLS for HTTP routes, while a stream passes bytes "
            "through (listen with tcp: instead)",
        )

    def test_redirectFromSNIOnly(self) -> None:
        """
        Connections to C{sni:} endpoints are TLS already: a listener with
        only those has nothing to redirect.
        """
        self.assertError(
            MAIN
            + UPSTREAM
            + ROUTE
            + self.tls
            + "[listener tls]\nlisten = sni:443\nredirect_https = on\n",
            "lb.ini: [listener tls] redirect_https: every endpoint of listen is "
            "sni: (TLS already), so there is nothing to redirect; it applies to "
            "plain endpoints such as tcp:80",
        )

    def test_redirectFromMixed(self) -> None:
        config = parseConfig(
            "[manualb]\nlisten = sni:443\n  tcp:80\nredirect_https = on\n"
            + UPSTREAM
            + ROUTE
            + self.tls
        )
        self.assertEqual(config.listeners[0].redirect_https, 443)


class StreamTests(SynchronousTestCase):
    """
    C{[stream NAME]}: TCP proxies.
    """

    def streams(self, text: str) -> tuple[StreamConfig, ...]:
        return parseConfig(text, "lb.ini").streams

    def stream(self, keys: str) -> StreamConfig:
        (stream,) = self.streams(
            MAIN + UPSTREAM + ROUTE + "[stream db]\nlisten = tcp:5432\n" + keys
        )
        return stream

    def assertError(self, text: str, expected: str) -> None:
        error = self.assertRaises(ConfigError, parseConfig, text, "lb.ini")
        self.assertEqual(str(error), expected)

    def assertKeyError(self, keys: str, expected: str) -> None:
        self.assertError(
            MAIN + UPSTREAM + ROUTE + "[stream db]\nlisten = tcp:5432\n" + keys,
            "lb.ini: [stream db] " + expected,
        )

    def test_defaults(self) -> None:
        self.assertEqual(
            self.stream("upstream = pool\n"),
            StreamConfig(
                name="db",
                listen=("tcp:5432",),
                upstream="pool",
                proxy_protocol=None,
                idle_timeout=600.0,
            ),
        )

    def test_everyKey(self) -> None:
        self.assertEqual(
            self.stream(
                "upstream = pool\n  \nproxy_protocol = V1\nidle_timeout = 30s\n"
            ),
            StreamConfig("db", ("tcp:5432",), "pool", "v1", 30.0),
        )

    def test_streamsInFileOrder(self) -> None:
        streams = self.streams(
            "[stream b]\nlisten = tcp:2\nupstream = pool\n"
            + UPSTREAM
            + "[stream a]\nlisten = tcp:1\n  tcp6:1\nupstream = pool\n"
        )
        self.assertEqual(
            [(stream.name, stream.listen) for stream in streams],
            [("b", ("tcp:2",)), ("a", ("tcp:1", "tcp6:1"))],
        )

    def test_streamsOnly(self) -> None:
        """
        Without HTTP listeners, neither C{[manualb]} nor a route is needed;
        an upstream with an HTTP health check may serve a stream.
        """
        config = parseConfig(
            "[upstream db]\nservers = 10.0.0.1:5432\nhealth_check = on\n"
            "[stream db]\nlisten = tcp:5432\nupstream = db\n"
        )
        self.assertEqual((config.listen, config.listeners, config.routes), ((), (), ()))
        self.assertEqual([stream.upstream for stream in config.streams], ["db"])

    def test_mainWithoutListen(self) -> None:
        config = parseConfig(
            "[manualb]\naccess_log = off\n"
            + UPSTREAM
            + "[stream db]\nlisten = tcp:5432\nupstream = pool\n"
        )
        self.assertEqual((config.listen, config.listeners), ((), ()))

    def test_proxyProtocolOff(self) -> None:
        stream = self.stream("upstream = pool\nproxy_protocol = off\n")
        self.assertIsNone(stream.proxy_protocol)

    def test_v2(self) -> None:
        self.assertEqual(
            self.stream("upstream = pool\nproxy_protocol = v2\n").proxy_protocol, "v2"
        )

    def test_badProxyProtocol(self) -> None:
        self.assertKeyError(
            "upstream = pool\nproxy_protocol = on\n",
            "proxy_protocol: expected off, v1 or v2, got 'on'",
        )

    def test_zeroIdleTimeout(self) -> None:
        self.assertKeyError(
            "upstream = pool\nidle_timeout = 0s\n",
            "idle_timeout: must be greater than zero, got '0s'",
        )

    def test_missingUpstream(self) -> None:
        self.assertKeyError("", "upstream: missing required key")

    def test_unknownUpstream(self) -> None:
        self.assertKeyError(
            "upstream = db\n",
            "upstream: no section [upstream db] (defined upstreams: pool)",
        )

    def test_missingListen(self) -> None:
        self.assertError(
            MAIN + UPSTREAM + ROUTE + "[stream db]\nupstream = pool\n",
            "lb.ini: [stream db] listen: missing required key",
        )

    def test_badEndpoint(self) -> None:
        self.assertError(
            MAIN + UPSTREAM + ROUTE + "[stream db]\nlisten = tcp:x\nupstream = pool\n",
            "lb.ini: [stream db] listen: cannot parse endpoint 'tcp:x' "
            "(invalid literal for int() with base 10: 'x')",
        )

    def test_unknownKey(self) -> None:
        self.assertKeyError(
            "upstream = pool\ntimeout = 1s\n",
            "timeout: unknown key (known keys: listen, upstream, proxy_protocol, "
            "idle_timeout); did you mean 'idle_timeout'?",
        )

    def test_withoutName(self) -> None:
        self.assertError(
            MAIN + "[stream]\nlisten = tcp:1\n",
            "lb.ini: [stream]: section needs a name: [stream NAME]",
        )

    def test_endpointOfListenerAndStream(self) -> None:
        self.assertError(
            MAIN
            + UPSTREAM
            + ROUTE
            + "[stream db]\nlisten = tcp:8080\nupstream = pool\n",
            "lb.ini: [stream db] listen: endpoint 'tcp:8080' is already used by "
            "[manualb]",
        )

    def test_endpointOfTwoStreams(self) -> None:
        self.assertError(
            UPSTREAM
            + "[stream a]\nlisten = tcp:1\nupstream = pool\n"
            + "[stream b]\nlisten = tcp:2\n  tcp:1\nupstream = pool\n",
            "lb.ini: [stream b] listen: endpoint 'tcp:1' is already used by "
            "[stream a]",
        )


class TLSTests(_TLSTestCase):
    """
    The C{[tls]} section.
    """

    def parseTLS(self, keys: str) -> TLSConfig:
        config = parseConfig(MAIN + UPSTREAM + ROUTE + "[tls]\n" + keys)
        assert config.tls is not None
        return config.tls

    def keys(self, more: str = "") -> str:
        """
        C{certificates} with the C{www.example.com} certificate, then
        C{more}.
        """
        return (
            f"certificates = www.example.com {self.path('www.pem')} "
            f"{self.path('www.key')}\n" + more
        )

    def assertError(self, keys: str, expected: str) -> ConfigError:
        text = MAIN + UPSTREAM + ROUTE + "[tls]\n" + keys
        error = self.assertRaises(ConfigError, parseConfig, text, "lb.ini")
        self.assertEqual(str(error), "lb.ini: [tls] " + expected)
        return error

    def test_defaults(self) -> None:
        """
        A C{[tls]} section without a TLS listener is allowed.
        """
        self.assertEqual(
            self.parseTLS(self.keys()),
            TLSConfig(
                certificates=(
                    CertificateConfig(
                        "www.example.com", self.path("www.pem"), self.path("www.key")
                    ),
                ),
                min_version="TLSv1.2",
                ciphers=None,
                hsts=None,
            ),
        )

    def test_everyKey(self) -> None:
        tls = self.parseTLS(
            "certificates =\n"
            f"    WWW.Example.COM {self.path('www.pem')} {self.path('www.key')}\n"
            f"    *.example.com   {self.path('any.pem')}  {self.path('any.key')}\n"
            "min_version = TLSv1.3\n"
            "ciphers = ECDHE+AESGCM:ECDHE+CHACHA20\n"
            "hsts = max-age=31536000; includeSubDomains; preload\n"
        )
        self.assertEqual(
            tls,
            TLSConfig(
                (
                    CertificateConfig(
                        "www.example.com", self.path("www.pem"), self.path("www.key")
                    ),
                    CertificateConfig(
                        "*.example.com", self.path("any.pem"), self.path("any.key")
                    ),
                ),
                "TLSv1.3",
                "ECDHE+AESGCM:ECDHE+CHACHA20",
                "max-age=31536000; includeSubDomains; preload",
            ),
        )

    def test_relativeToConfigFile(self) -> None:
        """
        Relative paths are relative to the directory of the configuration
        file, wherever the current directory is, and become absolute.
        """
        directory = makeFiles(self, "certs/www.pem", "keys/www.key")
        path = os.path.join(directory, "lb.ini")
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                MAIN
                + UPSTREAM
                + ROUTE
                + "[tls]\ncertificates = www.example.com certs/www.pem "
                + "./keys/../keys/www.key\n"
            )
        tls = loadConfig(path).tls
        assert tls is not None
        self.assertEqual(
            tls.certificates,
            (
                CertificateConfig(
                    "www.example.com",
                    os.path.join(directory, "certs", "www.pem"),
                    os.path.join(directory, "keys", "www.key"),
                ),
            ),
        )

    def test_relativeToCurrentDirectory(self) -> None:
        """
        Text that does not come from a file has its paths relative to the
        current directory.
        """
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.directory)
        tls = self.parseTLS("certificates = a.example www.pem www.key\n")
        self.assertEqual(
            tls.certificates,
            (
                CertificateConfig(
                    "a.example", self.path("www.pem"), self.path("www.key")
                ),
            ),
        )

    def test_missingCertificates(self) -> None:
        self.assertError(
            "min_version = TLSv1.2\n", "certificates: missing required key"
        )

    def test_emptyCertificates(self) -> None:
        self.assertError(
            "certificates =\n",
            "certificates: needs at least one certificate, such as "
            "www.example.com certs/www.pem certs/www.key",
        )

    def test_wrongFields(self) -> None:
        for line in ["www.example.com www.pem", "a www.pem www.key extra"]:
            self.assertError(
                f"certificates = {line}\n",
                f"certificates: expected NAME CERTFILE KEYFILE separated by "
                f"spaces, such as www.example.com certs/www.pem certs/www.key, "
                f"got {line!r}",
            )

    def test_badName(self) -> None:
        line = f"www.example.com:443 {self.path('www.pem')} {self.path('www.key')}"
        self.assertError(
            f"certificates = {line}\n",
            f"certificates: a host name has no port, got 'www.example.com:443', "
            f"in {line!r}",
        )

    def test_badWildcard(self) -> None:
        line = f"* {self.path('www.pem')} {self.path('www.key')}"
        self.assertError(
            f"certificates = {line}\n",
            f"certificates: a wildcard is allowed only as one leading '*.', such "
            f"as *.example.com, got '*', in {line!r}",
        )

    def test_missingCertificateFile(self) -> None:
        missing = self.path("nope.pem")
        line = f"a {missing} {self.path('www.key')}"
        self.assertError(
            f"certificates = {line}\n",
            f"certificates: no such file {missing!r}, in {line!r}",
        )

    def test_missingKeyFile(self) -> None:
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.directory)
        line = "a www.pem www.pem.key"
        self.assertError(
            f"certificates = {line}\n",
            f"certificates: no such file 'www.pem.key' "
            f"({self.path('www.pem.key')}), in {line!r}",
        )

    def test_unreadableFile(self) -> None:
        # Checked with os.access, which is always true for root: pretend.
        self.patch(syntaxModule.os, "access", lambda path, mode: False)
        line = f"a {self.path('www.pem')} {self.path('www.key')}"
        self.assertError(
            f"certificates = {line}\n",
            f"certificates: cannot read {self.path('www.pem')!r}: permission "
            f"denied, in {line!r}",
        )

    def test_directory(self) -> None:
        line = f"a {self.directory} {self.path('www.key')}"
        self.assertError(
            f"certificates = {line}\n",
            f"certificates: not a file: {self.directory!r}, in {line!r}",
        )

    def test_duplicateName(self) -> None:
        second = f"WWW.example.com {self.path('any.pem')} {self.path('any.key')}"
        self.assertError(
            self.keys().replace("\n", f"\n    {second}\n", 1),
            f"certificates: duplicate name 'www.example.com' in {second!r} (each "
            f"name has one certificate)",
        )

    def test_minVersion(self) -> None:
        for text, version in [
            ("TLSv1.2", "TLSv1.2"),
            ("TLSv1.3", "TLSv1.3"),
            ("tlsv1.3", "TLSv1.3"),
        ]:
            tls = self.parseTLS(self.keys(f"min_version = {text}\n"))
            self.assertEqual(tls.min_version, version, text)

    def test_minVersionTooOld(self) -> None:
        for text in ["TLSv1", "TLSv1.0", "TLSv1.1", "tlsv1.1", "SSLv3"]:
            self.assertError(
                self.keys(f"min_version = {text}\n"),
                f"min_version: {text!r} is not allowed: TLS 1.0 and 1.1 (and SSL) "
                f"are insecure and deprecated (RFC 8996); use TLSv1.2 or TLSv1.3",
            )

    def test_badMinVersion(self) -> None:
        for text in ["1.2", "TLS1.2", "TLSv1.4"]:
            self.assertError(
                self.keys(f"min_version = {text}\n"),
                f"min_version: expected TLSv1.2 or TLSv1.3, got {text!r}",
            )

    def test_ciphers(self) -> None:
        tls = self.parseTLS(self.keys("ciphers = HIGH:!aNULL:!MD5\n"))
        self.assertEqual(tls.ciphers, "HIGH:!aNULL:!MD5")

    def test_badCiphers(self) -> None:
        self.assertError(
            self.keys("ciphers = NOPE\n"),
            "ciphers: OpenSSL refuses 'NOPE': no cipher match",
        )

    def test_tls13Ciphers(self) -> None:
        self.assertError(
            self.keys("ciphers = TLS_AES_128_GCM_SHA256\n"),
            "ciphers: OpenSSL refuses 'TLS_AES_128_GCM_SHA256': no cipher match "
            "(ciphers sets the TLS 1.2 ciphers; TLS 1.3 suites such as "
            "TLS_AES_128_GCM_SHA256 are not set here)",
        )

    def test_hsts(self) -> None:
        for text in [
            "max-age=0",
            "max-age=31536000",
            "Max-Age=63072000;includesubdomains",
            "max-age=31536000; preload;includeSubDomains",
        ]:
            self.assertEqual(self.parseTLS(self.keys(f"hsts = {text}\n")).hsts, text)

    def test_hstsOff(self) -> None:
        for text in ["off", "OFF"]:
            self.assertIsNone(self.parseTLS(self.keys(f"hsts = {text}\n")).hsts)

    def test_hstsWithoutMaxAge(self) -> None:
        for text in ["31536000", "max-age=", "max-age=1y", "includeSubDomains",
                     "max-age = 5"]:
            self.assertError(
                self.keys(f"hsts = {text}\n"),
                f"hsts: must start with max-age= and a number of seconds, such as "
                f"max-age=31536000; includeSubDomains, got {text!r}",
            )

    def test_hstsUnknownDirective(self) -> None:
        self.assertError(
            self.keys("hsts = max-age=5; includeSubDomain\n"),
            "hsts: unknown directive 'includeSubDomain' in "
            "'max-age=5; includeSubDomain' (after max-age, expected "
            "includeSubDomains or preload, separated by ';')",
        )

    def test_hstsDirectiveTwice(self) -> None:
        self.assertError(
            self.keys("hsts = max-age=5; preload; Preload\n"),
            "hsts: preload given twice in 'max-age=5; preload; Preload'",
        )

    def test_unknownKey(self) -> None:
        self.assertError(
            self.keys("protocols = TLSv1.3\n"),
            "protocols: unknown key (known keys: certificates, min_version, "
            "ciphers, hsts, ssl_session_cache, ssl_session_timeout, "
            "ssl_session_tickets, ssl_session_ticket_key_rotation)",
        )

    def test_takesNoName(self) -> None:
        error = self.assertRaises(
            ConfigError, parseConfig, MAIN + "[tls www]\n" + self.keys(), "lb.ini"
        )
        self.assertEqual(str(error), "lb.ini: [tls www]: [tls] takes no name")

    def test_duplicateSection(self) -> None:
        error = self.assertRaises(
            ConfigError,
            parseConfig,
            MAIN + "[tls]\n" + self.keys() + "[ tls ]\n" + self.keys(),
            "lb.ini",
        )
        self.assertEqual(str(error), "lb.ini: [ tls ]: duplicate section (see [tls])")


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
        self.assertTrue(str(error).startswith(path + ", line 3: [manualb] bogus: "))

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


#: A file for an embedder: upstreams and routes, nothing to listen on.
EMBEDDED = UPSTREAM + ROUTE


class NoListenerTests(SynchronousTestCase):
    """
    An embedder's configuration listens on nothing: it mounts the
    balancer's resource in a site of its own.  The file is fine for
    L{parseConfig} and L{loadConfig}; the twistd plugin and C{python -m
    manualb check}, which serve or check a file for serving, refuse it.
    """

    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_parseConfig(self) -> None:
        """
        Without C{[manualb]} or with it but without C{listen}, the file has
        no listener and its routes all the same.
        """
        for text in [EMBEDDED, "[manualb]\naccess_log = off\n" + EMBEDDED]:
            config = parseConfig(text, "lb.ini")
            self.assertEqual((config.listen, config.listeners, config.streams), ((), (), ()))
            self.assertEqual([route.name for route in config.routes], ["default"])
            self.assertEqual(list(config.upstreams), ["pool"])

    def test_loadConfig(self) -> None:
        config = loadConfig(self.write(EMBEDDED))
        self.assertEqual(config.listeners, ())
        error = self.assertRaises(
            ConfigError, loadConfig, self.write(EMBEDDED), requireListen=True
        )
        self.assertIn("[manualb]: missing section", str(error))

    def test_noRouteNeeded(self) -> None:
        """
        With nothing to listen on, no route is needed either.
        """
        self.assertEqual(parseConfig(UPSTREAM).routes, ())

    def test_check(self) -> None:
        """
        C{python -m manualb check} refuses the file, naming it, the section
        and the key, and exits with 1.
        """
        from io import StringIO

        from manualb.__main__ import check

        path = self.write("[manualb]\naccess_log = -\n" + EMBEDDED)
        out, err = StringIO(), StringIO()
        self.assertEqual(check(path, out, err), 1)
        self.assertEqual(out.getvalue(), "")
        self.assertEqual(
            err.getvalue(),
            f"manualb: {path}, line 1: [manualb] listen: nothing to listen on: give "
            f"endpoints here, such as listen = tcp:8080, or add a [listener "
            f"NAME] or [stream NAME] section\n"
            f"manualb: configuration file {path} test failed\n",
        )

    def test_twistdPlugin(self) -> None:
        """
        C{twistd manualb} refuses the file with one line naming it, the
        section and the key, and exits with 1.
        """
        import sys
        from io import StringIO

        from manualb.tap import Options, makeService

        path = self.write(EMBEDDED)
        options = Options()
        options.parseOptions(["--config", path])
        err = StringIO()
        self.patch(sys, "stderr", err)
        exit = self.assertRaises(SystemExit, makeService, options)
        self.assertEqual(exit.code, 1)
        self.assertEqual(
            err.getvalue(),
            f"manualb: {path}: [manualb]: missing section (it holds 'listen', "
            f"which is required)\n",
        )


class KeyDeclarationTests(SynchronousTestCase):
    """
    Every key is declared once, in the data model; the reader derives the
    keys a section knows and their defaults from the declarations.
    """

    MODELS = [
        Config,
        GatekeeperConfig,
        UpstreamConfig,
        ServerConfig,
        HealthCheckConfig,
        RouteConfig,
        ListenerConfig,
        StreamConfig,
        TLSConfig,
    ]

    def test_documented(self) -> None:
        """
        Every key has a line of documentation, and a simple one a kind the
        reader knows.
        """
        for model in self.MODELS:
            for name, declared in declaredKeys(model).items():
                self.assertTrue(declared.doc, (model, name))
                self.assertIn(
                    declared.kind,
                    (None, "duration", "integer", "size", "flag", "text", "workers", "front_end"),
                    (model, name),
                )

    def test_knownKeys(self) -> None:
        """
        The keys a section knows are those its class declares, in order.
        """
        for kind, model in [
            ("upstream", UpstreamConfig),
            ("listener", ListenerConfig),
            ("stream", StreamConfig),
            ("tls", TLSConfig),
        ]:
            self.assertEqual(KNOWN_KEYS[kind], tuple(declaredKeys(model)))
        # The keys of the WAF's and the rate limit's own fields.
        self.assertEqual(
            KNOWN_KEYS["gatekeeper"],
            (
                *declaredKeys(GatekeeperConfig),
                "waf_level",
                "waf_body_limit",
                "waf_rule",
                "rate_key",
            ),
        )
        self.assertEqual(
            KNOWN_KEYS["route"],
            (*declaredKeys(RouteConfig), "rate_key", "return", "gzip_types", "gzip_min_length"),
        )
        self.assertEqual(
            KNOWN_KEYS["manualb"], (*declaredKeys(Config), "redirect_https", "include")
        )

    def test_defaults(self) -> None:
        """
        A key left out has the default of the data model.
        """
        config = parseConfig(MAIN + UPSTREAM + ROUTE)
        self.assertEqual(
            config.upstreams["pool"],
            UpstreamConfig("pool", [ServerAddress("10.0.0.1", 80)]),
        )
        self.assertEqual(config.gatekeeper, GatekeeperConfig())
        self.assertEqual(
            config.routes, (RouteConfig(name="default", path="/", upstream="pool"),)
        )

    def test_schemes(self) -> None:
        """
        The schemes a server address may use have a default port each.
        """
        self.assertEqual(tuple(DEFAULT_PORTS), SCHEMES)


class OneParserTests(SynchronousTestCase):
    """
    A syntax read in two places is read by one function: the C{sni:}
    endpoints of the file and of the C{sni} endpoint plugin, the C{[tls]}
    section of the file and of C{sni:...:tls=FILE}, and the route checks of
    the file and of L{manualb.urlmap.URLMap} built in code.
    """

    def test_sniEndpoint(self) -> None:
        """
        The endpoint plugin refuses what the file refuses, with the same
        message.
        """
        from twisted.internet.testing import MemoryReactor

        from manualb.termination import endpointFromArguments, parseSNIDescription

        problem = (
            "unknown argument 'queue': after the port, sni: takes only "
            "interface=ADDRESS, backlog=N and tls=FILE"
        )
        error = self.assertRaises(ValueError, parseSNIDescription, "sni:443:queue=50")
        self.assertEqual(str(error), problem)
        error = self.assertRaises(
            ValueError, endpointFromArguments, MemoryReactor(), ["443"], {"queue": "50"}
        )
        self.assertEqual(str(error), problem)

    def test_tlsFile(self) -> None:
        """
        The C{[tls]} section of C{tls=FILE} is read as the file's is.
        """
        from manualb.termination import tlsConfigFromFile

        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        path = os.path.join(directory, "lb.ini")
        with open(path, "w") as f:
            f.write("[tls]\nmin_version = TLSv1.1\ncertificates = a b c\n")
        error = self.assertRaises(ConfigError, tlsConfigFromFile, path)
        self.assertEqual(
            str(error),
            f"{path}: [tls] certificates: no such file 'b' "
            f"({os.path.join(os.getcwd(), 'b')}), in 'a b c'",
        )

    def test_routeChecks(self) -> None:
        """
        A URL map made in code refuses two prefix routes of one path, and
        C{strip_prefix} on a route that is not a prefix one, as the file
        does.
        """
        from manualb.urlmap import Route, URLMap

        first = RouteConfig(name="a", path="/x", upstream="pool")
        second = RouteConfig(name="b", path="/x", upstream="pool", match=PREFIX_NO_REGEX)
        error = self.assertRaises(
            ValueError, URLMap, [Route(first, None), Route(second, None)]
        )
        self.assertEqual(
            str(error),
            "path '^~ /x' is already used by route 'a' (as '/x': a prefix is "
            "given once, with or without ^~)",
        )
        stripping = RouteConfig(
            name="c", path="/x", upstream="pool", match=EXACT, strip_prefix=True
        )
        error = self.assertRaises(ValueError, Route, stripping, None)
        self.assertEqual(
            str(error),
            "route 'c': strip_prefix needs a prefix path (such as /app or ^~ "
            "/app), but the path is '= /x'",
        )
