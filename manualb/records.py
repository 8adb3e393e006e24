"""
Decision records: frozen accounts of what a stage decided for a request, and
why, for the access log, the admin API and whoever explains a decision.

Selection gives a L{Selection} for each pick (the candidates it offered the
strategy, the servers it left out and why, the strategy and what it keyed
on, the server chosen) and a L{SelectionRecord} per request: each attempt
with its outcome and, for one that failed, the cause of the retry that
followed.

This module is a leaf: it imports nothing of manualb's.  Servers appear by
name (C{host:port}), so a record holds no live object.
"""

from __future__ import annotations

from enum import Enum

import attrs

__all__ = [
    "Finding",
    "GatekeeperRecord",
    "RateDecision",
    "Attempt",
    "Candidate",
    "Outcome",
    "Selection",
    "SelectionRecord",
    "SkipReason",
    "Skipped",
    "StopReason",
]


class SkipReason(Enum):
    """
    Why selection did not offer a server to the strategy.
    """

    #: Marked C{down} in the configuration.
    DOWN = "down"
    #: Its health says it may not take a request now.
    UNHEALTHY = "unhealthy"
    #: Set to drain by an operator: no new request, no new sticky client.
    DRAINING = "draining"
    #: It has C{max_conns} requests in flight already.
    MAX_CONNS = "max_conns"
    #: It was tried already for this request.
    TRIED = "already tried"
    #: A C{backup} server, while a primary could take the request.
    BACKUP_NOT_NEEDED = "backup not needed"


class Outcome(Enum):
    """
    How an attempt on a server ended, as far as the server's health goes.
    """

    #: The server answered well.
    SUCCEEDED = "succeeded"
    #: The server failed the request (the cause says how).
    FAILED = "failed"
    #: The attempt ended without telling whether the server is healthy: the
    #: client went away, or the proxy itself lacked a resource.
    ABANDONED = "abandoned"


class StopReason(Enum):
    """
    Why a request got no further attempt.
    """

    #: No server the request had not tried could take it.
    NO_SERVER = "no server available"
    #: C{tries} attempts were made.
    TRIES = "tries"
    #: C{retry_timeout} passed since the first attempt.
    RETRY_TIMEOUT = "retry_timeout"


@attrs.frozen
class Candidate:
    """
    A server offered to the strategy.

    @ivar server: Its C{host:port}.
    @ivar weight: Its configured weight.
    @ivar effectiveWeight: The weight it had then (less during a
        C{slow_start}).
    @ivar health: Its health state then, as L{manualb.health.Phase} names it.
    """

    server: str
    weight: int
    effectiveWeight: float
    health: str


@attrs.frozen
class Skipped:
    """
    A server left out of a pick.

    @ivar server: Its C{host:port}.
    @ivar reason: Why.
    """

    server: str
    reason: SkipReason


@attrs.frozen
class Selection:
    """
    One pick: what was offered, what was left out, and what was chosen.

    @ivar pool: The pool's name.
    @ivar strategy: The strategy's name (C{round_robin}, C{hash}...).
    @ivar key: What the strategy keys on (C{$request_uri}, C{cookie
        manualb_server}), or L{None} for one that keys on nothing.
    @ivar candidates: The servers offered, in configuration order.
    @ivar skipped: The servers left out, and why.
    @ivar chosen: The server chosen, or L{None} when no server could be
        offered.
    """

    pool: str
    strategy: str
    key: str | None
    candidates: tuple[Candidate, ...]
    skipped: tuple[Skipped, ...]
    chosen: str | None


@attrs.frozen
class Attempt:
    """
    One attempt of a request on a server.

    @ivar selection: The pick that chose the server.
    @ivar outcome: How it ended for the server's health; L{None} while no
        verdict is in.
    @ivar cause: For a failed attempt, what failed (the cause of the retry
        that followed, if any).
    @ivar duration: Seconds the attempt held the server, once released.
    """

    selection: Selection
    outcome: Outcome | None = None
    cause: str | None = None
    duration: float | None = None

    @property
    def server(self) -> str:
        """
        The C{host:port} of the server tried.
        """
        return self.selection.chosen or ""


@attrs.frozen
class SelectionRecord:
    """
    What selection did for one request.

    @ivar pool: The pool's name.
    @ivar attempts: Each attempt, in order.
    @ivar stopped: Why no further attempt was made, when one was asked for
        and refused; L{None} otherwise.
    @ivar refused: The pick that found no server, when C{stopped} is
        L{StopReason.NO_SERVER}.
    """

    pool: str
    attempts: tuple[Attempt, ...] = ()
    stopped: StopReason | None = None
    refused: Selection | None = None


# The gatekeeper's decisions.


@attrs.frozen
class Finding:
    """
    What the web application firewall found in a request.

    @ivar rule: The name of the rule that fired (a built-in signature such
        as C{sqli}, C{xss-script}, or a custom rule's name).
    @ivar kind: The class of attack: C{sqli}, C{xss}, C{traversal},
        C{cmdi}, C{protocol}, or C{custom}.
    @ivar field: Where it was found: C{path}, C{query}, C{header:NAME},
        C{cookie:NAME}, C{body}...
    @ivar action: C{block} (the request is refused) or C{log} (it is only
        logged and counted: C{detect} mode, or a custom rule that logs).
    @ivar excerpt: A short part of the value that matched, for the log
        (printable ASCII, at most 64 bytes).
    """

    rule: str
    kind: str
    field: str
    action: str
    excerpt: str = ""


@attrs.frozen
class RateDecision:
    """
    What a rate limit decided for a request.

    @ivar bucket: The bucket's key, as text (C{$remote_addr=192.0.2.1}).
    @ivar allowed: Whether the request may go on (maybe after C{delay}).
    @ivar delay: Seconds the request waits first (the excess of a burst,
        without C{nodelay}); 0 to go at once.
    @ivar retryAfter: For a refused request, seconds after which one would
        be allowed (C{Retry-After}).
    """

    bucket: str
    allowed: bool
    delay: float = 0.0
    retryAfter: float = 0.0


@attrs.frozen
class GatekeeperRecord:
    """
    One decision of the gatekeeper for a request.

    @ivar rule: What decided: C{allow}, C{deny}, C{rate}, C{waf},
        C{limit_conn}...
    @ivar action: C{pass}, C{block}, C{log} or C{delay}.
    @ivar detail: Which CIDR, bucket or WAF rule, in words.
    @ivar status: The status answered when the request was refused, else 0.
    """

    rule: str
    action: str
    detail: str = ""
    status: int = 0
