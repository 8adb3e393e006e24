"""
Tests for L{manualb.metrics}: the counts recorded, the gauges read from the
live pools, and the resource that serves them to Prometheus.
"""

from __future__ import annotations

import attrs
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from manualb.metrics import BUCKETS, Metrics, MetricsResource
from manualb.testing import MemoryBalancer, NamedBackend, balancerConfig, responseBody


def scrape(metrics: Metrics) -> dict[str, dict[tuple, float]]:
    """
    The samples of C{metrics} as a scrape parses them: by sample name, the
    value of each label set (as sorted C{(name, value)} pairs).
    """
    text = generate_latest(metrics.registry).decode("utf-8")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = (
                sample.value
            )
    return samples


def labels(**values: str) -> tuple:
    return tuple(sorted(values.items()))


class _Silent(Resource):
    """
    A backend that never answers.
    """

    isLeaf = True

    def render(self, request):
        return NOT_DONE_YET


class RecordingTests(SynchronousTestCase):
    """
    L{Metrics.requestDone} and L{Metrics.gatekeeper} count into the
    counters and histograms a scrape shows.
    """

    def test_requests(self):
        """
        Each request counts once under its route, upstream, server and
        status class.
        """
        metrics = Metrics()
        metrics.requestDone("web", "backends", "10.0.0.1:80", 200, 0.01, 1)
        metrics.requestDone("web", "backends", "10.0.0.1:80", 204, 0.02, 1)
        metrics.requestDone("web", "backends", "10.0.0.2:80", 503, 0.5, 1)
        samples = scrape(metrics)["manualb_requests_total"]
        self.assertEqual(
            samples,
            {
                labels(route="web", upstream="backends", server="10.0.0.1:80", status="2xx"): 2,
                labels(route="web", upstream="backends", server="10.0.0.2:80", status="5xx"): 1,
            },
        )

    def test_statusClasses(self):
        """
        Every status counts under its class, 1xx to 5xx; one outside them
        (none was sent) under C{other}.
        """
        metrics = Metrics()
        for status in (101, 200, 302, 404, 499, 500, 599, 0, 999):
            metrics.requestDone("web", "backends", "10.0.0.1:80", status, 0.01, 1)
        samples = scrape(metrics)["manualb_requests_total"]
        counts = {dict(key)["status"]: value for key, value in samples.items()}
        self.assertEqual(
            counts, {"1xx": 1, "2xx": 1, "3xx": 1, "4xx": 2, "5xx": 2, "other": 2}
        )

    def test_noUpstream(self):
        """
        A request that went to no route, upstream or server counts with
        empty labels for them, and neither in a latency histogram nor as a
        retry.
        """
        metrics = Metrics()
        metrics.requestDone(None, None, None, 404, None, 0)
        metrics.requestDone("blocked", None, None, 403, None, 0)
        samples = scrape(metrics)
        self.assertEqual(
            samples["manualb_requests_total"],
            {
                labels(route="", upstream="", server="", status="4xx"): 1,
                labels(route="blocked", upstream="", server="", status="4xx"): 1,
            },
        )
        self.assertNotIn("manualb_upstream_response_seconds_count", samples)
        self.assertNotIn("manualb_upstream_retries_total", samples)

    def test_latencyHistogram(self):
        """
        The upstream's time goes in its latency histogram: each bucket
        counts the requests at most its bound, with the count and sum.
        """
        metrics = Metrics()
        for seconds in (0.003, 0.005, 0.04, 0.7, 120.0):
            metrics.requestDone("web", "backends", "10.0.0.1:80", 200, seconds, 1)
        metrics.requestDone("web", "other", "10.0.0.9:80", 200, 0.2, 1)
        samples = scrape(metrics)
        buckets = {
            dict(key)["le"]: value
            for key, value in samples["manualb_upstream_response_seconds_bucket"].items()
            if dict(key)["upstream"] == "backends"
        }
        self.assertEqual(len(buckets), len(BUCKETS) + 1)
        self.assertEqual(buckets["0.005"], 2)
        self.assertEqual(buckets["0.01"], 2)
        self.assertEqual(buckets["0.05"], 3)
        self.assertEqual(buckets["1.0"], 4)
        self.assertEqual(buckets["60.0"], 4)
        self.assertEqual(buckets["+Inf"], 5)
        count = samples["manualb_upstream_response_seconds_count"]
        self.assertEqual(count, {labels(upstream="backends"): 5, labels(upstream="other"): 1})
        total = samples["manualb_upstream_response_seconds_sum"][labels(upstream="backends")]
        self.assertAlmostEqual(total, 0.003 + 0.005 + 0.04 + 0.7 + 120.0)

    def test_retries(self):
        """
        Each try after the first counts as a retry of the upstream.
        """
        metrics = Metrics()
        metrics.requestDone("web", "backends", "10.0.0.1:80", 200, 0.01, 1)
        metrics.requestDone("web", "backends", "10.0.0.2:80", 200, 0.01, 2)
        metrics.requestDone("web", "backends", "10.0.0.3:80", 502, 0.01, 3)
        self.assertEqual(
            scrape(metrics)["manualb_upstream_retries_total"],
            {labels(upstream="backends"): 3},
        )

    def test_gatekeeper(self):
        """
        The gatekeeper's decisions count by rule and action.
        """
        metrics = Metrics()
        metrics.gatekeeper("deny", "block")
        metrics.gatekeeper("deny", "block")
        metrics.gatekeeper("waf", "log")
        metrics.gatekeeper("rate", "delay")
        self.assertEqual(
            scrape(metrics)["manualb_gatekeeper_decisions_total"],
            {
                labels(rule="deny", action="block"): 2,
                labels(rule="waf", action="log"): 1,
                labels(rule="rate", action="delay"): 1,
            },
        )

    def test_cardinalityBounded(self):
        """
        However many requests, with whatever status, the series are one per
        route, upstream, server and status class: the labels are those
        names only.
        """
        metrics = Metrics()
        for n in range(5000):
            server = "10.0.0.%d:80" % (n % 3,)
            metrics.requestDone("web", "backends", server, 100 + n % 500, n / 1000, 1 + n % 3)
        samples = scrape(metrics)
        requests = samples["manualb_requests_total"]
        self.assertEqual(len(requests), 3 * 5)
        for key in requests:
            self.assertEqual([name for name, value in key], ["route", "server", "status", "upstream"])
        self.assertEqual(len(samples["manualb_upstream_response_seconds_count"]), 1)
        self.assertEqual(len(metrics._requests), 3 * 5)
        self.assertEqual(len(metrics._latency), 1)

    def test_registryOwn(self):
        """
        Each L{Metrics} has a registry of its own, not prometheus_client's
        global one: two in one process count apart.
        """
        one, two = Metrics(), Metrics()
        one.requestDone("web", "backends", "10.0.0.1:80", 200, 0.01, 1)
        self.assertIn("manualb_requests_total", scrape(one))
        self.assertNotIn("manualb_requests_total", scrape(two))
        self.assertNotIn(b"manualb_", generate_latest(REGISTRY))


class GaugeTests(SynchronousTestCase):
    """
    The gauges read the balancer's live state at each scrape.
    """

    def setUp(self):
        self.lb = MemoryBalancer(
            balancerConfig(["10.0.0.1:8001 max_fails=1", "10.0.0.2:8001"])
        )
        self.lb.addBackend("10.0.0.1:8001", _Silent())
        self.lb.addBackend("10.0.0.2:8001", NamedBackend("two"))
        self.metrics = Metrics(
            lambda: self.lb.balancer.pools,
            lambda: self.lb.balancer.connections.open,
        )
        self.one = labels(upstream="backends", server="10.0.0.1:8001")
        self.two = labels(upstream="backends", server="10.0.0.2:8001")

    def test_idle(self):
        """
        Before any request, each server is up with nothing in flight, no
        client is connected, and each upstream has its latency and retries
        series at zero.
        """
        samples = scrape(self.metrics)
        self.assertEqual(samples["manualb_server_up"], {self.one: 1, self.two: 1})
        self.assertEqual(
            samples["manualb_server_requests_in_flight"], {self.one: 0, self.two: 0}
        )
        self.assertEqual(samples["manualb_client_connections"], {(): 0})
        self.assertEqual(
            samples["manualb_upstream_response_seconds_count"], {labels(upstream="backends"): 0}
        )
        self.assertEqual(
            samples["manualb_upstream_retries_total"], {labels(upstream="backends"): 0}
        )

    def test_inFlight(self):
        """
        A request waiting on its server counts in flight to that server, and
        its client's connection as open, until it ends.
        """
        client = self.lb.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.lb.flush()
        samples = scrape(self.metrics)
        self.assertEqual(
            samples["manualb_server_requests_in_flight"], {self.one: 1, self.two: 0}
        )
        self.assertEqual(samples["manualb_client_connections"], {(): 1})
        client.close()
        self.lb.flush()
        samples = scrape(self.metrics)
        self.assertEqual(
            samples["manualb_server_requests_in_flight"], {self.one: 0, self.two: 0}
        )
        self.assertEqual(samples["manualb_client_connections"], {(): 0})

    def test_health(self):
        """
        A server its health takes down shows 0, and 1 again once it is back.
        """
        server = self.lb.balancer.pools["backends"].servers[0]
        server.health.requestFailed("refused")
        self.assertEqual(scrape(self.metrics)["manualb_server_up"], {self.one: 0, self.two: 1})
        server.health.requestSucceeded()
        self.assertEqual(scrape(self.metrics)["manualb_server_up"], {self.one: 1, self.two: 1})

    def test_markedDown(self):
        """
        A server marked C{down} in the configuration shows 0.
        """
        lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001 down", "10.0.0.2:8001"]))
        metrics = Metrics(lb.balancer.pools)
        self.assertEqual(scrape(metrics)["manualb_server_up"], {self.one: 0, self.two: 1})
        self.assertNotIn("manualb_client_connections", scrape(metrics))

    def test_newPools(self):
        """
        Given a callable, each scrape reads the pools it returns then.
        """
        pools = {}
        metrics = Metrics(lambda: pools)
        self.assertEqual(scrape(metrics).get("manualb_server_up", {}), {})
        pools.update(self.lb.balancer.pools)
        self.assertEqual(scrape(metrics)["manualb_server_up"], {self.one: 1, self.two: 1})


class ResourceTests(SynchronousTestCase):
    """
    L{MetricsResource} serves the registry to a scrape.
    """

    def setUp(self):
        self.metrics = Metrics()
        self.metrics.requestDone("web", "backends", "10.0.0.1:80", 200, 0.01, 1)
        self.resource = MetricsResource(self.metrics.registry)

    def render(self, method=b"GET", accept=None):
        request = DummyRequest([b""])
        request.method = method
        if accept is not None:
            request.requestHeaders.setRawHeaders(b"accept", [accept])
        body = self.resource.render(request)
        return request, body

    def test_text(self):
        """
        A plain C{GET} gets the text exposition format, with its content
        type.
        """
        request, body = self.render()
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"),
            [b"text/plain; version=0.0.4; charset=utf-8"],
        )
        families = {
            family.name: family
            for family in text_string_to_metric_families(body.decode("utf-8"))
        }
        self.assertEqual(families["manualb_requests"].samples[0].value, 1)
        self.assertEqual(body, generate_latest(self.metrics.registry))

    def test_openMetrics(self):
        """
        A scrape that asks for OpenMetrics gets it.
        """
        request, body = self.render(
            accept=b"application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )
        contentType = request.responseHeaders.getRawHeaders(b"content-type")[0]
        self.assertTrue(contentType.startswith(b"application/openmetrics-text"), contentType)
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_head(self):
        """
        C{HEAD} is answered as C{GET}.
        """
        request, body = self.render(method=b"HEAD")
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"),
            [b"text/plain; version=0.0.4; charset=utf-8"],
        )

    def test_otherMethods(self):
        """
        Other methods are not allowed.
        """
        self.assertRaises(UnsupportedMethod, self.render, method=b"POST")

    def test_overHTTP(self):
        """
        Served over HTTP, the scrape has the content type and the metrics,
        read as they are while it is served: here by a backend of the
        balancer it describes, which counts that very request in flight.
        """
        lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001"]))
        metrics = Metrics(lb.balancer.pools, lambda: lb.balancer.connections.open)
        lb.addBackend("10.0.0.1:8001", MetricsResource(metrics.registry))
        response = self.successResultOf(lb.agent().request(b"GET", b"http://lb/metrics"))
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"),
            [b"text/plain; version=0.0.4; charset=utf-8"],
        )
        body = self.successResultOf(responseBody(response)).decode("utf-8")
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(body)
            for sample in family.samples
        }
        self.assertEqual(samples["manualb_server_requests_in_flight"], 1)
        self.assertEqual(samples["manualb_server_up"], 1)
        self.assertEqual(samples["manualb_client_connections"], 1)


class WiredTests(SynchronousTestCase):
    """
    A balancer with an admin listener counts its requests and its
    gatekeeper's decisions as they finish.
    """

    def test_requestsAndDecisions(self):
        config = attrs.evolve(
            balancerConfig(["10.0.0.1:8001"], gatekeeper={"deny": "192.0.2.0/24"}),
            admin="tcp:0:interface=127.0.0.1",
        )
        lb = MemoryBalancer(config)
        lb.addBackend("10.0.0.1:8001", NamedBackend("one"))
        agent = lb.agent()
        response = self.successResultOf(agent.request(b"GET", b"http://example.com/"))
        self.assertEqual(self.successResultOf(responseBody(response)), b"one\n")
        denied = lb.agent(clientHost="192.0.2.1")
        response = self.successResultOf(denied.request(b"GET", b"http://example.com/"))
        self.assertEqual(response.code, 403)
        samples = scrape(lb.balancer.metrics)
        requests = samples["manualb_requests_total"]
        self.assertEqual(
            requests[labels(route="default", upstream="backends", server="10.0.0.1:8001", status="2xx")],
            1,
        )
        self.assertEqual(sum(requests.values()), 2)
        self.assertEqual(
            samples["manualb_gatekeeper_decisions_total"][labels(rule="deny", action="block")], 1
        )
        self.successResultOf(lb.close())
