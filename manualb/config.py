"""
Read and validate the manualb configuration file.

The file is INI (L{configparser}) and becomes a tree of frozen L{attrs}
objects: L{Config} holding L{UpstreamConfig} (with its L{ServerConfig}s,
each holding a L{ServerAddress}, and its L{HealthCheckConfig}) and
L{RouteConfig}.  Everything is checked before the load balancer starts so
that the rest of the program can trust these objects, and so that every
mistake stops start-up with one message naming the file, section and key
(L{ConfigError}) instead of a traceback or a surprise at request time.

Example::

    [manualb]
    listen = tcp:8080
    access_log = -

    [upstream my_backend_pool]
    servers =
        10.128.0.2:80 weight=2 max_fails=3 fail_timeout=30s
        10.128.0.3:80 slow_start=30s max_conns=100
        10.128.0.4:80 backup
    balance = least_conn
    connect_timeout = 5s
    passive_fail_on = 502 503 504
    health_check = path=/healthz interval=2s rise=2 fall=3 expect=2xx

    [route default]
    path = /
    upstream = my_backend_pool
"""

from __future__ import annotations

import configparser
import ipaddress
import re
from collections.abc import Callable, Mapping
from functools import partial

import attrs
from twisted.internet.endpoints import serverFromString

from manualb.durations import formatDuration, parseDuration, parseSize

__all__ = [
    "SCHEMES",
    "ConfigError",
    "ServerAddress",
    "ServerConfig",
    "HealthCheckConfig",
    "UpstreamConfig",
    "RouteConfig",
    "Config",
    "parseConfig",
    "loadConfig",
]

#: URL schemes a server address may use.
SCHEMES: tuple[str, ...] = ("http",)

_DEFAULT_PORTS = {"http": 80}

# configparser treats its default section specially (its keys leak into every
# other section).  A header cannot contain a newline, so no file can name this
# one and "[DEFAULT]" becomes an ordinary, unknown section.
_NO_DEFAULT_SECTION = "\n"

# Stricter than configparser's own pattern, which silently ignores anything
# after the closing bracket ("[route a] b").  Comments are already removed.
_SECTION_HEADER = re.compile(r"\[(?P<header>[^\]]+)\]$")

_KNOWN_SECTIONS = "[manualb], [upstream NAME], [route NAME]"
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")
# The status codes passive_fail_on accepts, and those and the classes (2xx)
# that health_check's expect accepts.
_FAILURE_STATUS = re.compile(r"5[0-9][0-9]")
_STATUS = re.compile(r"[1-5][0-9][0-9]")
_STATUS_CLASS = re.compile(r"[1-5][xX][xX]")
# What the Host header of a probe may be: a name or address, and a port.
_HOST_HEADER = re.compile(r"(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


class ConfigError(Exception):
    """
    The configuration file is wrong; C{str()} of this error is the single
    message to show the user.

    @ivar source: The file name (or C{"<string>"}).
    @ivar section: The section header as written (without brackets), or
        L{None} when the problem is not inside one section.
    @ivar key: The key, or L{None} when the problem is not about one key.
    @ivar message: What is wrong, without the location.
    @ivar line: The line number, when configparser reported one, else
        L{None}.
    """

    def __init__(
        self,
        source: str,
        section: str | None,
        key: str | None,
        message: str,
        line: int | None = None,
    ) -> None:
        super().__init__(source, section, key, message, line)
        self.source = source
        self.section = section
        self.key = key
        self.message = message
        self.line = line

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f", line {self.line}"
        place = ""
        if self.section is not None:
            place = f"[{self.section}]"
        if self.key is not None:
            place = f"{place} {self.key}" if place else self.key
        if place:
            return f"{where}: {place}: {self.message}"
        return f"{where}: {self.message}"


@attrs.frozen
class ServerAddress:
    """
    One backend server of an upstream.

    @ivar host: Host name or IP address; IPv6 addresses without brackets.
    @ivar port: TCP port, 1..65535.
    @ivar scheme: Protocol spoken to the server; only C{"http"} for now.
    """

    host: str
    port: int
    scheme: str = "http"

    @property
    def name(self) -> str:
        """
        C{"host:port"}, or C{"[v6addr]:port"} for IPv6: how logs and the
        access log refer to this server, and how it is written in the file.
        """
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@attrs.frozen
class ServerConfig:
    """
    A server of an upstream and its options, nginx's C{server} line:
    C{10.0.0.1:80 weight=3 max_fails=2 fail_timeout=30s}.

    @ivar address: Where the server listens.
    @ivar weight: Its share of the requests relative to the other servers.
    @ivar max_fails: Failures within C{fail_timeout} that make the server
        unavailable for C{fail_timeout}; 0 turns the accounting off.
    @ivar fail_timeout: Seconds, both the window in which failures are
        counted and how long the server then stays unavailable.
    @ivar backup: Serves only while no primary server is available.
    @ivar down: Marked down by hand: never chosen.
    @ivar slow_start: Seconds over which a server that comes back ramps from
        weight 0 to its full weight; 0 for no ramp.
    @ivar max_conns: Requests in flight to the server at most; 0 for no
        limit.
    """

    address: ServerAddress
    weight: int = 1
    max_fails: int = 1
    fail_timeout: float = 10.0
    backup: bool = False
    down: bool = False
    slow_start: float = 0.0
    max_conns: int = 0

    @property
    def name(self) -> str:
        """
        The address as C{host:port}.
        """
        return self.address.name


def _toServerConfigs(servers) -> tuple[ServerConfig, ...]:
    """
    Accept bare L{ServerAddress}es where L{ServerConfig}s are expected, with
    every option at its default.
    """
    return tuple(
        server if isinstance(server, ServerConfig) else ServerConfig(server)
        for server in servers
    )


@attrs.frozen
class HealthCheckConfig:
    """
    Active health probes of an upstream's servers, C{health_check = ...}.

    @ivar path: The request path of the probe.
    @ivar interval: Seconds between the end of a probe and the next one
        (spread with some jitter).
    @ivar timeout: Seconds a probe may take.
    @ivar rise: Consecutive passed probes that bring a down server up.
    @ivar fall: Consecutive failed probes that take an up server down.
    @ivar type: C{"http"} (a request) or C{"tcp"} (a connection only).
    @ivar expect: The status codes that pass.
    @ivar body: A regular expression the response body must match, or
        L{None}.
    @ivar host: The C{Host} header of the probe; the server's address when
        L{None}.
    """

    path: str = "/"
    interval: float = 5.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3
    expect: frozenset[int] = frozenset([200])
    body: str | None = None
    host: str | None = None
    type: str = "http"


@attrs.frozen
class UpstreamConfig:
    """
    A named pool of backend servers and how to talk to them; the timeouts and
    keep-alive settings follow the nginx directives of the same names.

    @ivar name: The NAME from C{[upstream NAME]}.
    @ivar servers: The servers, in file order.
    @ivar balance: Load-balancing method: a built-in name or the dotted name
        of a user's balancer factory.
    @ivar balance_argument: What follows the method in C{balance}: the key of
        C{hash}, the cookie name of C{cookie}; L{None} when nothing does.
    @ivar connect_timeout: Seconds allowed to connect to a server.
    @ivar read_timeout: Seconds allowed between two successful reads from a
        server (nginx C{proxy_read_timeout}).
    @ivar send_timeout: Seconds allowed between two successful writes to a
        server (nginx C{proxy_send_timeout}).
    @ivar keepalive: Idle keep-alive connections cached per server; 0 turns
        caching off.
    @ivar keepalive_timeout: Seconds after which a cached idle connection is
        closed.
    @ivar keepalive_requests: Requests sent over one backend connection
        before it is closed.
    @ivar passive_fail_on: Response status codes that count as a failure of
        the server (and are retried like one); connection errors and
        timeouts always count.
    @ivar tries: How many servers one request may be tried on, the first
        included; 0 for every available server once.
    @ivar retry_timeout: Seconds after the first try during which another
        may start; 0 for no limit.
    @ivar retry_body_limit: Bytes of request body kept (in memory, then in
        a temporary file) so that a request can be sent again after its body
        went to a server that failed; a larger body is not retried once it
        has started going.
    @ivar health_check: Active probes, or L{None} for passive health only.
    @ivar tls_verify: For C{https://} servers: verify the server's
        certificate (against C{tls_ca}, for the name C{tls_name}).
    @ivar tls_ca: A PEM file of the certificate authorities to trust for
        C{https://} servers, or L{None} for the system's.
    @ivar tls_name: The name sent by SNI and verified in the certificate of
        C{https://} servers, or L{None} for each server's host.
    @ivar tunnel_timeout: Seconds a WebSocket (or other upgraded) connection
        may carry nothing either way before it is closed (HAProxy's
        C{timeout tunnel}).
    """

    name: str
    servers: tuple[ServerConfig, ...] = attrs.field(converter=_toServerConfigs)
    balance: str = "round_robin"
    balance_argument: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    send_timeout: float = 60.0
    keepalive: int = 32
    keepalive_timeout: float = 60.0
    keepalive_requests: int = 1000
    passive_fail_on: frozenset[int] = frozenset()
    tries: int = 0
    retry_timeout: float = 0.0
    retry_body_limit: int = 1024 * 1024
    health_check: HealthCheckConfig | None = None
    tls_verify: bool = True
    tls_ca: str | None = None
    tls_name: str | None = None
    tunnel_timeout: float = 3600.0


#: How a route's C{path} matches, from its modifier (nginx C{location}).
PREFIX = "prefix"  # path = /app
PREFIX_NO_REGEX = "prefix_no_regex"  # path = ^~ /app
EXACT = "exact"  # path = = /app
REGEX = "regex"  # path = ~ ^/app/.*\.php$
REGEX_CASELESS = "regex_caseless"  # path = ~* \.(gif|jpg)$


@attrs.frozen
class RouteConfig:
    """
    Send requests whose host and path match to the upstream C{upstream}, as
    nginx's C{server_name} and C{location} do.

    @ivar name: The NAME from C{[route NAME]}.
    @ivar path: The path pattern: a prefix, an exact path or a regular
        expression, as C{match} says (without its modifier).
    @ivar upstream: Name of an upstream in L{Config.upstreams}.
    @ivar match: One of L{PREFIX}, L{PREFIX_NO_REGEX}, L{EXACT}, L{REGEX},
        L{REGEX_CASELESS}.
    @ivar host: The host the route serves: a name (C{www.example.com}), a
        wildcard (C{*.example.com}), or L{None} for any host.  Lower case.
    @ivar strip_prefix: Remove the matched prefix from the path before the
        request goes on (prefix routes only).
    @ivar rewrite: C{(regex, replacement)}: the path is rewritten by
        C{re.sub} with C{$1}-style groups turned into Python's, before it
        goes on; or L{None}.
    """

    name: str
    path: str
    upstream: str
    match: str = PREFIX
    host: str | None = None
    strip_prefix: bool = False
    rewrite: tuple[str, str] | None = None


@attrs.frozen
class ListenerConfig:
    """
    A group of listening endpoints that share a set of routes.

    @ivar name: C{"default"} for the C{listen} lines of C{[manualb]}, else the
        NAME from C{[listener NAME]}.
    @ivar listen: Twisted server endpoint strings.
    @ivar routes: Names of the routes they serve, or L{None} for all routes.
    @ivar redirect_https: When set, plain (not TLS) connections of this
        listener get a 301 to the https URL, at this port (443 is left out of
        the URL); L{None} for no redirect.
    """

    name: str
    listen: tuple[str, ...] = attrs.field(converter=tuple)
    routes: tuple[str, ...] | None = None
    redirect_https: int | None = None


@attrs.frozen
class CertificateConfig:
    """
    One certificate of the C{[tls]} section.

    @ivar name: The server name it serves: exact or C{*.wildcard}; lower case.
    @ivar certificate: Path of the PEM certificate (followed by its chain).
    @ivar key: Path of the PEM private key.
    """

    name: str
    certificate: str
    key: str


@attrs.frozen
class TLSConfig:
    """
    TLS termination, the C{[tls]} section: certificates chosen by SNI (the
    first one for unknown names), protocol versions, ciphers and HSTS.

    @ivar certificates: At least one; the first is the default.
    @ivar min_version: C{"TLSv1.2"} or C{"TLSv1.3"}.
    @ivar ciphers: An OpenSSL cipher string for TLS 1.2, or L{None} for
        manualb's modern default.
    @ivar hsts: The value of C{Strict-Transport-Security} sent on TLS
        connections (e.g. C{max-age=31536000}), or L{None}.
    """

    certificates: tuple[CertificateConfig, ...] = attrs.field(converter=tuple)
    min_version: str = "TLSv1.2"
    ciphers: str | None = None
    hsts: str | None = None


@attrs.frozen
class StreamConfig:
    """
    A layer-4 (TCP) proxy, C{[stream NAME]}: connections on C{listen} are
    joined, byte for byte, to a server of C{upstream}.

    @ivar proxy_protocol: C{None}, C{"v1"} or C{"v2"}: the PROXY protocol
        header sent to the server first, so it knows the client.
    @ivar idle_timeout: Seconds a connection may carry nothing either way
        before both sides are closed.
    """

    name: str
    listen: tuple[str, ...] = attrs.field(converter=tuple)
    upstream: str
    proxy_protocol: str | None = None
    idle_timeout: float = 600.0


@attrs.frozen
class Config:
    """
    The whole, validated configuration.

    @ivar source: Where it was read from (a file name or C{"<string>"}).
    @ivar listen: The endpoint strings of C{[manualb] listen} (possibly
        none when C{[listener]} or C{[stream]} sections listen instead).
    @ivar access_log: C{"-"} for standard output, a file path, or L{None}
        when access logging is off.
    @ivar upstreams: Upstreams by name, in file order.
    @ivar routes: Routes in file order; every one names an upstream in
        C{upstreams}.
    @ivar client_timeout: Seconds a client connection may stay silent: idle
        between requests, or stalled while sending its request head or body
        (nginx's C{keepalive_timeout}, C{client_header_timeout} and
        C{client_body_timeout} in one).
    @ivar listeners: The HTTP listeners: C{"default"} from C{[manualb]
        listen} (with C{[manualb] redirect_https}) first if it has any
        endpoint, then the C{[listener NAME]} sections.
    @ivar tls: The C{[tls]} section, or L{None}.
    @ivar streams: The C{[stream NAME]} sections.
    """

    source: str
    listen: tuple[str, ...] = attrs.field(converter=tuple)
    access_log: str | None
    upstreams: Mapping[str, UpstreamConfig]
    routes: tuple[RouteConfig, ...] = attrs.field(converter=tuple)
    client_timeout: float = 60.0
    listeners: tuple[ListenerConfig, ...] = attrs.field(converter=tuple, default=())
    tls: TLSConfig | None = None
    streams: tuple[StreamConfig, ...] = attrs.field(converter=tuple, default=())


def loadConfig(path: str) -> Config:
    """
    Read and validate the configuration file at C{path}.

    @raise ConfigError: if the file cannot be read (naming the file and the
        operating system's reason) or its contents are wrong.
    """
    try:
        # utf-8-sig: tolerate the byte order mark some Windows editors add.
        with open(path, encoding="utf-8-sig") as configFile:
            text = configFile.read()
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConfigError(path, None, None, f"cannot read file: {reason}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            path, None, None, f"not UTF-8 text (bad byte at offset {e.start})"
        ) from None
    return parseConfig(text, path)


def parseConfig(text: str, source: str = "<string>") -> Config:
    """
    Parse and validate configuration file contents.

    @param text: The contents of the file.
    @param source: File name to put in error messages and L{Config.source}.

    @raise ConfigError: on the first mistake found.
    """
    parser = _readIni(text, source)
    sections = _Sections(source, parser)
    sections.classify()
    listen, accessLog = _parseMain(sections)
    clientTimeout = sections.duration(sections.main, "client_timeout", 60.0)
    upstreams = {
        name: _parseUpstream(sections, header, name)
        for name, header in sections.upstreams.items()
    }
    routes = tuple(
        _parseRoute(sections, header, name)
        for name, header in sections.routes.items()
    )
    _checkRoutes(source, routes, upstreams, sections.routes)
    return Config(
        source=source,
        listen=listen,
        access_log=accessLog,
        upstreams=upstreams,
        routes=routes,
        client_timeout=clientTimeout,
    )


def _readIni(text: str, source: str) -> configparser.RawConfigParser:
    """
    Run configparser over C{text}, turning its errors into L{ConfigError}.
    """
    parser = configparser.RawConfigParser(
        interpolation=None,
        strict=True,
        delimiters=("=",),
        comment_prefixes=(";", "#"),
        inline_comment_prefixes=(";", "#"),
        empty_lines_in_values=False,
        default_section=_NO_DEFAULT_SECTION,
    )
    parser.SECTCRE = _SECTION_HEADER
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        raise _fromParserError(e, text, source) from None
    return parser


def _fromParserError(
    error: configparser.Error, text: str, source: str
) -> ConfigError:
    """
    Translate a configparser exception into a L{ConfigError} with its line.
    """
    if isinstance(error, configparser.DuplicateSectionError):
        return ConfigError(
            source, error.section, None, "duplicate section", error.lineno
        )
    if isinstance(error, configparser.DuplicateOptionError):
        return ConfigError(
            source,
            error.section,
            error.option,
            "duplicate key (each key may appear once per section)",
            error.lineno,
        )
    if isinstance(error, configparser.MissingSectionHeaderError):
        return ConfigError(
            source,
            None,
            None,
            f"{_lineAt(text, error.lineno).strip()!r} comes before any section "
            f"header (the file must start with a section such as [manualb])",
            error.lineno,
        )
    if isinstance(error, configparser.ParsingError) and error.errors:
        lineno = error.errors[0][0]
        line = _lineAt(text, lineno)
        message = f"cannot parse {line.strip()!r}: expected 'key = value'"
        if line[:1].isspace():
            # configparser only continues a value on lines directly below it.
            message += (
                " or a continuation line directly below a key"
                " (a blank or comment line ends a multi-line value)"
            )
        else:
            message += " or a [section] header"
        return ConfigError(source, None, None, message, lineno)
    return ConfigError(source, None, None, str(error))


def _lineAt(text: str, lineno: int) -> str:
    """
    Return line C{lineno} (1-based) of C{text} as configparser numbered it.
    """
    # read_string() iterates over a StringIO, which splits on "\n" only.
    lines = text.split("\n")
    if 1 <= lineno <= len(lines):
        return lines[lineno - 1]
    return ""


class _Sections:
    """
    The sections of one file, sorted by kind and checked for unknown or
    duplicate sections and keys; also hands out single values with errors
    that name the section and key.

    @ivar main: The header of the C{[manualb]} section, or L{None}.
    @ivar upstreams: Upstream name to section header, in file order.
    @ivar routes: Route name to section header, in file order.
    """

    _MAIN_KEYS = ("listen", "access_log", "client_timeout")
    _UPSTREAM_KEYS = (
        "servers",
        "balance",
        "connect_timeout",
        "read_timeout",
        "send_timeout",
        "keepalive",
        "keepalive_timeout",
        "keepalive_requests",
        "passive_fail_on",
        "tries",
        "retry_timeout",
        "retry_body_limit",
        "health_check",
    )
    _ROUTE_KEYS = ("path", "upstream")

    def __init__(self, source: str, parser: configparser.RawConfigParser) -> None:
        self.source = source
        self.parser = parser
        self.main: str | None = None
        self.upstreams: dict[str, str] = {}
        self.routes: dict[str, str] = {}

    def error(self, section: str | None, key: str | None, message: str) -> ConfigError:
        """
        Make a L{ConfigError} for this file.
        """
        return ConfigError(self.source, section, key, message)

    def classify(self) -> None:
        """
        Sort every section into C{main}, C{upstreams} or C{routes} and check
        its keys against the known ones.
        """
        for header in self.parser.sections():
            self._classifyOne(header)
        if self.main is None:
            raise self.error(
                "manualb",
                None,
                "missing section (it holds 'listen', which is required)",
            )

    def _classifyOne(self, header: str) -> None:
        words = header.split()
        kind = words[0] if words else ""
        if kind == "manualb":
            if len(words) > 1:
                raise self.error(header, None, "[manualb] takes no name")
            if self.main is not None:
                raise self.error(header, None, f"duplicate section (see [{self.main}])")
            self.main = header
            known: tuple[str, ...] = self._MAIN_KEYS
        elif kind in ("upstream", "route"):
            name = self._sectionName(header, words)
            named = self.upstreams if kind == "upstream" else self.routes
            if name in named:
                raise self.error(
                    header, None, f"duplicate section (see [{named[name]}])"
                )
            named[name] = header
            known = self._UPSTREAM_KEYS if kind == "upstream" else self._ROUTE_KEYS
        else:
            raise self.error(
                header, None, f"unknown section (known sections: {_KNOWN_SECTIONS})"
            )
        for key in self.parser.options(header):
            if key not in known:
                raise self.error(
                    header, key, f"unknown key (known keys: {', '.join(known)})"
                )

    def _sectionName(self, header: str, words: list[str]) -> str:
        """
        Return NAME from a C{[kind NAME]} header, which must be one word.
        """
        kind = words[0]
        if len(words) == 1:
            raise self.error(header, None, f"section needs a name: [{kind} NAME]")
        if len(words) > 2:
            raise self.error(
                header,
                None,
                f"section name must be one word without spaces: [{kind} NAME]",
            )
        return words[1]

    def lines(self, section: str, key: str) -> list[str] | None:
        """
        Return the non-empty lines of a value, or L{None} if the key is
        absent.
        """
        if not self.parser.has_option(section, key):
            return None
        value = self.parser.get(section, key)
        return [line.strip() for line in value.splitlines() if line.strip()]

    def single(self, section: str, key: str, required: bool = False) -> str | None:
        """
        Return a one-line value, or L{None} if the optional key is absent.

        @raise ConfigError: if the value is empty or spans several lines, or
            if C{required} and the key is absent.
        """
        lines = self.lines(section, key)
        if lines is None:
            if required:
                raise self.error(section, key, "missing required key")
            return None
        if not lines:
            raise self.error(section, key, "empty value")
        if len(lines) > 1:
            raise self.error(
                section, key, f"expected a single value, got {len(lines)} lines"
            )
        return lines[0]

    def duration(
        self, section: str, key: str, default: float, allowZero: bool = False
    ) -> float:
        """
        Return a positive duration in seconds (or zero, if C{allowZero}), or
        C{default} if absent.
        """
        text = self.single(section, key)
        if text is None:
            return default
        try:
            return _durationValue(text, allowZero)
        except ValueError as e:
            raise self.error(section, key, str(e)) from None

    def integer(self, section: str, key: str, default: int, minimum: int) -> int:
        """
        Return a whole number of at least C{minimum}, or C{default} if absent.
        """
        text = self.single(section, key)
        if text is None:
            return default
        try:
            return _integerValue(text, minimum)
        except ValueError as e:
            raise self.error(section, key, str(e)) from None

    def size(self, section: str, key: str, default: int) -> int:
        """
        Return a size in bytes (L{parseSize}), or C{default} if absent.
        """
        text = self.single(section, key)
        if text is None:
            return default
        try:
            return parseSize(text)
        except ValueError as e:
            raise self.error(section, key, str(e)) from None


def _durationValue(text: str, allowZero: bool = False) -> float:
    """
    Return the duration C{text} in seconds, which must be positive unless
    C{allowZero}.

    @raise ValueError: with a message quoting C{text}.
    """
    seconds = parseDuration(text)
    if seconds <= 0 and not allowZero:
        raise ValueError(f"must be greater than zero, got {text!r}")
    return seconds


def _integerValue(text: str, minimum: int) -> int:
    """
    Return C{text} as a whole number of at least C{minimum}.

    @raise ValueError: with a message quoting C{text}.
    """
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"bad integer {text!r}")
    value = int(text)
    if value < minimum:
        raise ValueError(f"must be at least {minimum}, got {value}")
    return value


def _parseOptions(
    words: list[str],
    known: Mapping[str, tuple[Callable[[str], object], str] | None],
    context: str,
) -> dict[str, object]:
    """
    Read options written as nginx writes a C{server}'s parameters: bare
    C{name} flags and C{name=value} pairs, neither with spaces inside.

    @param words: The options, already split on whitespace.
    @param known: How to read each option, by name, in the order messages
        list them: L{None} for a flag (which becomes C{True} when given),
        else the function that reads its value (raising L{ValueError}) and an
        example such as C{weight=3}.
    @param context: The text that messages quote: the whole line or value.

    @return: The value of each option given, by name.

    @raise ValueError: for an unknown option, an option given twice, a flag
        given a value, a missing value or a bad one.
    """
    names = ", ".join(known)
    hasFlags = None in known.values()
    options: dict[str, object] = {}
    for word in words:
        name, equals, value = word.partition("=")
        if name not in known:
            if not equals and not hasFlags:
                raise ValueError(
                    f"expected name=value, got {word!r} in {context!r} "
                    f"(known names: {names})"
                )
            raise ValueError(
                f"unknown option {name!r} in {context!r} (known options: {names})"
            )
        if name in options:
            raise ValueError(f"option {name!r} given twice in {context!r}")
        reader = known[name]
        if reader is None:
            if equals:
                raise ValueError(
                    f"option {name!r} takes no value, got {word!r} in {context!r}"
                )
            options[name] = True
            continue
        read, example = reader
        if not value:
            raise ValueError(
                f"option {name!r} needs a value, such as {example}, in {context!r}"
            )
        try:
            options[name] = read(value)
        except ValueError as e:
            raise ValueError(f"bad {name} in {context!r}: {e}") from None
    return options


def _parseMain(sections: _Sections) -> tuple[tuple[str, ...], str | None]:
    """
    Return C{(listen, access_log)} from the C{[manualb]} section.
    """
    header = sections.main
    assert header is not None
    listen = _parseListen(sections, header)
    accessLog: str | None = sections.single(header, "access_log") or "-"
    if accessLog.lower() == "off":
        accessLog = None
    return listen, accessLog


def _parseListen(sections: _Sections, header: str) -> tuple[str, ...]:
    """
    Return the endpoint strings of C{listen}, each checked by Twisted's own
    parser so that a typo is reported now rather than when listening.
    """
    lines = sections.lines(header, "listen")
    if lines is None:
        raise sections.error(header, "listen", "missing required key")
    if not lines:
        raise sections.error(
            header, "listen", "needs at least one endpoint, such as tcp:8080"
        )
    seen: set[str] = set()
    for description in lines:
        if description in seen:
            raise sections.error(
                header, "listen", f"duplicate endpoint {description!r}"
            )
        seen.add(description)
        problem = _endpointProblem(description)
        if problem is not None:
            raise sections.error(
                header, "listen", f"cannot parse endpoint {description!r} ({problem})"
            )
    return tuple(lines)


def _endpointProblem(description: str) -> str | None:
    """
    Return why Twisted cannot parse the server endpoint string
    C{description}, or L{None} if it can.
    """
    # Parsing stores the reactor without using it for the endpoint types we
    # care about (tcp, tcp6, unix, ssl), so any object will do.
    reactorPlaceholder = object()
    try:
        serverFromString(reactorPlaceholder, description)
    # Endpoint parsers (including third-party plugins) raise all sorts of
    # exceptions for bad arguments; any of them means "cannot parse".
    except Exception as e:
        return str(e) or type(e).__name__
    return None


def _parseUpstream(sections: _Sections, header: str, name: str) -> UpstreamConfig:
    """
    Build the L{UpstreamConfig} of section C{[upstream NAME]}.
    """
    balance, balanceArgument = _parseBalance(sections, header)
    return UpstreamConfig(
        name=name,
        servers=_parseServers(sections, header),
        balance=balance,
        balance_argument=balanceArgument,
        connect_timeout=sections.duration(header, "connect_timeout", 5.0),
        read_timeout=sections.duration(header, "read_timeout", 60.0),
        send_timeout=sections.duration(header, "send_timeout", 60.0),
        keepalive=sections.integer(header, "keepalive", 32, minimum=0),
        keepalive_timeout=sections.duration(header, "keepalive_timeout", 60.0),
        keepalive_requests=sections.integer(
            header, "keepalive_requests", 1000, minimum=1
        ),
        passive_fail_on=_parsePassiveFailOn(sections, header),
        tries=sections.integer(header, "tries", 0, minimum=0),
        retry_timeout=sections.duration(header, "retry_timeout", 0.0, allowZero=True),
        retry_body_limit=sections.size(header, "retry_body_limit", 1024 * 1024),
        health_check=_parseHealthCheck(sections, header),
    )


def _parseBalance(sections: _Sections, header: str) -> tuple[str, str | None]:
    """
    Return the method and the argument (L{None} if none) of
    C{balance = METHOD [ARGUMENT]}, checked by making the balancer once, so
    that a bad argument or a user's factory that cannot be imported stops
    start-up.
    """
    text = sections.single(header, "balance")
    if text is None:
        return "round_robin", None
    # Imported here: balancers imports selection, which imports this module.
    from manualb import balancers

    method, *rest = text.split(None, 1)
    argument = rest[0].strip() if rest else None
    if "." not in method and method not in balancers.BALANCERS:
        raise sections.error(
            header,
            "balance",
            f"unknown method {method!r} (known: {', '.join(balancers.BALANCERS)}; "
            f"or the dotted name of your own balancer's factory, such as "
            f"mypackage.balancers.Fastest)",
        )
    try:
        balancers.makeBalancer(method, argument)
    # The factory may be the user's own code, which can raise anything (an
    # ImportError, an AttributeError, a TypeError...); a built-in one raises
    # ValueError for a bad argument.  Any of them means "cannot use".
    except Exception as e:
        reason = str(e) or type(e).__name__
        raise sections.error(
            header, "balance", f"cannot use {text!r}: {reason}"
        ) from None
    return method, argument


def _parseServers(sections: _Sections, header: str) -> tuple[ServerConfig, ...]:
    """
    Return the servers of an upstream section: at least one, no duplicate
    addresses, not all of them backups.
    """
    lines = sections.lines(header, "servers")
    if lines is None:
        raise sections.error(header, "servers", "missing required key")
    if not lines:
        raise sections.error(
            header, "servers", "needs at least one server, such as 10.0.0.1:80"
        )
    servers: list[ServerConfig] = []
    seen: dict[tuple[str, str, int], str] = {}
    for line in lines:
        try:
            server = _parseServerLine(line)
        except ValueError as e:
            raise sections.error(header, "servers", str(e)) from None
        address = server.address
        written = line.split()[0]
        identity = (address.scheme, _canonicalHost(address.host), address.port)
        if identity in seen:
            raise sections.error(
                header,
                "servers",
                f"duplicate server {written!r} (same as {seen[identity]!r})",
            )
        seen[identity] = written
        servers.append(server)
    if all(server.backup for server in servers):
        raise sections.error(
            header,
            "servers",
            "every server is a backup; at least one must not be, since backup "
            "servers take requests only when no other server can",
        )
    return tuple(servers)


#: The options of a server line, in the order messages list them; see
#: L{_parseOptions}.
_SERVER_OPTIONS: dict[str, tuple[Callable[[str], object], str] | None] = {
    "weight": (partial(_integerValue, minimum=1), "weight=3"),
    "max_fails": (partial(_integerValue, minimum=0), "max_fails=3"),
    "fail_timeout": (_durationValue, "fail_timeout=30s"),
    "backup": None,
    "down": None,
    "slow_start": (partial(_durationValue, allowZero=True), "slow_start=30s"),
    "max_conns": (partial(_integerValue, minimum=0), "max_conns=100"),
}


def _parseServerLine(line: str) -> ServerConfig:
    """
    Parse one line of C{servers}: an address (L{_parseServerAddress})
    followed by options separated by spaces, as nginx's C{server}
    parameters: C{10.0.0.1:80 weight=3 max_fails=2 fail_timeout=30s}.

    @raise ValueError: with a message quoting the line (or the address), if
        the address or an option is wrong.
    """
    text, *words = line.split()
    address = _parseServerAddress(text)
    options = _parseOptions(words, _SERVER_OPTIONS, line)
    return ServerConfig(address, **options)  # type: ignore[arg-type]


def _parsePassiveFailOn(sections: _Sections, header: str) -> frozenset[int]:
    """
    Return the status codes of C{passive_fail_on = 502 503 504}: at least
    one if the key is there, each from 500 to 599, none twice.
    """
    text = sections.single(header, "passive_fail_on")
    if text is None:
        return frozenset()
    codes: set[int] = set()
    for word in text.split():
        if not _FAILURE_STATUS.fullmatch(word):
            raise sections.error(
                header,
                "passive_fail_on",
                f"bad status code {word!r} in {text!r} (expected codes from 500 "
                f"to 599 separated by spaces, like 502 503 504)",
            )
        if int(word) in codes:
            raise sections.error(
                header, "passive_fail_on", f"status code {word} given twice in {text!r}"
            )
        codes.add(int(word))
    return frozenset(codes)


def _parseHealthCheck(sections: _Sections, header: str) -> HealthCheckConfig | None:
    """
    Return the active probes of C{health_check}: C{on} for the defaults of
    L{HealthCheckConfig}, C{off} for none (as when the key is absent), or
    C{name=value} options separated by spaces, such as
    C{path=/healthz interval=2s rise=2 fall=3 expect=2xx}.
    """
    text = sections.single(header, "health_check")
    if text is None or text.lower() == "off":
        return None
    if text.lower() == "on":
        return HealthCheckConfig()
    words = text.split()
    for word in words:
        if word.lower() in ("on", "off"):
            raise sections.error(
                header,
                "health_check",
                f"{word!r} stands alone, got {text!r}; give either on, off "
                f"or name=value options",
            )
    try:
        options = _parseOptions(words, _HEALTH_CHECK_OPTIONS, text)
    except ValueError as e:
        raise sections.error(header, "health_check", str(e)) from None
    defaults = HealthCheckConfig()
    interval = options.get("interval", defaults.interval)
    assert isinstance(interval, float)
    if "timeout" not in options:
        # As HAProxy's check timeout defaults to its inter: a short interval
        # alone does not make the default timeout a mistake.
        options["timeout"] = min(defaults.timeout, interval)
    timeout = options["timeout"]
    assert isinstance(timeout, float)
    if timeout > interval:
        # Quoted as written: timeout=1500ms, not 1s500ms.
        written = dict(word.split("=", 1) for word in words)
        if "interval" in written:
            given = f"interval={written['interval']}"
        else:
            given = f"interval={formatDuration(interval)} (the default)"
        raise sections.error(
            header,
            "health_check",
            f"timeout={written['timeout']} is longer than {given} in "
            f"{text!r} (a probe may take at most the interval)",
        )
    return attrs.evolve(defaults, **options)  # type: ignore[arg-type]


def _healthCheckPath(text: str) -> str:
    """
    Check the C{path} of C{health_check}.
    """
    if not text.startswith("/"):
        raise ValueError(f"must start with '/', got {text!r}")
    return text


def _statusCodes(text: str) -> frozenset[int]:
    """
    Read the C{expect} of C{health_check}: status codes such as C{200} and
    classes such as C{2xx}, separated by commas.
    """
    codes: set[int] = set()
    seen: set[str] = set()
    for item in text.split(","):
        if _STATUS.fullmatch(item):
            codes.add(int(item))
        elif _STATUS_CLASS.fullmatch(item):
            first = int(item[0]) * 100
            codes.update(range(first, first + 100))
        else:
            raise ValueError(
                f"bad status {item!r} (expected codes such as 200 or classes "
                f"such as 2xx, separated by commas)"
            )
        if item.lower() in seen:
            raise ValueError(f"status {item!r} given twice")
        seen.add(item.lower())
    return frozenset(codes)


def _regularExpression(text: str) -> str:
    """
    Check the C{body} of C{health_check}: a regular expression, as the probe
    uses it, on the bytes of the response body.
    """
    try:
        re.compile(text.encode("utf-8"))
    except re.error as e:
        raise ValueError(f"not a valid regular expression: {e}") from None
    return text


def _hostHeader(text: str) -> str:
    """
    Check the C{host} of C{health_check}: a host name or address, and
    optionally a port, as a C{Host} header gives them.
    """
    if not _HOST_HEADER.fullmatch(text):
        raise ValueError(
            f"expected a host name with an optional port, like "
            f"backend.example or backend.example:8080, got {text!r}"
        )
    return text


#: The options of C{health_check}, in the order messages list them; see
#: L{_parseOptions}.
_HEALTH_CHECK_OPTIONS: dict[str, tuple[Callable[[str], object], str] | None] = {
    "path": (_healthCheckPath, "path=/healthz"),
    "interval": (_durationValue, "interval=2s"),
    "timeout": (_durationValue, "timeout=1s"),
    "rise": (partial(_integerValue, minimum=1), "rise=2"),
    "fall": (partial(_integerValue, minimum=1), "fall=3"),
    "expect": (_statusCodes, "expect=200"),
    "body": (_regularExpression, "body=ok"),
    "host": (_hostHeader, "host=backend.example"),
}


def _parseServerAddress(text: str) -> ServerAddress:
    """
    Parse one entry of C{servers}: C{host:port}, C{[v6addr]:port}, C{host}
    (the scheme's default port, 80 for http) or any of those behind
    C{http://}.

    @raise ValueError: with a message quoting C{text}, if it is not a
        supported server address.
    """
    scheme = "http"
    rest = text
    if "://" in text:
        scheme, rest = text.split("://", 1)
        scheme = scheme.lower()
        if scheme not in SCHEMES:
            raise ValueError(
                f"unsupported scheme {scheme!r} in {text!r} "
                f"(supported: {', '.join(SCHEMES)})"
            )
        if "/" in rest.rstrip("/"):
            raise ValueError(
                f"unexpected path in {text!r}; give only scheme://host:port"
            )
        rest = rest.rstrip("/")
    host, portText = _splitHostPort(rest, text)
    port = _DEFAULT_PORTS[scheme] if portText is None else _parsePort(portText, text)
    return ServerAddress(host=host, port=port, scheme=scheme)


def _splitHostPort(hostPort: str, text: str) -> tuple[str, str | None]:
    """
    Split C{host:port} or C{[v6addr]:port} into host and port text (L{None}
    if there is no port), checking the host.
    """
    if hostPort.startswith("["):
        address, bracket, after = hostPort[1:].partition("]")
        if not bracket:
            raise ValueError(f"missing ']' in {text!r}")
        if after and not after.startswith(":"):
            raise ValueError(f"unexpected {after!r} after ']' in {text!r}")
        _checkIPv6(address, text)
        return address, (after[1:] if after else None)
    if hostPort.count(":") > 1:
        raise ValueError(f"IPv6 address needs brackets, like [::1]:8080, in {text!r}")
    host, colon, portText = hostPort.partition(":")
    if not host:
        raise ValueError(f"empty host in {text!r}")
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"bad host {host!r} in {text!r}")
    return host, (portText if colon else None)


def _checkIPv6(address: str, text: str) -> None:
    """
    Insist that C{address}, found between brackets, is an IPv6 address.
    """
    if not address:
        raise ValueError(f"empty host in {text!r}")
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        raise ValueError(f"bad IPv6 address {address!r} in {text!r}") from None


def _parsePort(portText: str, text: str) -> int:
    """
    Return C{portText} as a TCP port number, 1..65535.
    """
    # isdigit() alone would accept non-ASCII digits such as "٨٠".
    if not (portText.isascii() and portText.isdigit()):
        raise ValueError(f"bad port {portText!r} in {text!r}")
    port = int(portText)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range 1..65535 in {text!r}")
    return port


def _canonicalHost(host: str) -> str:
    """
    Return a spelling of C{host} that is equal for equal hosts, so that
    C{A:80} and C{a:80}, or C{[::1]} and C{[0::1]}, count as duplicates.
    """
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host.lower()


def _parseRoute(sections: _Sections, header: str, name: str) -> RouteConfig:
    """
    Build the L{RouteConfig} of section C{[route NAME]}.
    """
    path = sections.single(header, "path", required=True)
    assert path is not None
    if not path.startswith("/"):
        raise sections.error(header, "path", f"must start with '/', got {path!r}")
    if any(character.isspace() for character in path):
        raise sections.error(header, "path", f"must not contain spaces, got {path!r}")
    upstream = sections.single(header, "upstream", required=True)
    assert upstream is not None
    return RouteConfig(name=name, path=path, upstream=upstream)


def _checkRoutes(
    source: str,
    routes: tuple[RouteConfig, ...],
    upstreams: Mapping[str, UpstreamConfig],
    headers: Mapping[str, str],
) -> None:
    """
    Check what no single route section can: that there is a route, that each
    names an existing upstream, and that no two share a path.
    """
    if not routes:
        raise ConfigError(
            source,
            None,
            None,
            "no [route NAME] section; at least one route is needed, such as "
            "[route default] with path = / and upstream = NAME",
        )
    paths: dict[str, str] = {}
    for route in routes:
        header = headers[route.name]
        if route.upstream not in upstreams:
            defined = ", ".join(upstreams) or "none"
            raise ConfigError(
                source,
                header,
                "upstream",
                f"no section [upstream {route.upstream}] "
                f"(defined upstreams: {defined})",
            )
        if route.path in paths:
            raise ConfigError(
                source,
                header,
                "path",
                f"path {route.path!r} is already used by [{paths[route.path]}]",
            )
        paths[route.path] = header
