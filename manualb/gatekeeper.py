"""
Stage 3, the gatekeeper: block or allow a request before any backend is
touched, as Google's Cloud Armor does in front of its load balancer.

In order, for the route the request is for (a route may replace the rules
of C{[gatekeeper]} with its own):

  1. IP rules: C{allow} and C{deny} lists of networks (L{IPRules}); the
     narrower network that holds the client decides, and with an C{allow}
     list a client in none of them is refused;
  2. the request rate (an L{IRateLimiter}): over its bucket's burst a
     request is refused with 429 and C{Retry-After}, within the burst but
     over the rate it may be delayed (L{Passage.delay});
  3. the web application firewall (an L{IRequestInspector}): the request
     line and headers now, the first bytes of a body before any of it goes
     to a backend (L{Passage.bodyCheck}).

A refused request gets 403 (or 429) with a request id, in an
C{X-Request-Id} header and in the page, and one log line with the same id,
the client, the request line and the rule that fired.  Every decision is
recorded in the passage (L{GatekeeperRecord}).

The client's address is the socket peer's, unless the peer is one of the
C{trusted_proxies}: then it is read from the C{X-Forwarded-For} or
C{Forwarded} header the proxies wrote (L{TrustedProxies}), once, when the
front end builds the request's view.

This module also reads the gatekeeper's keys of the configuration file,
in C{[gatekeeper]} (L{parseGatekeeperKeys}) and in C{[route NAME]}
(L{parseRouteKeys}).
"""

from __future__ import annotations

import ipaddress
import math
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

import attrs
from twisted.logger import Logger
from zope.interface import implementer

from manualb.config import (
    Config,
    GatekeeperConfig,
    RateLimitConfig,
    RouteConfig,
    WAFConfig,
)
from manualb.interfaces import IRateLimiter, IRateLimitStore, IRequestInspector, IStage
from manualb.ratelimit import MemoryStore, RateLimiter, parseRate
from manualb.records import Finding, GatekeeperRecord
from manualb.stages import newRequestId
from manualb.syntax import Section, parseNetworks, parseSize
from manualb.urlmap import URLMap
from manualb.variables import parseKey
from manualb.view import Answer, Passage, RequestView

if TYPE_CHECKING:
    from manualb.waf import WAF

# The WAF (manualb.waf, its decoder and libinjection) is imported where a
# configuration asks for it: a balancer without one never loads it.

__all__ = [
    "Gatekeeper",
    "frontEndBodyLimit",
    "gatekeeperEngines",
    "IPRules",
    "TrustedProxies",
    "parseNetworks",
    "parseGatekeeperKeys",
    "parseRouteKeys",
    "GATEKEEPER_KEYS",
    "ROUTE_KEYS",
]

log = Logger()


# Networks.


def _address(text: str) -> tuple[int, int] | None:
    """
    The address C{text} as its IP version and number, an IPv4-mapped IPv6
    address as its IPv4 one (as L{manualb.view.clientHost} gives it);
    L{None} when it is not an address.
    """
    try:
        if ":" in text:
            number = int.from_bytes(inet_pton(AF_INET6, text), "big")
            if number >> 32 == 0xFFFF:
                return 4, number & 0xFFFFFFFF
            return 6, number
        return 4, int.from_bytes(inet_pton(AF_INET, text), "big")
    except (OSError, ValueError):
        return None


def _addressText(address: tuple[int, int]) -> str:
    """
    An address of L{_address} as text, IPv6 compressed.
    """
    version, number = address
    if version == 4:
        return inet_ntop(AF_INET, number.to_bytes(4, "big"))
    return inet_ntop(AF_INET6, number.to_bytes(16, "big"))


#: Decisions kept per table for the addresses seen last: most requests come
#: from clients seen before.
_KEPT = 4096


class _NetworkTable:
    """
    Networks of both IP versions, each with a value, arranged to find the
    narrowest network that holds an address: one dictionary look-up per
    distinct prefix length, longest first.
    """

    def __init__(self, networks: Iterable[tuple[str, object]]) -> None:
        self._tables: dict[int, dict[int, dict[int, tuple[str, object]]]] = {4: {}, 6: {}}
        for text, value in networks:
            network = ipaddress.ip_network(text)
            bits = network.max_prefixlen - network.prefixlen
            byLength = self._tables[network.version].setdefault(network.prefixlen, {})
            key = int(network.network_address) >> bits
            # Of the same network given twice, the first one decides.
            byLength.setdefault(key, (network.with_prefixlen, value))
        self._lengths = {
            version: sorted(table, reverse=True) for version, table in self._tables.items()
        }

        self._found: dict[str, tuple[str, object] | None] = {}

    def find(self, client: str) -> tuple[str, object] | None:
        """
        The narrowest network holding the address C{client} and its value,
        or L{None} (also when C{client} is not an address).
        """
        try:
            return self._found[client]
        except KeyError:
            pass
        address = _address(client)
        found = None if address is None else self._find(*address)
        if len(self._found) >= _KEPT:
            self._found.clear()
        self._found[client] = found
        return found

    def _find(self, version: int, number: int) -> tuple[str, object] | None:
        tables = self._tables[version]
        width = 32 if version == 4 else 128
        for length in self._lengths[version]:
            found = tables[length].get(number >> (width - length))
            if found is not None:
                return found
        return None


class IPRules:
    """
    C{allow} and C{deny} lists of networks: the narrowest network that holds
    the client decides (a network in both lists denies); a client in none
    is refused when there is an C{allow} list, else let through.
    """

    def __init__(self, allow: Sequence[str], deny: Sequence[str]) -> None:
        """
        @param allow: CIDRs (a bare address is a network of one).
        @param deny: CIDRs.
        """
        self.allowList = tuple(allow)
        self.denyList = tuple(deny)
        self._table = _NetworkTable(
            [(network, False) for network in deny] + [(network, True) for network in allow]
        )

    def check(self, client: str) -> tuple[bool, str | None]:
        """
        Whether C{client} (an address as text) may pass, and the network
        that decided (L{None} when none holds it).
        """
        found = self._table.find(client)
        if found is None:
            return not self.allowList, None
        network, allowed = found
        return bool(allowed), network


# The client's address behind trusted proxies.

#: Hops read from the right at most: no real chain of proxies is longer.
_MAX_HOPS = 64


def _forwardedNode(text: str) -> str | None:
    """
    The address of a node of C{X-Forwarded-For} or of C{Forwarded}'s
    C{for=} (unquoted): C{192.0.2.1}, C{192.0.2.1:8080}, C{2001:db8::1},
    C{[2001:db8::1]} or C{[2001:db8::1]:8080}; L{None} for anything else
    (C{unknown}, an obfuscated C{_identifier}, garbage).
    """
    text = text.strip()
    if text[:1] == "[":
        end = text.find("]")
        if end == -1 or (end + 1 < len(text) and text[end + 1] != ":"):
            return None
        text = text[1:end]
        if "." in text and ":" not in text:
            return None
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    address = _address(text)
    if address is None:
        return None
    return _addressText(address)


def _splitQuoted(text: str, separator: str) -> list[str]:
    """
    C{text} split on C{separator}, except inside quoted strings.
    """
    parts = []
    current: list[str] = []
    quoted = escaped = False
    for character in text:
        if escaped:
            escaped = False
        elif quoted and character == "\\":
            escaped = True
        elif character == '"':
            quoted = not quoted
        elif character == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(character)
    parts.append("".join(current))
    return parts


def _forwardedFor(element: str) -> str | None:
    """
    The address of the C{for=} parameter of one element of C{Forwarded}
    (RFC 7239), or L{None} when it has none that is an address.
    """
    for pair in _splitQuoted(element, ";"):
        name, equals, value = pair.partition("=")
        if equals and name.strip().lower() == "for":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].replace("\\", "")
            return _forwardedNode(value)
    return None


class TrustedProxies:
    """
    The proxies in front of manualb whose C{X-Forwarded-For} and
    C{Forwarded} headers are believed, as nginx's C{set_real_ip_from} with
    C{real_ip_recursive on}.
    """

    def __init__(self, networks: Sequence[str]) -> None:
        self.networks = tuple(networks)
        self._table = _NetworkTable((network, True) for network in networks)

    def trusts(self, address: str) -> bool:
        """
        Whether C{address} is one of the trusted proxies.
        """
        return self._table.find(address) is not None

    def clientAddress(self, peer: str, headers: Sequence[tuple[bytes, bytes]]) -> str:
        """
        The client's address of a request that C{peer} sent with
        C{headers}: C{peer} itself unless it is trusted; else the addresses
        of C{X-Forwarded-For} (or, when a request has none, of the C{for=}
        of C{Forwarded}) are read right to left, every trusted one skipped,
        and the first that is not trusted is the client.  When every one is
        trusted, the leftmost is the client; reading stops at a value that
        is not an address (C{unknown}, an obfuscated identifier, garbage),
        whose right neighbour is then the client: a trusted proxy wrote
        it, and nothing further left can be believed.
        """
        if not self.trusts(peer):
            return peer
        forwardedFor = []
        forwarded = []
        for name, value in headers:
            lower = name.lower()
            if lower == b"x-forwarded-for":
                forwardedFor.append(value)
            elif lower == b"forwarded":
                forwarded.append(value)
        if forwardedFor:
            text = b",".join(forwardedFor).decode("latin-1")
            nodes = [_forwardedNode(node) for node in text.split(",")[-_MAX_HOPS:]]
        elif forwarded:
            text = b",".join(forwarded).decode("latin-1")
            nodes = [
                _forwardedFor(element) for element in _splitQuoted(text, ",")[-_MAX_HOPS:]
            ]
        else:
            return peer
        client = peer
        for node in reversed(nodes):
            if node is None:
                break
            client = node
            if not self.trusts(node):
                break
        return client


# The stage.

_BODILESS = frozenset([b"GET", b"HEAD", b"DELETE", b"OPTIONS"])


def _hasBody(view: RequestView) -> bool:
    """
    Whether a request may have a body: one that declares a length other
    than 0, a chunked one, or one of a method that has a body, without
    C{Content-Length} (over HTTP/2, a stream's body need not declare one).
    """
    length = None
    for name, value in view.headers:
        # By length first: most lines are neither.
        size = len(name)
        if size == 14:
            if name.lower() == b"content-length":
                length = value.strip()
        elif size == 17 and name.lower() == b"transfer-encoding":
            return True
    if length is not None:
        return length != b"0"
    return view.method not in _BODILESS


def _printable(data: bytes | str, limit: int = 200) -> str:
    """
    C{data} for a log line: printable ASCII, at most C{limit} characters.
    """
    if isinstance(data, bytes):
        data = data.decode("ascii", "backslashreplace")
    text = "".join(c if " " <= c <= "~" else "\\x%02x" % (ord(c) % 256,) for c in data)
    if len(text) > limit:
        text = text[:limit] + "..."
    return text


@attrs.frozen
class _Policy:
    """
    What the gatekeeper does for the requests of one route (or of no
    route), worked out once.

    @ivar route: The route's name, as the rate limiter knows it; L{None}
        for the requests of no route.
    @ivar ipRules: The IP rules, or L{None} when there are none.
    @ivar limiter: The rate limiter that counts the route's requests, or
        L{None}.
    @ivar inspector: The WAF, or L{None} when it is off.
    @ivar blocking: Whether the WAF blocks (else it only detects).
    @ivar bodyLimit: The route's largest request body, or L{None}.
    """

    route: str | None
    ipRules: IPRules | None = None
    limiter: IRateLimiter | None = None
    inspector: IRequestInspector | None = None
    blocking: bool = False
    bodyLimit: int | None = None

    #: Whether the policy does anything: worked out once, as it is read for
    #: every request.
    active: bool = attrs.field(init=False)

    @active.default
    def _activeDefault(self) -> bool:
        return (
            self.ipRules is not None
            or self.limiter is not None
            or self.inspector is not None
            or self.bodyLimit is not None
        )


_FORBIDDEN = b"Forbidden"
_TOO_MANY = b"Too Many Requests"


@implementer(IStage)
class Gatekeeper:
    """
    The gatekeeper stage: IP rules, the rate limit and the WAF, for the
    route of each request (see the module docstring).

    It goes before the URL map in the chain (so that a client it refuses
    gets 403 whatever path it asks for); when some route has rules of its
    own, it asks the URL map for the request's route itself, and leaves its
    decision in the passage for the map.

    @ivar config: The C{[gatekeeper]} section.
    """

    def __init__(
        self,
        config: GatekeeperConfig = GatekeeperConfig(),
        urlMap: URLMap | None = None,
        waf: Callable[[WAFConfig], IRequestInspector | None] | None = None,
        limiter: Callable[[RateLimitConfig, str | None], IRateLimiter | None]
        | None = None,
        newId: Callable[[], bytes] | None = None,
    ) -> None:
        """
        @param urlMap: The routes of the chain (whose C{config}s say what
            each route overrides), or L{None} for a chain without routes
            (one that redirects to https).
        @param waf: Makes the WAF of a configuration (the gatekeeper's, and
            each route's that differs), or L{None} for none.  Called once
            per distinct configuration, when this is made.
        @param limiter: Makes the rate limiter of a rate: of the
            gatekeeper's (with the route L{None}), which counts the
            requests of every route without a rate of its own, or of a
            route's own (with its name).  Called once for each, when this is
            made; L{None} for no limit.
        @param newId: Makes a request id for a chain that gave the request
            none; L{newRequestId} by default.
        """
        self.config = config
        self._urlMap = urlMap
        limiters: dict[str | None, IRateLimiter | None] = {}

        def limiterFor(rate: RateLimitConfig | None, route: str | None) -> IRateLimiter | None:
            if limiter is None or rate is None or rate.rate <= 0:
                return None
            if route not in limiters:
                limiters[route] = limiter(rate, route)
            return limiters[route]

        self._limiterFor = limiterFor
        self._newId = newId or newRequestId
        inspectors: dict[WAFConfig, IRequestInspector | None] = {}

        def inspectorFor(wafConfig: WAFConfig) -> IRequestInspector | None:
            if waf is None or wafConfig.mode == "off":
                return None
            if wafConfig not in inspectors:
                inspectors[wafConfig] = waf(wafConfig)
            return inspectors[wafConfig]

        routes = () if urlMap is None else [route.config for route in urlMap.routes]
        # When a route takes larger bodies than the gatekeeper, the front end
        # reads up to the largest (frontEndBodyLimit), and every other
        # request is held to the gatekeeper's limit here.
        self._raised = frontEndBodyLimit(config, routes) != config.client_max_body_size
        self._global = self._policy(None, config, inspectorFor)
        # The routes whose requests are treated otherwise, or need their
        # route's name (for the rate limiter).
        self._byRoute: dict[str, _Policy] = {}
        for route in routes:
            overrides = (
                route.allow,
                route.deny,
                route.waf,
                route.waf_level,
                route.rate,
                route.client_max_body_size,
            )
            policy = self._policy(route, config, inspectorFor)
            if policy.limiter is not None or any(value is not None for value in overrides):
                self._byRoute[route.name] = policy
        self._routed = bool(self._byRoute)
        self.active = self._global.active or self._routed

    def _policy(
        self,
        route: RouteConfig | None,
        config: GatekeeperConfig,
        inspectorFor: Callable[[WAFConfig], IRequestInspector | None],
    ) -> _Policy:
        allow, deny, rate, wafConfig = config.allow, config.deny, config.rate, config.waf
        bodyLimit = config.client_max_body_size if self._raised else None
        name = None
        ownLists = ownRate = False
        if route is not None:
            name = route.name
            ownLists = route.allow is not None or route.deny is not None
            if route.allow is not None:
                allow = route.allow
            if route.deny is not None:
                deny = route.deny
            if route.rate is not None:
                rate = route.rate
                ownRate = True
            if route.waf is not None:
                wafConfig = attrs.evolve(wafConfig, mode=route.waf)
            if route.waf_level is not None:
                wafConfig = attrs.evolve(wafConfig, level=route.waf_level)
            if route.client_max_body_size is not None:
                bodyLimit = route.client_max_body_size
        inspector = inspectorFor(wafConfig)
        ipRules = None
        if route is not None and not ownLists:
            ipRules = self._global.ipRules
        elif allow or deny:
            ipRules = IPRules(allow, deny)
        return _Policy(
            route=name,
            ipRules=ipRules,
            limiter=self._limiterFor(rate, name if ownRate else None),
            inspector=inspector,
            blocking=wafConfig.mode == "block",
            bodyLimit=bodyLimit,
        )

    def handle(self, passage: Passage) -> Answer | None:
        """
        Decide on the request of C{passage} (see L{IStage.handle}).
        """
        if not self.active:
            return None
        policy = self._global
        if self._routed:
            decision = passage.route
            if decision is None and self._urlMap is not None:
                view = passage.view
                decision = passage.route = self._urlMap.decide(view.host, view.path)
            if decision is not None:
                policy = self._byRoute.get(decision.route.name, policy)
        if not policy.active:
            return None
        view = passage.view
        decisions = passage.decisions
        ipRules = policy.ipRules
        if ipRules is not None:
            allowed, network = ipRules.check(view.clientAddress)
            if not allowed:
                if network is None:
                    record = GatekeeperRecord("allow", "block", "in no allowed network", 403)
                else:
                    record = GatekeeperRecord("deny", "block", network, 403)
                return self._refuse(passage, 403, _FORBIDDEN, record)
            if network is not None:
                decisions.append(GatekeeperRecord("allow", "pass", network))
        limiter = policy.limiter
        if limiter is not None:
            rate = limiter.check(view, policy.route)
            if not rate.allowed:
                retryAfter = max(1, math.ceil(rate.retryAfter))
                record = GatekeeperRecord("rate", "block", rate.bucket, 429)
                return self._refuse(
                    passage,
                    429,
                    _TOO_MANY,
                    record,
                    ((b"Retry-After", b"%d" % (retryAfter,)),),
                )
            if rate.delay > 0:
                passage.delay = max(passage.delay, rate.delay)
                decisions.append(
                    GatekeeperRecord("rate", "delay", f"{rate.bucket} {rate.delay:.3f}s")
                )
            else:
                decisions.append(GatekeeperRecord("rate", "pass", rate.bucket))
        inspector = policy.inspector
        if inspector is not None:
            finding = inspector.inspect(view)
            if finding is not None:
                answer = self._found(passage, finding, policy.blocking)
                if answer is not None:
                    return answer
            if inspector.bodyLimit and _hasBody(view):
                passage.bodyCheck = self._bodyCheck(passage, inspector, policy.blocking)
                passage.bodyCheckSize = inspector.bodyLimit
        if policy.bodyLimit is not None:
            passage.bodyLimit = policy.bodyLimit
        return None

    def _bodyCheck(
        self, passage: Passage, inspector: IRequestInspector, blocking: bool
    ) -> Callable[[bytes], Answer | None]:
        def check(body: bytes) -> Answer | None:
            finding = inspector.inspectBody(passage.view, body)
            if finding is None:
                return None
            return self._found(passage, finding, blocking)

        return check

    def _found(self, passage: Passage, finding: Finding, blocking: bool) -> Answer | None:
        """
        Act on what the WAF found: refuse the request when the finding
        blocks (and the WAF of its route blocks), else log it.
        """
        detail = f"{finding.rule} ({finding.kind}) in {finding.field}"
        if finding.excerpt:
            detail += f": {_printable(finding.excerpt, 64)}"
        if blocking and finding.action == "block":
            return self._refuse(
                passage, 403, _FORBIDDEN, GatekeeperRecord("waf", "block", detail, 403)
            )
        passage.decisions.append(GatekeeperRecord("waf", "log", detail))
        view = passage.view
        log.info(
            "WAF detected {detail}: client {client}, \"{request}\"",
            detail=detail,
            client=view.clientAddress or "-",
            request=_printable(view.method + b" " + view.target),
        )
        return None

    def _refuse(
        self,
        passage: Passage,
        code: int,
        reason: bytes,
        record: GatekeeperRecord,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> Answer:
        """
        Refuse the request with C{code}, with its request id (in the
        C{X-Request-Id} header, the page and the log line): the one the
        chain gave it (C{manualb.stages.RequestId}), else a new one.
        """
        requestId = passage.requestId
        if requestId:
            # The chain's id is in the passage's headers already.
            idHeader: tuple[tuple[bytes, bytes], ...] = ()
        else:
            requestId = passage.requestId = self._newId()
            idHeader = ((b"X-Request-Id", requestId),)
        passage.decisions.append(record)
        view = passage.view
        log.warn(
            "request {requestId} refused with {code}: client {client}, "
            "\"{request}\", rule {rule}: {detail}",
            requestId=requestId.decode("ascii"),
            code=code,
            client=view.clientAddress or "-",
            request=_printable(view.method + b" " + view.target),
            rule=record.rule,
            detail=record.detail,
        )
        if code == 429:
            sentence = b"Too many requests; try again later."
        else:
            sentence = b"The request was refused."
        return Answer(
            code,
            reason,
            sentence + b" Request id: " + requestId,
            idHeader + headers,
        )


def frontEndBodyLimit(config: GatekeeperConfig, routes: Iterable[RouteConfig]) -> int:
    """
    The largest request body the front end may let in, before the route is
    known: the gatekeeper's C{client_max_body_size}, or a route's that is
    larger (0, no limit, when either is 0).  The gatekeeper stage then holds
    each request to its own route's limit.
    """
    limits = [config.client_max_body_size] + [
        route.client_max_body_size
        for route in routes
        if route.client_max_body_size is not None
    ]
    return 0 if 0 in limits else max(limits)




# The gatekeeper's keys in the configuration file.

#: The keys of C{[gatekeeper]} that are not fields of L{GatekeeperConfig}
#: (they are fields of its L{WAFConfig} and L{RateLimitConfig}).
GATEKEEPER_KEYS: tuple[str, ...] = ("waf_level", "waf_body_limit", "waf_rule", "rate_key")

#: The keys of C{[route NAME]} that are not fields of L{RouteConfig}.
ROUTE_KEYS: tuple[str, ...] = ("rate_key",)



def _networksOf(section: Section, key: str) -> tuple[str, ...] | None:
    lines = section.lines(key)
    if lines is None:
        return None
    try:
        return parseNetworks(lines)
    except ValueError as e:
        raise section.error(key, str(e)) from None


def _wafMode(section: Section) -> str | None:
    text = section.single("waf")
    if text is None:
        return None
    from manualb.waf import parseMode

    try:
        return parseMode(text)
    except ValueError as e:
        raise section.error("waf", str(e)) from None


def _wafLevel(section: Section) -> int | None:
    text = section.single("waf_level")
    if text is None:
        return None
    from manualb.waf import parseLevel

    try:
        return parseLevel(text)
    except ValueError as e:
        raise section.error("waf_level", str(e)) from None


def _rate(section: Section, default: RateLimitConfig | None) -> RateLimitConfig | None:
    """
    C{rate} and C{rate_key}: L{None} when C{rate} is absent, a rate of 0
    for C{off}.
    """
    text = section.single("rate")
    keyText = section.single("rate_key")
    if text is None:
        if keyText is not None:
            raise section.error("rate_key", "has no use without rate here")
        return None
    key = RateLimitConfig(0.0).key if default is None else default.key
    if keyText is not None:
        try:
            parseKey(keyText)
        except ValueError as e:
            raise section.error("rate_key", str(e).replace("hash key", "rate key")) from None
        key = keyText
    try:
        config = parseRate(text, key)
    except ValueError as e:
        raise section.error("rate", str(e)) from None
    if not config.rate and keyText is not None:
        raise section.error("rate_key", "has no use with rate = off")
    return config


def _size(section: Section, key: str) -> int | None:
    text = section.single(key)
    if text is None:
        return None
    try:
        return parseSize(text)
    except ValueError as e:
        raise section.error(key, str(e)) from None


def parseGatekeeperKeys(section: Section, default: GatekeeperConfig = GatekeeperConfig()) -> dict[str, object]:
    """
    Read the gatekeeper's own keys of C{[gatekeeper]} (its limits and
    timeouts are simple keys, read by the file reader): C{allow}, C{deny},
    C{trusted_proxies}, C{waf}, C{waf_level}, C{waf_body_limit},
    C{waf_rule}, C{rate} and C{rate_key}.

    @return: The fields of L{GatekeeperConfig} given, by name.
    """
    values: dict[str, object] = {}
    for key in ("allow", "deny", "trusted_proxies"):
        networks = _networksOf(section, key)
        if networks is not None:
            values[key] = networks
    waf = default.waf
    mode = _wafMode(section)
    if mode is not None:
        waf = attrs.evolve(waf, mode=mode)
    level = _wafLevel(section)
    if level is not None:
        waf = attrs.evolve(waf, level=level)
    bodyLimit = _size(section, "waf_body_limit")
    if bodyLimit is not None:
        waf = attrs.evolve(waf, body_limit=bodyLimit)
    lines = section.lines("waf_rule")
    if lines is not None:
        from manualb.waf import parseRule

        rules = []
        names: set[str] = set()
        for line in lines:
            try:
                rule = parseRule(line)
            except ValueError as e:
                raise section.error("waf_rule", str(e)) from None
            if rule.name in names:
                raise section.error("waf_rule", f"rule {rule.name!r} given twice")
            names.add(rule.name)
            rules.append(rule)
        if not rules:
            raise section.error("waf_rule", "empty value (expected one rule a line)")
        waf = attrs.evolve(waf, rules=tuple(rules))
    if waf != default.waf:
        values["waf"] = waf
    rate = _rate(section, None)
    if rate is not None:
        values["rate"] = rate if rate.rate > 0 else None
    return values


def parseRouteKeys(section: Section, gatekeeper: GatekeeperConfig = GatekeeperConfig()) -> dict[str, object]:
    """
    Read the gatekeeper's keys of a C{[route NAME]}, each in place of the
    one of C{[gatekeeper]}: C{allow}, C{deny}, C{waf}, C{waf_level},
    C{rate} (C{off} for none), C{rate_key} and C{client_max_body_size}.

    @param gatekeeper: The C{[gatekeeper]} section, whose C{rate_key} a
        route's C{rate} keeps when it gives none.

    @return: The fields of L{RouteConfig} given, by name.
    """
    values: dict[str, object] = {}
    for key in ("allow", "deny"):
        networks = _networksOf(section, key)
        if networks is not None:
            values[key] = networks
    mode = _wafMode(section)
    if mode is not None:
        values["waf"] = mode
    level = _wafLevel(section)
    if level is not None:
        values["waf_level"] = level
    rate = _rate(section, gatekeeper.rate)
    if rate is not None:
        values["rate"] = rate
    size = _size(section, "client_max_body_size")
    if size is not None:
        values["client_max_body_size"] = size
    return values


def routeWithKeys(route: RouteConfig, values: Mapping[str, object]) -> RouteConfig:
    """
    C{route} with the gatekeeper's keys of its section (L{parseRouteKeys}).
    """
    return attrs.evolve(route, **values) if values else route


def gatekeeperEngines(
    config: Config, reactor, store: IRateLimitStore | None = None
) -> tuple[
    Callable[[WAFConfig], IRequestInspector | None],
    Callable[[RateLimitConfig, str | None], IRateLimiter | None],
]:
    """
    The engines of the gatekeeper of C{config}, which the gatekeeper of
    every listener shares: what makes the WAF of a configuration
    (C{[gatekeeper]}'s, and each route's that differs), and what makes the
    rate limiter of a rate (C{[gatekeeper]}'s, with the route L{None}, or a
    route's own, with its name).  Each is asked once per configuration or
    route by each gatekeeper, and gives the same object every time: the
    same counters and the same buckets for every listener.

    @param store: Where the buckets are, when not in the process.
    """
    wafs: dict[WAFConfig, WAF] = {}
    if store is None:
        store = MemoryStore()
    limiters: dict[tuple[RateLimitConfig, str | None], RateLimiter] = {}

    def makeWAF(waf: WAFConfig) -> IRequestInspector | None:
        if waf.mode == "off":
            return None
        made = wafs.get(waf)
        if made is None:
            from manualb.waf import WAF

            made = wafs[waf] = WAF(waf)
        return made

    def makeLimiter(rate: RateLimitConfig, route: str | None) -> IRateLimiter | None:
        if not rate.rate:
            return None
        made = limiters.get((rate, route))
        if made is None:
            # A route's buckets are its own, apart from the gatekeeper's.
            zone = b"gatekeeper:" if route is None else b"route " + route.encode("utf-8") + b":"
            made = limiters[rate, route] = RateLimiter(rate, store, reactor, zone=zone)
        return made

    return makeWAF, makeLimiter
