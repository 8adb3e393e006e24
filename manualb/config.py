"""
Read and validate the manualb configuration file.

The file is INI (L{configparser}) and becomes a tree of frozen L{attrs}
objects: L{Config} holding L{UpstreamConfig} (with its L{ServerConfig}s,
each holding a L{ServerAddress}, and its L{HealthCheckConfig}),
L{RouteConfig}, L{ListenerConfig}, L{StreamConfig} and L{TLSConfig} (with
its L{CertificateConfig}s).  Everything is checked before the load balancer
starts so that the rest of the program can trust these objects, and so that
every mistake stops start-up with one message naming the file, section and
key (L{ConfigError}) instead of a traceback or a surprise at request time.

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

    [route static]
    host = www.example.com
    path = ^~ /static/
    strip_prefix = on
    upstream = my_backend_pool

Files named in the configuration (certificates, keys, C{tls_ca}) are found
relative to the directory of the configuration file, or of the current
directory when the text does not come from a file.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
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
    "PREFIX",
    "PREFIX_NO_REGEX",
    "EXACT",
    "REGEX",
    "REGEX_CASELESS",
    "RouteConfig",
    "ListenerConfig",
    "CertificateConfig",
    "TLSConfig",
    "StreamConfig",
    "GatekeeperConfig",
    "Config",
    "parseConfig",
    "loadConfig",
]

#: URL schemes a server address may use.
SCHEMES: tuple[str, ...] = ("http", "https")

_DEFAULT_PORTS = {"http": 80, "https": 443}

# configparser treats its default section specially (its keys leak into every
# other section).  A header cannot contain a newline, so no file can name this
# one and "[DEFAULT]" becomes an ordinary, unknown section.
_NO_DEFAULT_SECTION = "\n"

# Stricter than configparser's own pattern, which silently ignores anything
# after the closing bracket ("[route a] b").  Comments are already removed.
_SECTION_HEADER = re.compile(r"\[(?P<header>[^\]]+)\]$")

_KNOWN_SECTIONS = (
    "[manualb], [gatekeeper], [upstream NAME], [route NAME], [listener NAME], "
    "[stream NAME], [tls]"
)
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")
# The status codes passive_fail_on accepts, and those and the classes (2xx)
# that health_check's expect accepts.
_FAILURE_STATUS = re.compile(r"5[0-9][0-9]")
_STATUS = re.compile(r"[1-5][0-9][0-9]")
_STATUS_CLASS = re.compile(r"[1-5][xX][xX]")
# What the Host header of a probe may be: a name or address, and a port.
_HOST_HEADER = re.compile(r"(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
# One label of a host name, once lower-cased (route hosts, certificate names,
# tls_name): stricter than _HOSTNAME, as these are matched against names.
_HOST_LABEL = re.compile(r"[a-z0-9-]+")


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
    @ivar scheme: Protocol spoken to the server: C{"http"}, or C{"https"}
        (HTTP over TLS, as the upstream's C{tls_*} settings say).
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

# The modifier of each kind of path, as nginx's location writes it.
_PATH_MODIFIERS = {
    PREFIX_NO_REGEX: "^~",
    EXACT: "=",
    REGEX: "~",
    REGEX_CASELESS: "~*",
}


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
class GatekeeperConfig:
    """
    The C{[gatekeeper]} section: what a client may make the proxy hold
    (time, memory, sockets) before any backend is involved.  Names and
    defaults are nginx's where nginx has the limit.

    @ivar client_header_timeout: Seconds in which the whole request head
        (request line and headers) must arrive, counted from its first byte;
        a slower client is closed with 408.
    @ivar client_body_timeout: Seconds the client may stay silent between
        two reads of a request body; then 408.
    @ivar keepalive_timeout: Seconds an idle kept-alive client connection
        stays open between two requests.
    @ivar send_timeout: Seconds a client may go without taking any of a
        response written to it; then the connection is closed.
    @ivar client_max_body_size: The largest request body in bytes, checked
        against C{Content-Length} before any is read and counted while a
        chunked body streams; 413 beyond it.  C{0} for no limit.
    @ivar max_request_line: The longest request line in bytes; 414 beyond.
    @ivar max_header_size: The largest header block in bytes (every header
        line, HTTP/2's decoded header list included); 431 beyond.
    @ivar max_headers: The most header fields in one request; 431 beyond.
    @ivar max_connections: The most client connections open at once on one
        process; a connection beyond it gets 503 and is closed.
    """

    client_header_timeout: float = 60.0
    client_body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    send_timeout: float = 60.0
    client_max_body_size: int = 1024 * 1024
    max_request_line: int = 8 * 1024
    max_header_size: int = 32 * 1024
    max_headers: int = 100
    max_connections: int = 1024


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
    @ivar client_timeout: When given in C{[manualb]}, the default of
        C{[gatekeeper]}'s C{client_header_timeout}, C{client_body_timeout}
        and C{keepalive_timeout} (which C{gatekeeper} then holds).
    @ivar gatekeeper: The client limits of C{[gatekeeper]}.
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
    gatekeeper: GatekeeperConfig = GatekeeperConfig()


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
        Relative paths in the file are relative to its directory when it
        names a file, else to the current directory.

    @raise ConfigError: on the first mistake found.
    """
    parser = _readIni(text, source)
    sections = _Sections(source, parser)
    sections.classify()
    directory = _configDirectory(source)
    listen, accessLog, redirect = _parseMain(sections)
    clientTimeout = (
        None
        if sections.main is None
        else sections.duration(sections.main, "client_timeout", None)
    )
    gatekeeper = _parseGatekeeper(sections, clientTimeout)
    tls = None if sections.tls is None else _parseTLS(sections, sections.tls, directory)
    upstreams = {
        name: _parseUpstream(sections, header, name, directory)
        for name, header in sections.upstreams.items()
    }
    routes = tuple(
        _parseRoute(sections, header, name)
        for name, header in sections.routes.items()
    )
    listeners = _parseListeners(sections, listen, redirect)
    streams = tuple(
        _parseStream(sections, header, name, upstreams)
        for name, header in sections.streams.items()
    )
    _checkRoutes(source, routes, upstreams, sections.routes, needed=bool(listeners))
    _checkEndpointsUnique(sections, listen, listeners, streams)
    return Config(
        source=source,
        listen=listen,
        access_log=accessLog,
        upstreams=upstreams,
        routes=routes,
        client_timeout=60.0 if clientTimeout is None else clientTimeout,
        listeners=listeners,
        tls=tls,
        streams=streams,
        gatekeeper=gatekeeper,
    )


def _parseGatekeeper(
    sections: "_Sections", clientTimeout: float | None
) -> GatekeeperConfig:
    """
    The C{[gatekeeper]} section, or its defaults; C{[manualb]
    client_timeout}, when given, is the default of the three timeouts that
    it used to stand for.
    """
    default = GatekeeperConfig()
    if clientTimeout is not None:
        default = attrs.evolve(
            default,
            client_header_timeout=clientTimeout,
            client_body_timeout=clientTimeout,
            keepalive_timeout=clientTimeout,
        )
    header = sections.gatekeeper
    if header is None:
        return default
    values = {}
    for field in attrs.fields(GatekeeperConfig):
        name = field.name
        current = getattr(default, name)
        if name.endswith("_timeout"):
            values[name] = sections.duration(header, name, current)
        elif name in ("client_max_body_size", "max_request_line", "max_header_size"):
            values[name] = sections.size(header, name, current)
            if values[name] == 0 and name != "client_max_body_size":
                raise sections.error(header, name, "must be more than 0")
        else:
            values[name] = sections.integer(header, name, current, 1)
    return GatekeeperConfig(**values)


def _configDirectory(source: str) -> str:
    """
    Return the absolute directory that relative paths in the configuration
    are relative to: that of the file C{source}, or the current directory
    when C{source} is not a file (such as C{"<string>"}).
    """
    if os.path.isfile(source):
        return os.path.dirname(os.path.abspath(source))
    return os.getcwd()


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
    @ivar tls: The header of the C{[tls]} section, or L{None}.
    @ivar gatekeeper: The header of the C{[gatekeeper]} section, or L{None}.
    @ivar upstreams: Upstream name to section header, in file order.
    @ivar routes: Route name to section header, in file order.
    @ivar listeners: Listener name to section header, in file order.
    @ivar streams: Stream name to section header, in file order.
    """

    _MAIN_KEYS = ("listen", "access_log", "client_timeout", "redirect_https")
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
        "tunnel_timeout",
        "tls_verify",
        "tls_ca",
        "tls_name",
    )
    _ROUTE_KEYS = ("path", "upstream", "host", "strip_prefix", "rewrite")
    _LISTENER_KEYS = ("listen", "routes", "redirect_https")
    _STREAM_KEYS = ("listen", "upstream", "proxy_protocol", "idle_timeout")
    _TLS_KEYS = ("certificates", "min_version", "ciphers", "hsts")
    _GATEKEEPER_KEYS = tuple(field.name for field in attrs.fields(GatekeeperConfig))

    def __init__(self, source: str, parser: configparser.RawConfigParser) -> None:
        self.source = source
        self.parser = parser
        self.main: str | None = None
        self.tls: str | None = None
        self.gatekeeper: str | None = None
        self.upstreams: dict[str, str] = {}
        self.routes: dict[str, str] = {}
        self.listeners: dict[str, str] = {}
        self.streams: dict[str, str] = {}

    def error(self, section: str | None, key: str | None, message: str) -> ConfigError:
        """
        Make a L{ConfigError} for this file.
        """
        return ConfigError(self.source, section, key, message)

    def classify(self) -> None:
        """
        Sort every section by kind and check its keys against the known ones.
        C{[manualb]} is required unless C{[listener]} or C{[stream]} sections
        do the listening.
        """
        for header in self.parser.sections():
            self._classifyOne(header)
        if self.main is None and not self.listeners and not self.streams:
            raise self.error(
                "manualb",
                None,
                "missing section (it holds 'listen', which is required)",
            )

    def _classifyOne(self, header: str) -> None:
        words = header.split()
        kind = words[0] if words else ""
        if kind in ("manualb", "tls", "gatekeeper"):
            if len(words) > 1:
                raise self.error(header, None, f"[{kind}] takes no name")
            attribute, known = {
                "manualb": ("main", self._MAIN_KEYS),
                "tls": ("tls", self._TLS_KEYS),
                "gatekeeper": ("gatekeeper", self._GATEKEEPER_KEYS),
            }[kind]
            seen = getattr(self, attribute)
            if seen is not None:
                raise self.error(header, None, f"duplicate section (see [{seen}])")
            setattr(self, attribute, header)
        elif kind in ("upstream", "route", "listener", "stream"):
            name = self._sectionName(header, words)
            named, known = {
                "upstream": (self.upstreams, self._UPSTREAM_KEYS),
                "route": (self.routes, self._ROUTE_KEYS),
                "listener": (self.listeners, self._LISTENER_KEYS),
                "stream": (self.streams, self._STREAM_KEYS),
            }[kind]
            if name in named:
                raise self.error(
                    header, None, f"duplicate section (see [{named[name]}])"
                )
            named[name] = header
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

    def flag(self, section: str, key: str, default: bool) -> bool:
        """
        Return C{on} as C{True} and C{off} as C{False} (in any case), or
        C{default} if absent.
        """
        text = self.single(section, key)
        if text is None:
            return default
        value = text.lower()
        if value not in ("on", "off"):
            raise self.error(section, key, f"expected on or off, got {text!r}")
        return value == "on"

    def file(self, section: str, key: str, directory: str) -> str | None:
        """
        Return the absolute path of a readable file (L{_readableFile}), or
        L{None} if absent.
        """
        text = self.single(section, key)
        if text is None:
            return None
        try:
            return _readableFile(text, directory)
        except ValueError as e:
            raise self.error(section, key, str(e)) from None


def _readableFile(text: str, directory: str) -> str:
    """
    Return the absolute path of the file C{text}, relative to C{directory}
    unless absolute, after checking that it is a file that can be read.

    @raise ValueError: with a message quoting C{text} (and the path looked
        at, when that is another).
    """
    path = os.path.abspath(os.path.join(directory, text))
    shown = repr(text) if path == text else f"{text!r} ({path})"
    if not os.path.exists(path):
        raise ValueError(f"no such file {shown}")
    if not os.path.isfile(path):
        raise ValueError(f"not a file: {shown}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"cannot read {shown}: permission denied")
    return path


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


def _parseMain(
    sections: _Sections,
) -> tuple[tuple[str, ...], str | None, int | None]:
    """
    Return C{(listen, access_log, redirect_https)} from the C{[manualb]}
    section, or their defaults when there is none.  C{listen} may be left
    out (giving no endpoint) when C{[listener]} or C{[stream]} sections
    listen instead.
    """
    header = sections.main
    if header is None:
        return (), "-", None
    listen = _parseEndpoints(sections, header, required=False)
    if listen is None:
        if not sections.listeners and not sections.streams:
            raise sections.error(
                header,
                "listen",
                "nothing to listen on: give endpoints here, such as "
                "listen = tcp:8080, or add a [listener NAME] or [stream NAME] "
                "section",
            )
        listen = ()
    redirect = _parseRedirect(sections, header, listen)
    accessLog: str | None = sections.single(header, "access_log") or "-"
    if accessLog.lower() == "off":
        accessLog = None
    return listen, accessLog, redirect


def _parseRedirect(
    sections: _Sections, header: str, listen: tuple[str, ...]
) -> int | None:
    """
    Return the port of C{redirect_https = off|on|PORT} (C{on} is 443), or
    L{None} for C{off} or when absent; C{listen} are the endpoints it
    applies to, of which at least one must be plain (not C{sni:}).
    """
    text = sections.single(header, "redirect_https")
    if text is None or text.lower() == "off":
        return None
    if text.lower() == "on":
        port = 443
    elif text.isascii() and text.isdigit():
        port = int(text)
        if not 1 <= port <= 65535:
            raise sections.error(
                header, "redirect_https", f"port {port} out of range 1..65535"
            )
    else:
        raise sections.error(
            header,
            "redirect_https",
            f"expected off, on (port 443) or a port number, got {text!r}",
        )
    if not listen:
        raise sections.error(
            header,
            "redirect_https",
            "there is no listen here for it to apply to; set redirect_https "
            "in the [listener NAME] whose connections should be redirected",
        )
    if all(_isSNI(description) for description in listen):
        raise sections.error(
            header,
            "redirect_https",
            "every endpoint of listen is sni: (TLS already), so there is "
            "nothing to redirect; it applies to plain endpoints such as tcp:80",
        )
    return port


def _parseEndpoints(
    sections: _Sections, header: str, required: bool, allowSNI: bool = True
) -> tuple[str, ...] | None:
    """
    Return the endpoint strings of C{listen}, or L{None} if the optional key
    is absent.  Each is checked by Twisted's own parser so that a typo is
    reported now rather than when listening, except manualb's C{sni:}, which
    is checked here (L{_sniProblem}) and needs a C{[tls]} section.

    @param allowSNI: Whether C{sni:} endpoints may be given (HTTP listeners)
        or not (streams).
    """
    lines = sections.lines(header, "listen")
    if lines is None:
        if required:
            raise sections.error(header, "listen", "missing required key")
        return None
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
        if _isSNI(description):
            if not allowSNI:
                raise sections.error(
                    header,
                    "listen",
                    f"endpoint {description!r} cannot be used here: sni: "
                    f"terminates TLS for HTTP routes, while a stream passes "
                    f"bytes through (listen with tcp: instead)",
                )
            problem = _sniProblem(description)
        else:
            problem = _endpointProblem(description)
        if problem is not None:
            raise sections.error(
                header, "listen", f"cannot parse endpoint {description!r} ({problem})"
            )
        if _isSNI(description) and sections.tls is None:
            raise sections.error(
                header,
                "listen",
                f"endpoint {description!r} needs a [tls] section, whose "
                f"certificates it serves",
            )
    return tuple(lines)


def _isSNI(description: str) -> bool:
    """
    Whether C{description} is a C{sni:} endpoint (types are not case
    sensitive, as Twisted matches endpoint plugins).
    """
    return description.split(":", 1)[0].strip().lower() == "sni"


_SNI_SYNTAX = "sni:PORT[:interface=ADDRESS][:tls=FILE], such as sni:443"
_SNI_KEYWORDS = ("interface", "tls", "backlog")


def _sniProblem(description: str) -> str | None:
    """
    Return what is wrong with the C{sni:} endpoint string C{description}, or
    L{None} if nothing is: C{sni:}, a port (0 to 65535), then optionally
    C{interface=ADDRESS} and C{tls=FILE}, each once.  Colons, equals signs
    and backslashes are escaped with a backslash, as Twisted reads them.
    """
    fields: list[list[str]] = [[""]]
    characters = iter(description)
    for character in characters:
        if character == "\\":
            escaped = next(characters, None)
            if escaped is None:
                return "it ends with a lone backslash"
            fields[-1][-1] += escaped
        elif character == ":":
            fields.append([""])
        elif character == "=" and len(fields[-1]) == 1:
            fields[-1].append("")
        else:
            fields[-1][-1] += character
    if len(fields) < 2:
        return f"missing port: expected {_SNI_SYNTAX}"
    port = fields[1]
    if len(port) != 1 or not (port[0].isascii() and port[0].isdigit()):
        written = "=".join(port)
        return f"bad port {written!r}: expected {_SNI_SYNTAX}"
    if int(port[0]) > 65535:
        return f"port {int(port[0])} out of range 0..65535"
    given: set[str] = set()
    for field in fields[2:]:
        if len(field) == 1:
            return (
                f"unexpected {field[0]!r}: after the port, sni: takes only "
                f"interface=ADDRESS, backlog=N and tls=FILE"
            )
        name, value = field
        if name not in _SNI_KEYWORDS:
            return (
                f"unknown argument {name!r}: after the port, sni: takes only "
                f"interface=ADDRESS, backlog=N and tls=FILE"
            )
        if name in given:
            return f"{name} given twice"
        if not value:
            return f"{name} needs a value"
        if name == "backlog" and not (
            value.isascii() and value.isdigit() and int(value) >= 1
        ):
            return f"bad backlog {value!r}: a whole number, at least 1"
        given.add(name)
    return None


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


def _parseListeners(
    sections: _Sections, listen: tuple[str, ...], redirect: int | None
) -> tuple[ListenerConfig, ...]:
    """
    Return the HTTP listeners: C{"default"} for the C{listen} lines of
    C{[manualb]} (with its C{redirect_https}), if it has any, then the
    C{[listener NAME]} sections in file order.
    """
    listeners = []
    if listen:
        listeners.append(ListenerConfig("default", listen, None, redirect))
    for name, header in sections.listeners.items():
        if name == "default" and listen:
            raise sections.error(
                header,
                None,
                "the name 'default' is taken by the listen lines of [manualb]; "
                "choose another",
            )
        endpoints = _parseEndpoints(sections, header, required=True)
        assert endpoints is not None
        listeners.append(
            ListenerConfig(
                name,
                endpoints,
                _parseListenerRoutes(sections, header),
                _parseRedirect(sections, header, endpoints),
            )
        )
    return tuple(listeners)


def _parseListenerRoutes(sections: _Sections, header: str) -> tuple[str, ...] | None:
    """
    Return the route names of a listener's C{routes}, each of an existing
    C{[route NAME]} and none twice, or L{None} (all routes) if absent.
    """
    text = sections.single(header, "routes")
    if text is None:
        return None
    names: list[str] = []
    for name in text.split():
        if name not in sections.routes:
            defined = ", ".join(sections.routes) or "none"
            raise sections.error(
                header,
                "routes",
                f"no section [route {name}] (defined routes: {defined})",
            )
        if name in names:
            raise sections.error(header, "routes", f"route {name!r} given twice")
        names.append(name)
    return tuple(names)


def _parseStream(
    sections: _Sections,
    header: str,
    name: str,
    upstreams: Mapping[str, UpstreamConfig],
) -> StreamConfig:
    """
    Build the L{StreamConfig} of section C{[stream NAME]}.
    """
    listen = _parseEndpoints(sections, header, required=True, allowSNI=False)
    assert listen is not None
    upstream = sections.single(header, "upstream", required=True)
    assert upstream is not None
    if upstream not in upstreams:
        defined = ", ".join(upstreams) or "none"
        raise sections.error(
            header,
            "upstream",
            f"no section [upstream {upstream}] (defined upstreams: {defined})",
        )
    proxyProtocol = None
    text = sections.single(header, "proxy_protocol")
    if text is not None:
        if text.lower() not in ("off", "v1", "v2"):
            raise sections.error(
                header, "proxy_protocol", f"expected off, v1 or v2, got {text!r}"
            )
        if text.lower() != "off":
            proxyProtocol = text.lower()
    return StreamConfig(
        name=name,
        listen=listen,
        upstream=upstream,
        proxy_protocol=proxyProtocol,
        idle_timeout=sections.duration(header, "idle_timeout", 600.0),
    )


def _checkEndpointsUnique(
    sections: _Sections,
    listen: tuple[str, ...],
    listeners: tuple[ListenerConfig, ...],
    streams: tuple[StreamConfig, ...],
) -> None:
    """
    Insist that no endpoint string is given by two of C{[manualb] listen},
    the listeners and the streams (the duplicates within one C{listen} are
    found while parsing it).
    """
    owners: list[tuple[str, tuple[str, ...]]] = []
    named = listeners
    if listen:
        assert sections.main is not None
        owners.append((sections.main, listen))
        named = listeners[1:]
    for listener in named:
        owners.append((sections.listeners[listener.name], listener.listen))
    for stream in streams:
        owners.append((sections.streams[stream.name], stream.listen))
    used: dict[str, str] = {}
    for header, endpoints in owners:
        for description in endpoints:
            if _anyPort(description):
                # Port 0 asks for a free port: each such endpoint gets its own.
                continue
            if description in used:
                raise sections.error(
                    header,
                    "listen",
                    f"endpoint {description!r} is already used by "
                    f"[{used[description]}]",
                )
        for description in endpoints:
            used[description] = header


def _anyPort(description: str) -> bool:
    """
    Whether a TCP-like endpoint string asks for port 0.
    """
    fields = description.split(":")
    return len(fields) > 1 and fields[1].strip() == "0"


def _parseUpstream(
    sections: _Sections, header: str, name: str, directory: str
) -> UpstreamConfig:
    """
    Build the L{UpstreamConfig} of section C{[upstream NAME]}; C{directory}
    is where a relative C{tls_ca} is.
    """
    balance, balanceArgument = _parseBalance(sections, header)
    tlsVerify = sections.flag(header, "tls_verify", True)
    tlsCA = sections.file(header, "tls_ca", directory)
    if tlsCA is not None and not tlsVerify:
        raise sections.error(
            header,
            "tls_ca",
            "has no use with tls_verify = off, which trusts any certificate; "
            "remove one of them",
        )
    tlsName = sections.single(header, "tls_name")
    if tlsName is not None:
        try:
            tlsName = _hostName(tlsName, wildcard=False)
        except ValueError as e:
            raise sections.error(header, "tls_name", str(e)) from None
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
        tls_verify=tlsVerify,
        tls_ca=tlsCA,
        tls_name=tlsName,
        tunnel_timeout=sections.duration(header, "tunnel_timeout", 3600.0),
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
    seen: dict[tuple[str, int], str] = {}
    for line in lines:
        try:
            server = _parseServerLine(line)
        except ValueError as e:
            raise sections.error(header, "servers", str(e)) from None
        address = server.address
        written = line.split()[0]
        # Not the scheme: one port does not speak both http and https, and
        # logs, the access log and balancers know a server by host:port.
        identity = (_canonicalHost(address.host), address.port)
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
    C{path=/healthz interval=2s rise=2 fall=3 expect=2xx}.  With C{type=tcp}
    a probe only connects, so the options of the request and its response
    (C{path}, C{expect}, C{body}, C{host}) are refused.
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
    if options.get("type") == "tcp":
        for option in _HTTP_CHECK_OPTIONS:
            if option in options:
                raise sections.error(
                    header,
                    "health_check",
                    f"option {option!r} does not apply to type=tcp in {text!r} "
                    f"(a TCP check only connects; use type=http to send a "
                    f"request)",
                )
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


def _checkType(text: str) -> str:
    """
    Check the C{type} of C{health_check}: C{http} or C{tcp}, in any case.
    """
    if text.lower() not in ("http", "tcp"):
        raise ValueError(f"expected http or tcp, got {text!r}")
    return text.lower()


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
    "type": (_checkType, "type=tcp"),
}

#: The options of C{health_check} that only an HTTP probe has.
_HTTP_CHECK_OPTIONS = ("path", "expect", "body", "host")


def _parseServerAddress(text: str) -> ServerAddress:
    """
    Parse one entry of C{servers}: C{host:port}, C{[v6addr]:port}, C{host}
    (the scheme's default port, 80 for http and 443 for https) or any of
    those behind C{http://} or C{https://}.

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
    match, path = _parseRoutePath(sections, header)
    host = _parseRouteHost(sections, header)
    upstream = sections.single(header, "upstream", required=True)
    assert upstream is not None
    stripPrefix = sections.flag(header, "strip_prefix", False)
    if stripPrefix and match not in (PREFIX, PREFIX_NO_REGEX):
        written = _writtenPath(match, path)
        raise sections.error(
            header,
            "strip_prefix",
            f"needs a prefix path (such as /app or ^~ /app), but the path is "
            f"{written!r}",
        )
    rewrite = _parseRewrite(sections, header)
    if rewrite is not None and stripPrefix:
        raise sections.error(
            header,
            "rewrite",
            "cannot be used together with strip_prefix = on; let the rewrite "
            "remove the prefix too, such as rewrite = ^/app/(.*)$ /$1",
        )
    return RouteConfig(
        name=name,
        path=path,
        upstream=upstream,
        match=match,
        host=host,
        strip_prefix=stripPrefix,
        rewrite=rewrite,
    )


#: The kind of path of each of nginx's location modifiers.
_MODIFIER_MATCHES = {
    modifier: match for match, modifier in _PATH_MODIFIERS.items()
}


def _parseRoutePath(sections: _Sections, header: str) -> tuple[str, str]:
    """
    Return C{(match, path)} from C{path}, written as nginx's C{location}
    takes it: C{/prefix}, C{^~ /prefix}, C{= /exact}, C{~ REGEX} or
    C{~* REGEX}; the path without its modifier.
    """
    text = sections.single(header, "path", required=True)
    assert text is not None
    first, *rest = text.split(None, 1)
    if first in _MODIFIER_MATCHES:
        match = _MODIFIER_MATCHES[first]
        if not rest:
            example = "/app" if match in (PREFIX_NO_REGEX, EXACT) else r"\.php$"
            raise sections.error(
                header,
                "path",
                f"{first!r} needs a path after it, such as {first} {example}",
            )
        path = rest[0]
    elif text.startswith("/"):
        match, path = PREFIX, text
    else:
        # Longest first: "~*" before "~".
        for modifier in ("^~", "~*", "=", "~"):
            if text.startswith(modifier):
                raise sections.error(
                    header,
                    "path",
                    f"put a space after the modifier {modifier!r}, as in "
                    f"{modifier} {text[len(modifier):]}",
                )
        raise sections.error(header, "path", f"must start with '/', got {text!r}")
    if any(character.isspace() for character in path):
        raise sections.error(header, "path", f"must not contain spaces, got {text!r}")
    if match in (PREFIX_NO_REGEX, EXACT) and not path.startswith("/"):
        raise sections.error(
            header,
            "path",
            f"the path after {first!r} must start with '/', got {path!r}",
        )
    if match in (REGEX, REGEX_CASELESS):
        flags = re.IGNORECASE if match == REGEX_CASELESS else 0
        try:
            _compileRegex(path, flags)
        except ValueError as e:
            raise sections.error(header, "path", str(e)) from None
    return match, path


def _writtenPath(match: str, path: str) -> str:
    """
    Return C{path} as it is written with its modifier, for messages.
    """
    if match == PREFIX:
        return path
    return f"{_PATH_MODIFIERS[match]} {path}"


def _compileRegex(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """
    Compile C{pattern} as a string, and check that it also compiles as the
    bytes pattern that matches request paths (its UTF-8 encoding: some
    constructs, such as named Unicode escapes or the C{u} flag, only exist
    for strings).

    @raise ValueError: with a message quoting C{pattern} and giving L{re}'s.
    """
    try:
        compiled = re.compile(pattern, flags)
        re.compile(pattern.encode("utf-8"), flags)
    except re.error as e:
        raise ValueError(
            f"not a valid regular expression {pattern!r}: {e}"
        ) from None
    return compiled


def _parseRouteHost(sections: _Sections, header: str) -> str | None:
    """
    Return the C{host} of a route, lower case: a name or a C{*.wildcard};
    L{None} for any host (C{*} or no key).
    """
    text = sections.single(header, "host")
    if text is None or text == "*":
        return None
    if len(text.split()) > 1:
        raise sections.error(
            header,
            "host",
            f"expected one host, got {text!r} (give each host a route of its own)",
        )
    try:
        return _hostName(text, wildcard=True)
    except ValueError as e:
        raise sections.error(header, "host", str(e)) from None


def _hostName(text: str, wildcard: bool) -> str:
    """
    Return the host name C{text} in lower case, after checking it: labels of
    letters, digits and C{-}, separated by dots, and no port; when
    C{wildcard}, one leading C{*.} is allowed, as in C{*.example.com}.

    @raise ValueError: with a message quoting C{text}.
    """
    name = text.lower()
    labels = name[2:] if wildcard and name.startswith("*.") else name
    if "*" in labels:
        if wildcard:
            raise ValueError(
                f"a wildcard is allowed only as one leading '*.', such as "
                f"*.example.com, got {text!r}"
            )
        raise ValueError(f"expected a host name without wildcard, got {text!r}")
    host, colon, port = labels.rpartition(":")
    if colon and host and ":" not in host and port.isascii() and port.isdigit():
        raise ValueError(f"a host name has no port, got {text!r}")
    if not labels.isascii() or not all(
        _HOST_LABEL.fullmatch(label) for label in labels.split(".")
    ):
        example = "www.example.com"
        if wildcard:
            example += " or *.example.com"
        raise ValueError(
            f"bad host name {text!r} (expected letters, digits and '-' in "
            f"labels separated by dots, such as {example})"
        )
    return name


def _parseRewrite(sections: _Sections, header: str) -> tuple[str, str] | None:
    """
    Return C{(regex, replacement)} from C{rewrite = REGEX REPLACEMENT}, as
    written, after checking them: as nginx's C{rewrite}, C{$1} to C{$9} in
    the replacement stand for the groups of the regex.
    """
    text = sections.single(header, "rewrite")
    if text is None:
        return None
    fields = text.split()
    if len(fields) == 3 and fields[2] in ("last", "break", "redirect", "permanent"):
        raise sections.error(
            header,
            "rewrite",
            f"nginx's rewrite flags such as {fields[2]!r} are not supported, "
            f"got {text!r} (give only REGEX REPLACEMENT)",
        )
    if len(fields) != 2:
        raise sections.error(
            header,
            "rewrite",
            f"expected a regular expression and a replacement separated by a "
            f"space, such as ^/old/(.*)$ /new/$1, got {text!r}",
        )
    pattern, replacement = fields
    try:
        regex = _compileRegex(pattern)
    except ValueError as e:
        raise sections.error(header, "rewrite", str(e)) from None
    if not replacement.startswith("/"):
        raise sections.error(
            header,
            "rewrite",
            f"the replacement must start with '/', got {replacement!r}",
        )
    for reference in re.finditer(r"\$(.?)", replacement):
        group = reference.group(1)
        if not (group.isascii() and group.isdigit() and group != "0"):
            raise sections.error(
                header,
                "rewrite",
                f"'$' must be followed by a group number from 1 to 9 in "
                f"{replacement!r} (nginx variables such as $uri are not "
                f"supported)",
            )
        if int(group) > regex.groups:
            raise sections.error(
                header,
                "rewrite",
                f"the replacement {replacement!r} uses ${group}, but "
                f"{pattern!r} has {regex.groups} group(s)",
            )
    return pattern, replacement


def _checkRoutes(
    source: str,
    routes: tuple[RouteConfig, ...],
    upstreams: Mapping[str, UpstreamConfig],
    headers: Mapping[str, str],
    needed: bool,
) -> None:
    """
    Check what no single route section can: that there is a route when
    C{needed} (when there are HTTP listeners), that each names an existing
    upstream, and that no two share a host and a path.

    Prefix paths, with C{^~} or without, count as the same: nginx refuses
    C{location /a} besides C{location ^~ /a} too.
    """
    if not routes and needed:
        raise ConfigError(
            source,
            None,
            None,
            "no [route NAME] section; at least one route is needed, such as "
            "[route default] with path = / and upstream = NAME",
        )
    paths: dict[tuple[str | None, str, str], RouteConfig] = {}
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
        kind = PREFIX if route.match == PREFIX_NO_REGEX else route.match
        identity = (route.host, kind, route.path)
        if identity in paths:
            other = paths[identity]
            written = _writtenPath(route.match, route.path)
            message = f"path {written!r}"
            if route.host is not None:
                message += f" for host {route.host!r}"
            message += f" is already used by [{headers[other.name]}]"
            if other.match != route.match:
                message += (
                    f" (as {_writtenPath(other.match, other.path)!r}: a prefix "
                    f"is given once, with or without ^~)"
                )
            raise ConfigError(source, header, "path", message)
        paths[identity] = route


def _parseTLS(sections: _Sections, header: str, directory: str) -> TLSConfig:
    """
    Build the L{TLSConfig} of the C{[tls]} section; C{directory} is where
    relative certificate and key files are.
    """
    return TLSConfig(
        certificates=_parseCertificates(sections, header, directory),
        min_version=_parseMinVersion(sections, header),
        ciphers=_parseCiphers(sections, header),
        hsts=_parseHSTS(sections, header),
    )


def _parseCertificates(
    sections: _Sections, header: str, directory: str
) -> tuple[CertificateConfig, ...]:
    """
    Return the certificates of C{certificates}, one a line:
    C{NAME CERTFILE KEYFILE}, with readable files and no name twice.
    """
    lines = sections.lines(header, "certificates")
    if lines is None:
        raise sections.error(header, "certificates", "missing required key")
    if not lines:
        raise sections.error(
            header,
            "certificates",
            "needs at least one certificate, such as "
            "www.example.com certs/www.pem certs/www.key",
        )
    certificates: list[CertificateConfig] = []
    seen: set[str] = set()
    for line in lines:
        fields = line.split()
        if len(fields) != 3:
            raise sections.error(
                header,
                "certificates",
                f"expected NAME CERTFILE KEYFILE separated by spaces, such as "
                f"www.example.com certs/www.pem certs/www.key, got {line!r}",
            )
        try:
            name = _hostName(fields[0], wildcard=True)
            certificate = _readableFile(fields[1], directory)
            key = _readableFile(fields[2], directory)
        except ValueError as e:
            raise sections.error(header, "certificates", f"{e}, in {line!r}") from None
        if name in seen:
            raise sections.error(
                header,
                "certificates",
                f"duplicate name {name!r} in {line!r} (each name has one "
                f"certificate)",
            )
        seen.add(name)
        certificates.append(CertificateConfig(name, certificate, key))
    return tuple(certificates)


_TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
_OLD_VERSIONS = ("sslv2", "sslv3", "tlsv1", "tlsv1.0", "tlsv1.1")


def _parseMinVersion(sections: _Sections, header: str) -> str:
    """
    Return C{min_version}: C{TLSv1.2} (the default) or C{TLSv1.3}, in any
    case; older versions are refused.
    """
    text = sections.single(header, "min_version")
    if text is None:
        return "TLSv1.2"
    for version in _TLS_VERSIONS:
        if text.lower() == version.lower():
            return version
    if text.lower() in _OLD_VERSIONS:
        raise sections.error(
            header,
            "min_version",
            f"{text!r} is not allowed: TLS 1.0 and 1.1 (and SSL) are insecure "
            f"and deprecated (RFC 8996); use TLSv1.2 or TLSv1.3",
        )
    raise sections.error(
        header, "min_version", f"expected TLSv1.2 or TLSv1.3, got {text!r}"
    )


def _parseCiphers(sections: _Sections, header: str) -> str | None:
    """
    Return C{ciphers}, an OpenSSL cipher string for TLS 1.2, checked by
    giving it to OpenSSL; L{None} if absent.
    """
    text = sections.single(header, "ciphers")
    if text is None:
        return None
    from OpenSSL import SSL

    try:
        SSL.Context(SSL.TLS_METHOD).set_cipher_list(text.encode("utf-8"))
    except SSL.Error as e:
        reasons = [
            problem[-1]
            for problem in (e.args[0] if e.args and isinstance(e.args[0], list) else [])
            if isinstance(problem, tuple) and problem
        ]
        reason = ", ".join(reasons) or str(e)
        message = f"OpenSSL refuses {text!r}: {reason}"
        if "TLS_" in text:
            message += (
                " (ciphers sets the TLS 1.2 ciphers; TLS 1.3 suites such as "
                "TLS_AES_128_GCM_SHA256 are not set here)"
            )
        raise sections.error(header, "ciphers", message) from None
    return text


_HSTS_MAX_AGE = re.compile(r"max-age=[0-9]+", re.IGNORECASE)
_HSTS_FLAGS = ("includeSubDomains", "preload")


def _parseHSTS(sections: _Sections, header: str) -> str | None:
    """
    Return C{hsts}, a C{Strict-Transport-Security} value: C{max-age=SECONDS}
    and then, separated by C{;}, C{includeSubDomains} and C{preload}, each
    at most once; L{None} if absent or C{off}.
    """
    text = sections.single(header, "hsts")
    if text is None or text.lower() == "off":
        return None
    first, *rest = [part.strip() for part in text.split(";")]
    if not _HSTS_MAX_AGE.fullmatch(first):
        raise sections.error(
            header,
            "hsts",
            f"must start with max-age= and a number of seconds, such as "
            f"max-age=31536000; includeSubDomains, got {text!r}",
        )
    seen: set[str] = set()
    for part in rest:
        known = [flag for flag in _HSTS_FLAGS if flag.lower() == part.lower()]
        if not known:
            raise sections.error(
                header,
                "hsts",
                f"unknown directive {part!r} in {text!r} (after max-age, "
                f"expected {' or '.join(_HSTS_FLAGS)}, separated by ';')",
            )
        if known[0] in seen:
            raise sections.error(
                header, "hsts", f"{known[0]} given twice in {text!r}"
            )
        seen.add(known[0])
    return text
