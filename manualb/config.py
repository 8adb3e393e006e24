"""
The configuration as data: a tree of frozen L{attrs} objects, L{Config}
holding L{UpstreamConfig} (with its L{ServerConfig}s, each holding a
L{ServerAddress}, and its L{HealthCheckConfig}), L{RouteConfig},
L{ListenerConfig}, L{StreamConfig}, L{TLSConfig} (with its
L{CertificateConfig}s) and L{GatekeeperConfig}.

These are what every other part of manualb is built from, whether they come
from a file (L{manualb.configfile.parseConfig}) or are made in code by an
embedder; this module imports nothing else of manualb but the way keys are
declared (L{manualb.configkeys}).

Each field that is a key of the file is declared once, with L{key}: its
default, the kind of value it takes (L{Key.kind}), the nginx directive it
follows and a line of documentation.  The file reader derives the keys a
section knows, their defaults, how their values are read and the messages
about them from these declarations (L{keys}).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from manualb.configkeys import KEY, ConfigError, Key, key, keys

__all__ = [
    "AcmeConfig",
    "LETS_ENCRYPT",
    "SCHEMES",
    "KEY",
    "Key",
    "key",
    "keys",
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
    "GzipConfig",
    "ListenerConfig",
    "CertificateConfig",
    "TLSConfig",
    "StreamConfig",
    "RateLimitConfig",
    "WAFRule",
    "WAFConfig",
    "GatekeeperConfig",
    "Config",
]

#: URL schemes a server address may use.
SCHEMES: tuple[str, ...] = ("http", "https")

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
    @ivar route: What the sticky cookie of C{balance = cookie} holds for
        this server, or L{None} for a hash of its address.
    """

    address: ServerAddress
    weight: int = key(
        1, kind="integer", minimum=1, nginx="weight", example="3",
        doc="its share of the requests relative to the other servers",
    )
    max_fails: int = key(
        1, kind="integer", minimum=0, nginx="max_fails", example="3",
        doc="failures within fail_timeout that make it unavailable",
    )
    fail_timeout: float = key(
        10.0, kind="duration", nginx="fail_timeout", example="30s",
        doc="the window failures are counted in, and how long it is then out",
    )
    backup: bool = key(
        False, kind="flag", nginx="backup",
        doc="serves only while no primary server is available",
    )
    down: bool = key(False, kind="flag", nginx="down", doc="marked down by hand")
    slow_start: float = key(
        0.0, kind="duration", minimum=0, nginx="slow_start", example="30s",
        doc="ramp from weight 0 to its weight when it comes back",
    )
    max_conns: int = key(
        0, kind="integer", minimum=0, nginx="max_conns", example="100",
        doc="requests in flight to it at most; 0 for no limit",
    )
    route: str | None = key(
        None, kind="text", nginx="route", example="s1",
        doc="the sticky cookie's value for it (HAProxy cookie), with balance = cookie",
    )

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

    path: str = key("/", example="/healthz", doc="the request path of the probe")
    interval: float = key(
        5.0, kind="duration", nginx="interval", example="2s",
        doc="time between the end of a probe and the next",
    )
    timeout: float = key(
        2.0, kind="duration", example="1s", doc="time a probe may take"
    )
    rise: int = key(
        2, kind="integer", minimum=1, nginx="passes", example="2",
        doc="passed probes in a row that bring a down server up",
    )
    fall: int = key(
        3, kind="integer", minimum=1, nginx="fails", example="3",
        doc="failed probes in a row that take an up server down",
    )
    expect: frozenset[int] = key(
        frozenset([200]), example="200", doc="status codes and classes that pass"
    )
    body: str | None = key(
        None, example="ok", doc="a regular expression the body must match"
    )
    host: str | None = key(
        None, example="backend.example", doc="the Host header of the probe"
    )
    type: str = key("http", example="tcp", doc="http (a request) or tcp (a connect)")


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
    servers: tuple[ServerConfig, ...] = key(
        converter=_toServerConfigs, nginx="server", doc="the servers, one a line"
    )
    balance: str = key(
        "round_robin", doc="the balancing method and its argument"
    )
    balance_argument: str | None = None
    connect_timeout: float = key(
        5.0, kind="duration", nginx="proxy_connect_timeout",
        doc="time allowed to connect to a server",
    )
    read_timeout: float = key(
        60.0, kind="duration", nginx="proxy_read_timeout",
        doc="time allowed between two reads from a server",
    )
    send_timeout: float = key(
        60.0, kind="duration", nginx="proxy_send_timeout",
        doc="time allowed between two writes to a server",
    )
    keepalive: int = key(
        32, kind="integer", minimum=0, nginx="keepalive",
        doc="idle connections cached per server",
    )
    keepalive_timeout: float = key(
        60.0, kind="duration", nginx="keepalive_timeout",
        doc="time a cached idle connection is kept",
    )
    keepalive_requests: int = key(
        1000, kind="integer", minimum=1, nginx="keepalive_requests",
        doc="requests sent over one backend connection",
    )
    passive_fail_on: frozenset[int] = key(
        frozenset(), nginx="proxy_next_upstream",
        doc="response status codes that count as a failure",
    )
    tries: int = key(
        0, kind="integer", minimum=0, nginx="proxy_next_upstream_tries",
        doc="servers one request may be tried on; 0 for all",
    )
    retry_timeout: float = key(
        0.0, kind="duration", minimum=0, nginx="proxy_next_upstream_timeout",
        doc="time after the first try in which another may start; 0 for no limit",
    )
    retry_body_limit: int = key(
        1024 * 1024, kind="size",
        doc="request body kept so that the request can be tried again",
    )
    health_check: HealthCheckConfig | None = key(
        None, nginx="health_check", doc="active probes: on, off or options"
    )
    tunnel_timeout: float = key(
        3600.0, kind="duration",
        doc="time an upgraded connection may carry nothing either way",
    )
    tls_verify: bool = key(
        True, kind="flag", nginx="proxy_ssl_verify",
        doc="verify the certificate of https:// servers",
    )
    tls_ca: str | None = key(
        None, nginx="proxy_ssl_trusted_certificate",
        doc="a PEM file of the authorities to trust",
    )
    tls_name: str | None = key(
        None, nginx="proxy_ssl_name", doc="the name sent by SNI and verified"
    )


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
    @ivar allow: The route's own C{allow} CIDRs, in place of the
        gatekeeper's; L{None} to keep those.
    @ivar deny: The route's own C{deny} CIDRs; L{None} to keep the
        gatekeeper's.
    @ivar waf: The route's WAF mode (C{block}, C{detect}, C{off}); L{None}
        to keep the gatekeeper's.
    @ivar waf_level: The route's WAF sensitivity; L{None} to keep the
        gatekeeper's.
    @ivar rate: The route's rate limit in place of the gatekeeper's (a
        C{rate} of 0 for none); L{None} to keep the gatekeeper's.
    @ivar client_max_body_size: The route's largest request body; L{None}
        to keep the gatekeeper's.
    @ivar set_header: C{(NAME, VALUE)} request headers to the backend, in
        place of the client's of that name (an empty VALUE removes it); the
        value may use C{$variables} (see C{manualb.headers}).
    @ivar hide_header: Lower-case names of backend response headers not
        passed to the client.
    @ivar pass_header: Lower-case names of backend response headers passed
        although the proxy replaces them by default (C{server}, C{date}).
    @ivar add_header: C{(NAME, VALUE, always)} response headers added for
        the client: on 2xx and 3xx responses, or on every one when
        C{always}.
    @ivar answer: C{(code, text)} of C{return}: the route answers itself,
        without a backend (C{text} is a URL for a redirect); or L{None}.
    @ivar redirect_https: Off: plain requests for this route are served
        where the listener would redirect them to https.
    @ivar error_page: C{(code, page)} pairs: the HTML the proxy answers
        with in place of its own page of that code.
    @ivar gzip: Whether and what to compress of the responses (see
        C{manualb.compression}); L{None} for no compression.
    @ivar connect_timeout: The route's in place of its upstream's, or
        L{None} (so are C{read_timeout}, C{send_timeout} and C{tries}; see
        L{manualb.routelimits}).
    @ivar hsts: The C{Strict-Transport-Security} of its TLS answers, or
        C{"off"}; L{None} for its certificate's or listener's.
    """

    name: str
    path: str = key(nginx="location", doc="the path: /prefix, ^~ /prefix, = /exact, ~ or ~* REGEX")
    upstream: str | None = key(None, nginx="proxy_pass", doc="the upstream that serves it")
    match: str = PREFIX
    host: str | None = key(None, nginx="server_name", doc="the host it serves")
    strip_prefix: bool = key(
        False, kind="flag", doc="remove the matched prefix before going on"
    )
    rewrite: tuple[str, str] | None = key(
        None, nginx="rewrite", doc="REGEX REPLACEMENT applied to the path"
    )
    allow: tuple[str, ...] | None = key(
        None, nginx="allow", doc="CIDRs allowed, in place of [gatekeeper]'s"
    )
    deny: tuple[str, ...] | None = key(
        None, nginx="deny", doc="CIDRs refused, in place of [gatekeeper]'s"
    )
    waf: str | None = key(None, doc="block, detect or off, in place of [gatekeeper]'s")
    waf_level: int | None = key(None, doc="the WAF's sensitivity, 1 to 4, for this route")
    rate: RateLimitConfig | None = key(
        None, nginx="limit_req", doc="the request rate limit of this route, or off"
    )
    client_max_body_size: int | None = key(
        None, nginx="client_max_body_size", doc="the largest request body of this route"
    )
    set_header: tuple[tuple[str, str], ...] = key(
        (), nginx="proxy_set_header", doc="NAME VALUE lines sent to the backend"
    )
    hide_header: tuple[str, ...] = key(
        (), nginx="proxy_hide_header", doc="backend response headers not passed on"
    )
    pass_header: tuple[str, ...] = key(
        (), nginx="proxy_pass_header", doc="Server or Date of the backend, passed on"
    )
    add_header: tuple[tuple[str, str, bool], ...] = key(
        (), nginx="add_header", doc="NAME VALUE [always] lines added to responses"
    )
    answer: tuple[int, str] | None = None
    redirect_https: bool = key(
        True, kind="flag", doc="off: not redirected to https by its listener"
    )
    error_page: tuple[tuple[int, bytes], ...] = key(
        (), nginx="error_page", doc="CODE... FILE lines: the proxy's own pages"
    )
    gzip: GzipConfig | None = key(None, nginx="gzip", doc="on: compress responses")
    connect_timeout: float | None = key(
        None, nginx="proxy_connect_timeout", doc="the upstream's, for this route"
    )
    read_timeout: float | None = key(
        None, nginx="proxy_read_timeout", doc="the upstream's, for this route"
    )
    send_timeout: float | None = key(
        None, nginx="proxy_send_timeout", doc="the upstream's, for this route"
    )
    tries: int | None = key(
        None, nginx="proxy_next_upstream_tries", doc="the upstream's, for this route"
    )
    hsts: str | None = key(
        None, doc="the Strict-Transport-Security of its TLS answers, or off"
    )


@attrs.frozen
class GzipConfig:
    """
    What C{gzip = on} compresses: the responses of a type in C{types} and
    of at least C{min_length} bytes when their length is known.
    """

    types: tuple[str, ...] = key(
        ("text/html",), nginx="gzip_types", doc="media types compressed besides text/html"
    )
    min_length: int = key(
        20, kind="size", nginx="gzip_min_length", doc="the smallest response compressed"
    )


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
    @ivar error_page: C{(code, page)} pairs: the HTML of the proxy's own
        answers of that code on this listener.
    @ivar hsts: The C{Strict-Transport-Security} of its TLS answers in
        place of C{[tls]}'s, or C{"off"}; L{None} for C{[tls]}'s.
    @ivar front_end: What serves its HTTP/1.1 connections, C{"lean"} or
        C{"twisted"}; L{None} for C{[manualb]}'s choice.
    """

    name: str
    listen: tuple[str, ...] = key(
        converter=tuple, nginx="listen", doc="endpoint strings, one a line"
    )
    routes: tuple[str, ...] | None = key(None, doc="the routes it serves; all if absent")
    redirect_https: int | None = key(
        None, doc="off, on (port 443) or the https port to redirect to"
    )
    error_page: tuple[tuple[int, bytes], ...] = key(
        (), nginx="error_page", doc="CODE... FILE lines: the proxy's own pages"
    )
    hsts: str | None = key(
        None, doc="the Strict-Transport-Security of its TLS answers, or off"
    )
    front_end: str | None = key(
        None, kind="front_end", doc="lean or twisted: what serves HTTP/1.1; [manualb]'s if absent"
    )


@attrs.frozen
class CertificateConfig:
    """
    One certificate of the C{[tls]} section.

    @ivar name: The server name it serves: exact or C{*.wildcard}; lower case.
    @ivar certificate: Path of the PEM certificate (followed by its chain).
    @ivar key: Path of the PEM private key.
    @ivar hsts: The C{Strict-Transport-Security} of the answers for its
        names, or C{"off"}; L{None} for the listener's.
    """

    name: str
    certificate: str
    key: str
    hsts: str | None = None


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
    @ivar ssl_session_cache: Keep sessions to resume them by id (see
        L{manualb.tlscontexts}).
    @ivar ssl_session_timeout: Seconds a session (and a ticket) resumes.
    @ivar ssl_session_tickets: Resume by session tickets.
    @ivar ssl_session_ticket_key_rotation: Seconds between two ticket keys.
    """

    certificates: tuple[CertificateConfig, ...] = key(
        converter=tuple, nginx="ssl_certificate", doc="NAME CERTFILE KEYFILE, one a line"
    )
    min_version: str = key("TLSv1.2", nginx="ssl_protocols", doc="TLSv1.2 or TLSv1.3")
    ciphers: str | None = key(None, nginx="ssl_ciphers", doc="OpenSSL cipher string")
    hsts: str | None = key(None, doc="the Strict-Transport-Security value, or off")
    ssl_session_cache: bool = key(
        True, nginx="ssl_session_cache", doc="on or off: resume sessions by id"
    )
    ssl_session_timeout: float = key(
        300.0, kind="duration", nginx="ssl_session_timeout", doc="how long a session resumes"
    )
    ssl_session_tickets: bool = key(
        True, kind="flag", nginx="ssl_session_tickets", doc="on or off: resume by tickets"
    )
    ssl_session_ticket_key_rotation: float = key(
        3600.0, kind="duration", doc="how often the ticket key changes"
    )
    #: The names of C{NAME acme} lines, whose certificates ACME obtains.
    acme: tuple[str, ...] = attrs.field(converter=tuple, default=())


#: Let's Encrypt's production directory, the default of C{[acme] directory}.
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


@attrs.frozen
class AcmeConfig:
    """
    Automatic HTTPS, the C{[acme]} section: certificates obtained and
    renewed from an ACME (RFC 8555) server (see C{manualb.autotls}).

    @ivar hosts: The names to obtain certificates for: the C{hosts} key and
        the C{NAME acme} lines of C{[tls] certificates}.
    @ivar challenges: The challenge types the listeners can answer, in the
        order tried: C{tls-alpn-01} (an C{sni:} line on C{tls_port}),
        C{http-01} (a plain line on C{http_port}).
    """

    storage: str = key(doc="a directory for the account key, certificates and keys")
    directory: str = key(LETS_ENCRYPT, kind="text", doc="the ACME server's directory URL")
    email: str | None = key(None, kind="text", doc="the account's contact address")
    accept_terms: bool = key(
        False, doc="yes: agree to the ACME server's terms of service"
    )
    renew_before: float = key(
        30 * 86400.0, kind="duration", doc="renew this long before a certificate expires"
    )
    hosts: tuple[str, ...] = key((), converter=tuple, doc="more names, one a line")
    http_port: int = key(
        80, kind="integer", minimum=1, doc="the port the server checks HTTP-01 on"
    )
    tls_port: int = key(
        443, kind="integer", minimum=1, doc="the port the server checks TLS-ALPN-01 on"
    )
    directory_ca: str | None = key(
        None, doc="a CA file trusted for the directory's HTTPS (a private ACME server)"
    )
    challenges: tuple[str, ...] = attrs.field(converter=tuple, default=())


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
    listen: tuple[str, ...] = key(
        converter=tuple, nginx="listen", doc="endpoint strings, one a line"
    )
    upstream: str = key(nginx="proxy_pass", doc="the upstream that serves it")
    proxy_protocol: str | None = key(
        None, nginx="proxy_protocol", doc="off, v1 or v2"
    )
    idle_timeout: float = key(
        600.0, kind="duration", nginx="proxy_timeout",
        doc="time a connection may carry nothing either way",
    )


@attrs.frozen
class RateLimitConfig:
    """
    A request rate limit, as nginx's C{limit_req}: a token bucket for each
    value of C{key}, refilled at C{rate} a second, holding C{burst} more.

    @ivar rate: Requests a second; C{0} for no limit (C{rate = off}, to
        loosen a global limit on one route).
    @ivar burst: Requests beyond the rate that are let through (at once
        with C{nodelay}, else delayed to the rate); more get 429.
    @ivar nodelay: Whether the burst passes at once rather than delayed.
    @ivar key: What a bucket is kept for, in the C{$variable} syntax of
        C{hash} (C{$remote_addr}, C{$route}, C{$http_x_api_key}...).
    """

    rate: float
    burst: int = 0
    nodelay: bool = False
    key: str = "$remote_addr"


@attrs.frozen
class WAFRule:
    """
    A rule of the web application firewall written in the configuration
    (C{waf_rule = ...}).

    @ivar name: What the rule is called in logs, records and counters.
    @ivar field: What it looks at: C{path}, C{query}, C{method},
        C{header:NAME}, C{cookie:NAME}, C{body}, C{remote_addr}...
    @ivar pattern: A regular expression the field must match, or L{None}
        when C{values} is given instead.
    @ivar values: Values the field must equal one of (any case), when
        C{pattern} is L{None}.
    @ivar action: C{block} (403), C{log} (log and count only) or C{allow}
        (the request is excepted from the rules named in C{excepts}).
    @ivar excepts: For C{allow}: the names of the rules (built-in or
        custom) it excepts the request from; empty for every rule.
    """

    name: str
    field: str
    pattern: str | None = None
    values: tuple[str, ...] = ()
    action: str = "block"
    excepts: tuple[str, ...] = ()


@attrs.frozen
class WAFConfig:
    """
    The web application firewall of the gatekeeper.

    @ivar mode: C{block} (attacks get 403), C{detect} (logged and counted,
        not blocked) or C{off}.
    @ivar level: The sensitivity, 1 (fewest false alarms) to 4 (most
        attacks caught), as Cloud Armor's preconfigured rules.
    @ivar body_limit: How much of a form or JSON request body is inspected.
    @ivar rules: The custom rules, in order.
    """

    mode: str = "off"
    level: int = 2
    body_limit: int = 64 * 1024
    rules: tuple[WAFRule, ...] = ()


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
    @ivar allow: CIDRs (IPv4 and IPv6) of the clients allowed; when any is
        given, a client in none of them gets 403.
    @ivar deny: CIDRs of the clients refused with 403.  Between an C{allow}
        and a C{deny} that both match, the narrower network decides.
    @ivar trusted_proxies: CIDRs of the proxies in front of manualb whose
        C{X-Forwarded-For} and C{Forwarded} headers are believed (nginx's
        C{set_real_ip_from} with C{real_ip_recursive on}).
    @ivar waf: The web application firewall.
    @ivar rate: The request rate limit, or L{None}.
    @ivar limit_conn: The most connections one client address may hold open
        at once; C{0} for no limit.
    """

    client_header_timeout: float = key(
        60.0, kind="duration", nginx="client_header_timeout",
        doc="time in which the whole request head must arrive",
    )
    client_body_timeout: float = key(
        60.0, kind="duration", nginx="client_body_timeout",
        doc="time a client may stay silent while sending a body",
    )
    keepalive_timeout: float = key(
        75.0, kind="duration", nginx="keepalive_timeout",
        doc="time an idle client connection stays open",
    )
    send_timeout: float = key(
        60.0, kind="duration", nginx="send_timeout",
        doc="time a client may go without taking any of a response",
    )
    client_max_body_size: int = key(
        1024 * 1024, kind="size", nginx="client_max_body_size",
        doc="the largest request body; 0 for no limit",
    )
    max_request_line: int = key(
        8 * 1024, kind="size", minimum=1, nginx="large_client_header_buffers",
        doc="the longest request line",
    )
    max_header_size: int = key(
        32 * 1024, kind="size", minimum=1, nginx="large_client_header_buffers",
        doc="the largest header block",
    )
    max_headers: int = key(
        100, kind="integer", minimum=1, doc="the most header fields in a request"
    )
    max_connections: int = key(
        1024, kind="integer", minimum=1, nginx="worker_connections",
        doc="the most client connections open at once",
    )
    allow: tuple[str, ...] = key((), nginx="allow", doc="CIDRs of the clients allowed")
    deny: tuple[str, ...] = key((), nginx="deny", doc="CIDRs of the clients refused")
    trusted_proxies: tuple[str, ...] = key(
        (), nginx="set_real_ip_from",
        doc="CIDRs of the proxies whose X-Forwarded-For and Forwarded are believed",
    )
    waf: WAFConfig = key(WAFConfig(), doc="the web application firewall: block, detect or off")
    rate: RateLimitConfig | None = key(
        None, nginx="limit_req", doc="the request rate limit: 10r/s burst=20 nodelay"
    )
    limit_conn: int = key(
        0, kind="integer", minimum=0, nginx="limit_conn",
        doc="connections one client address may hold open; 0 for no limit",
    )


@attrs.frozen
class Config:
    """
    The whole, validated configuration.

    @ivar source: Where it was read from (a file name or C{"<string>"}).
    @ivar listen: The endpoint strings of C{[manualb] listen} (possibly
        none: when C{[listener]} or C{[stream]} sections listen instead, or
        when an embedder serves L{manualb.service.LoadBalancer.resource} in
        a site of its own).
    @ivar access_log: C{"-"} for standard output, a file path, or L{None}
        when access logging is off.
    @ivar log_format: The access log's line: C{combined}, C{json}, or a
        format string of nginx variables (see C{manualb.accesslog}).
    @ivar upstreams: Upstreams by name, in file order.
    @ivar routes: Routes in file order; every one names an upstream in
        C{upstreams}.
    @ivar client_timeout: When given in C{[manualb]}, the default of
        C{[gatekeeper]}'s C{client_header_timeout}, C{client_body_timeout}
        and C{keepalive_timeout} (which C{gatekeeper} then holds).
    @ivar shutdown_timeout: How long a graceful stop waits for the requests
        in flight, the WebSocket and stream tunnels, before it closes what
        is left.
    @ivar gatekeeper: The client limits of C{[gatekeeper]}.
    @ivar admin: The endpoint string of the admin listener (its JSON API,
        see C{manualb.admin}), or L{None} for none.
    @ivar admin_token_file: The absolute path of the file holding the
        bearer token every admin request must carry, or L{None} for none
        (allowed on a loopback bind only).
    @ivar explain_records: How many of the last requests the admin API
        keeps the decision records of, for C{/api/explain}; 0 for none.
    @ivar workers: How many worker processes serve the listeners (C{auto}:
        one a CPU); 1 is a single process that serves them itself, more a
        supervisor that binds them once and passes them to its workers (see
        C{manualb.supervisor}).
    @ivar state: Where the state shared with other instances is
        (C{redis://HOST:PORT/DB}, see C{manualb.state}), or L{None} to keep
        it in the process.
    @ivar instance: The name of this instance in the shared state, or
        L{None} for C{HOSTNAME:PID}.
    @ivar front_end: What serves the listeners' HTTP/1.1 connections
        (C{"lean"} or C{"twisted"}) where a listener does not choose; L{None}
        for L{manualb.front.DEFAULT_FRONT_END}.
    @ivar listeners: The HTTP listeners: C{"default"} from C{[manualb]
        listen} (with C{[manualb] redirect_https}) first if it has any
        endpoint, then the C{[listener NAME]} sections.
    @ivar tls: The C{[tls]} section, or L{None}.
    @ivar streams: The C{[stream NAME]} sections.
    @ivar acme: The C{[acme]} section, or L{None}.
    @ivar server_tokens: Whether the C{Server} header names the version.
    @ivar error_page: C{(code, page)} pairs of C{[manualb] error_page}: the
        HTML of the proxy's own answers of that code, on every listener.
    @ivar access_log_buffer: The C{buffer=SIZE} of C{access_log}: how many
        bytes of lines the log collects before it writes them; 0 writes each
        line as it comes.
    @ivar access_log_flush: The C{flush=TIME} of C{access_log}: how long,
        in seconds, a line may wait in the buffer; L{None} for as long as
        the buffer has room.
    """

    source: str
    listen: tuple[str, ...] = key(
        (), converter=tuple, nginx="listen", doc="endpoint strings, one a line"
    )
    access_log: str | None = key(
        "-", nginx="access_log",
        doc="- for standard output, a file, or off; then buffer=SIZE flush=TIME",
    )
    log_format: str = key(
        "combined", nginx="log_format",
        doc="combined, json, or a line of $variables",
    )
    upstreams: Mapping[str, UpstreamConfig] = attrs.field(factory=dict)
    routes: tuple[RouteConfig, ...] = attrs.field(converter=tuple, default=())
    client_timeout: float = key(
        60.0, kind="duration",
        doc="the default of [gatekeeper]'s client_header_timeout, "
        "client_body_timeout and keepalive_timeout",
    )
    shutdown_timeout: float = key(
        30.0, kind="duration", nginx="worker_shutdown_timeout",
        doc="how long a stop waits for the requests in flight",
    )
    admin: str | None = key(
        None, example="tcp:9000:interface=127.0.0.1",
        doc="the endpoint of the admin API; none if absent",
    )
    admin_token_file: str | None = key(
        None, doc="a file holding the bearer token the admin API requires"
    )
    explain_records: int = key(
        10000, kind="integer", minimum=0,
        doc="how many recent requests the admin API can explain",
    )
    workers: int = key(
        1, kind="workers", nginx="worker_processes",
        doc="how many processes serve the listeners: N, or auto (one a CPU)",
    )
    state: str | None = key(
        None, example="redis://127.0.0.1:6379/0",
        doc="where the state shared with other instances is: redis://HOST:PORT/DB, "
        "or memory (the default: in the process)",
    )
    instance: str | None = key(
        None, doc="the name of this instance in the shared state; HOSTNAME:PID if absent"
    )
    front_end: str | None = key(
        None, kind="front_end", example="lean",
        doc="what serves HTTP/1.1: lean (httptools, the default) or twisted (twisted.web)",
    )
    listeners: tuple[ListenerConfig, ...] = attrs.field(converter=tuple, default=())
    tls: TLSConfig | None = None
    streams: tuple[StreamConfig, ...] = attrs.field(converter=tuple, default=())
    gatekeeper: GatekeeperConfig = GatekeeperConfig()
    acme: AcmeConfig | None = None
    server_tokens: bool = key(
        True, kind="flag", nginx="server_tokens",
        doc="off: the Server header says manualb without its version",
    )
    error_page: tuple[tuple[int, bytes], ...] = key(
        (), nginx="error_page", doc="CODE... FILE lines: the proxy's own pages"
    )
    access_log_buffer: int = 0
    access_log_flush: float | None = None
