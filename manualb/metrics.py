"""
Metrics for Prometheus: what the balancer counted, and the state of its
servers and clients, in the text exposition format.

L{Metrics} keeps the counts of one balancer in a registry of its own (never
prometheus_client's global one, so that several balancers, and tests, live
in one process).  The request path records into it with L{Metrics.requestDone}
and L{Metrics.gatekeeper}: plain integers in dictionaries, keyed by names
from the configuration only (route, upstream, server, gatekeeper rule) and
the status class, never by anything a client sends, so that the number of
series stays bounded.  They become metric families only when scraped.  The
gauges (health, requests in flight, client connections) are read from the
live pools at each scrape.

L{MetricsResource} serves the registry to a scrape, on the reactor's thread:
prometheus_client's own Twisted resource renders on the global reactor's
thread pool, which neither the counts (kept without locks) nor a balancer
given its reactor would want.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping, Sequence, Union

from twisted.web.resource import Resource
from twisted.web.server import Request

from manualb.health import UP

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from manualb.selection import Pool

__all__ = ["BUCKETS", "Metrics", "MetricsResource"]

#: The upper bounds, in seconds, of the upstream latency histogram's
#: buckets (the last, infinity, is implied).
BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

#: The label value of each status class, by the status divided by 100; a
#: status outside 100-599 (none was sent) counts as C{other}.
_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
_OTHER = "other"

Pools = Union[Mapping[str, "Pool"], Callable[[], Mapping[str, "Pool"]]]


class _Histogram:
    """
    The observations of one histogram series: a count per bucket (not
    cumulative; the last for those above every bound) and their sum.
    """

    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)
        self.total = 0.0


class Metrics:
    """
    The metrics of one balancer.

    @ivar registry: The registry that holds them, for L{MetricsResource} or
        L{prometheus_client.generate_latest}.
    @ivar pools: The upstream pools by name, or what returns them: read at
        each scrape, so that the gauges show the servers as they are then
        (and the pools of a new configuration, when a callable is given).
    @ivar connections: Returns the number of client connections open now,
        or L{None} when not known.
    @ivar shared: The state shared with other instances
        (L{manualb.state.SharedState}), whose store's reachability is a
        gauge; or L{None}.
    """

    def __init__(
        self,
        pools: Pools | None = None,
        connections: Callable[[], int] | None = None,
        buckets: Sequence[float] = BUCKETS,
    ) -> None:
        """
        @param buckets: The upper bounds of the latency histogram's buckets,
            in seconds, ascending, without infinity.
        """
        self.pools = pools
        self.connections = connections
        self.shared = None
        self.buckets = tuple(buckets)
        # (route, upstream, server, status // 100) -> requests.
        self._requests: dict[tuple, int] = {}
        # upstream -> its latency histogram.
        self._latency: dict[str, _Histogram] = {}
        # upstream -> retries.
        self._retries: dict[str, int] = {}
        # (rule, action) -> decisions.
        self._decisions: dict[tuple[str, str], int] = {}
        self._registry: CollectorRegistry | None = None

    @property
    def registry(self) -> CollectorRegistry:
        """
        The Prometheus registry that serves these metrics, made when first
        asked for: prometheus_client is imported only by a process that
        serves C{/metrics}.
        """
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry(auto_describe=True)
            self._registry.register(_Collector(self))
        return self._registry

    def requestDone(
        self,
        route: str | None,
        upstream: str | None,
        server: str | None,
        status: int,
        seconds: float | None,
        tries: int,
    ) -> None:
        """
        Count one request answered.

        @param route: The name of the route that matched, or L{None} when
            none did.
        @param upstream: The name of the pool it went to, or L{None} when it
            went to none (refused, redirected, no route).
        @param server: The C{host:port} of the server that answered (the
            last tried), or L{None} when no server did.
        @param status: The status sent to the client, counted by its class.
        @param seconds: How long the upstream took (the time of its
            attempts, as C{$upstream_response_time} adds them up), observed
            in the upstream's latency histogram; L{None} when no server was
            tried.
        @param tries: How many attempts were made on the upstream: each
            after the first is a retry.
        """
        key = (route, upstream, server, status // 100)
        requests = self._requests
        if key in requests:
            requests[key] += 1
        else:
            requests[key] = 1
        if upstream is None:
            return
        if seconds is not None:
            histogram = self._latency.get(upstream)
            if histogram is None:
                histogram = self._latency[upstream] = _Histogram(len(self.buckets))
            histogram.counts[bisect_left(self.buckets, seconds)] += 1
            histogram.total += seconds
        if tries > 1:
            self._retries[upstream] = self._retries.get(upstream, 0) + tries - 1

    def gatekeeper(self, rule: str, action: str) -> None:
        """
        Count one decision of the gatekeeper.

        @param rule: What decided (C{allow}, C{deny}, C{rate}, C{waf}, as
            L{manualb.records.GatekeeperRecord.rule}).
        @param action: What it did (C{pass}, C{block}, C{log}, C{delay}).
        """
        key = (rule, action)
        decisions = self._decisions
        decisions[key] = decisions.get(key, 0) + 1

    def _pools(self) -> Iterable[Pool]:
        pools = self.pools
        if pools is None:
            return ()
        if callable(pools):
            pools = pools()
        return pools.values()

    def collect(self) -> Iterator[Metric]:
        """
        The metric families as they stand now.  Every upstream of L{pools}
        has its latency and retries series, at zero before its first
        request, so that a rate over them starts from the start.
        """
        from prometheus_client.metrics_core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        pools = list(self._pools())
        upstreams = [pool.name for pool in pools]
        requests = CounterMetricFamily(
            "manualb_requests",
            "Requests answered, by route, upstream, server and status class.",
            labels=("route", "upstream", "server", "status"),
        )
        # Statuses outside 1xx-5xx are kept apart, and counted as one here.
        series: dict[tuple[str, str, str, str], int] = {}
        for (route, upstream, server, status), count in self._requests.items():
            key = (route or "", upstream or "", server or "", _CLASSES.get(status, _OTHER))
            series[key] = series.get(key, 0) + count
        for key, count in series.items():
            requests.add_metric(key, count)
        yield requests

        latency = HistogramMetricFamily(
            "manualb_upstream_response_seconds",
            "How long the upstream took to answer a request, its retries "
            "included.",
            labels=("upstream",),
        )
        bounds = [_bound(bound) for bound in self.buckets] + ["+Inf"]
        empty = _Histogram(len(self.buckets))
        for upstream in _merged(upstreams, self._latency):
            histogram = self._latency.get(upstream, empty)
            cumulative = 0
            buckets = []
            for bound, count in zip(bounds, histogram.counts):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric((upstream,), buckets, histogram.total)
        yield latency

        retries = CounterMetricFamily(
            "manualb_upstream_retries",
            "Attempts after the first of a request, by upstream.",
            labels=("upstream",),
        )
        for upstream in _merged(upstreams, self._retries):
            retries.add_metric((upstream,), self._retries.get(upstream, 0))
        yield retries

        decisions = CounterMetricFamily(
            "manualb_gatekeeper_decisions",
            "Decisions of the gatekeeper, by the rule that decided and its action.",
            labels=("rule", "action"),
        )
        for (rule, action), count in self._decisions.items():
            decisions.add_metric((rule, action), count)
        yield decisions

        up = GaugeMetricFamily(
            "manualb_server_up",
            "Whether the server takes requests: 1 when its health is up and it "
            "is not marked down, else 0.",
            labels=("upstream", "server"),
        )
        inFlight = GaugeMetricFamily(
            "manualb_server_requests_in_flight",
            "Requests in flight to the server now.",
            labels=("upstream", "server"),
        )
        for pool in pools:
            for server in pool.servers:
                labels = (pool.name, server.name)
                serving = server.health.state == UP and not server.config.down
                up.add_metric(labels, 1 if serving else 0)
                inFlight.add_metric(labels, server.active)
        yield up
        yield inFlight

        if self.connections is not None:
            yield GaugeMetricFamily(
                "manualb_client_connections",
                "Client connections open now, on every listener.",
                value=self.connections(),
            )

        if self.shared is not None:
            yield GaugeMetricFamily(
                "manualb_shared_state_connected",
                "Whether the store of the state shared with other instances can be "
                "reached: 1 when it can, 0 while it is lost.",
                value=1 if self.shared.store.connected else 0,
            )


def _merged(names: list[str], counted: Mapping[str, object]) -> list[str]:
    """
    C{names}, then the names of C{counted} not among them (an upstream of
    an earlier configuration keeps its series).
    """
    return names + [name for name in counted if name not in names]


def _bound(bound: float) -> str:
    """
    The C{le} label of a bucket's upper bound, as prometheus_client writes
    it (C{1.0}, C{0.25}).
    """
    return repr(float(bound))


class _Collector:
    """
    Hands a L{Metrics}' families to its registry at each scrape.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect()


class MetricsResource(Resource):
    """
    Serves a registry to Prometheus: C{GET} (and C{HEAD}) answers with its
    metrics in the text exposition format, or in OpenMetrics when the
    scrape's C{Accept} asks for it.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        from prometheus_client.exposition import choose_encoder

        accept = request.getHeader(b"accept")
        encoder, contentType = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", contentType.encode("ascii"))
        return encoder(self.registry)
