"""
The admin listener (L{manualb.admin}): the status of every pool and server,
live changes of a server's state and weight, and the explanation of a
recent request, over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import weakref
from io import BytesIO

import attrs
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET

from manualb import admin as adminModule
from manualb.front import siteOf
from manualb.admin import RecentRequests, isLoopback, withLoopback
from manualb.config import ConfigError
from manualb.configfile import loadConfig, parseConfig
from manualb.service import LoadBalancer, makeService
from manualb.testing import (
    MemoryBalancer,
    NamedBackend,
    listenBackend,
    responseBody,
    serverAddress,
)
from manualb.view import Passage, RequestView


class HoldingBackend(NamedBackend):
    """
    A L{NamedBackend} that holds requests for C{/hold} until L{release}.
    """

    def __init__(self, name: str):
        super().__init__(name)
        self.held: list = []
        self.arrived: Deferred | None = None

    def render(self, request):
        if request.path == b"/hold":
            self.held.append(request)
            if self.arrived is not None:
                arrived, self.arrived = self.arrived, None
                arrived.callback(None)
            return NOT_DONE_YET
        return super().render(request)

    def release(self) -> None:
        held, self.held = self.held, []
        for request in held:
            request.setHeader(b"Content-Length", b"4")
            request.write(b"done")
            request.finish()


class AdminTestCase(TestCase):
    """
    A load balancer serving two backends, with its admin listener, both on
    ports of 127.0.0.1 chosen by the system.
    """

    balance = "round_robin"

    @inlineCallbacks
    def serve(self, admin: str = "admin = tcp:0:interface=127.0.0.1", extra: str = "",
              servers: list[str] | None = None):
        self.backends = [HoldingBackend("a"), HoldingBackend("b")]
        names = []
        for backend in self.backends:
            port = yield listenBackend(reactor, backend)
            self.addCleanup(port.stopListening)
            names.append(serverAddress(port))
        self.serverNames = servers if servers is not None else names
        config = parseConfig(
            "[manualb]\nlisten = tcp:0:interface=127.0.0.1\naccess_log = off\n"
            f"{admin}\n{extra}\n"
            f"[upstream web]\nservers =\n"
            + "".join(f"    {name}\n" for name in self.serverNames)
            + f"balance = {self.balance}\n"
            "[route r]\npath = /\nupstream = web\n",
            os.path.join(self.directory(), "lb.ini"),
        )
        service = self.service = makeService(config, reactor)
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        self.addCleanup(service.balancer.close)
        self.pool = service.balancer.pools["web"]
        ports = {}
        for child in service:
            if child.name:
                child._waitingForPort.addCallback(
                    lambda port, child=child: ports.__setitem__(siteOf(child.serving), port) or port
                )
        self.proxyPort = ports.pop(service.balancer.sites["default"]).getHost().port
        [adminPort] = ports.values()
        self.adminPort = adminPort.getHost().port
        self.agent = Agent(reactor)

    def directory(self) -> str:
        if not hasattr(self, "_directory"):
            self._directory = os.path.abspath(self.mktemp())
            os.makedirs(self._directory)
        return self._directory

    @inlineCallbacks
    def get(self, path: str = "/", headers: dict | None = None):
        """
        A request through the proxy: C{(response, body)}.
        """
        response = yield self.agent.request(
            b"GET",
            b"http://127.0.0.1:%d%s" % (self.proxyPort, path.encode("ascii")),
            Headers({k: [v] for k, v in (headers or {}).items()}),
        )
        body = yield readBody(response)
        return response, body

    @inlineCallbacks
    def api(self, method: bytes, path: str, body: object = None, token: bytes | None = None,
            raw: bytes | None = None):
        """
        A request to the admin API: C{(code, decoded JSON)}.
        """
        headers = Headers()
        if token is not None:
            headers.addRawHeader(b"Authorization", b"Bearer " + token)
        producer = None
        if raw is None and body is not None:
            raw = json.dumps(body).encode("utf-8")
        if raw is not None:
            producer = FileBodyProducer(BytesIO(raw))
        response = yield self.agent.request(
            method,
            b"http://127.0.0.1:%d%s" % (self.adminPort, path.encode("ascii")),
            headers,
            producer,
        )
        data = yield readBody(response)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json"]
        )
        return response.code, json.loads(data)

    def server(self, status: dict, index: int) -> dict:
        [entry] = [
            each
            for each in status["upstreams"]["web"]["servers"]
            if each["server"] == self.serverNames[index]
        ]
        return entry


class StatusTests(AdminTestCase):
    @inlineCallbacks
    def test_status(self):
        """
        C{GET /api/status} gives each server of each upstream: its state,
        health, weights, requests in flight, attempts, failures and latency
        percentiles, counted as requests go through.
        """
        yield self.serve()
        for _ in range(4):
            response, body = yield self.get()
            self.assertEqual(response.code, 200)
        held = Deferred()
        self.backends[0].arrived = held
        pending = self.get("/hold")
        yield held
        code, status = yield self.api(b"GET", "/api/status")
        self.assertEqual(code, 200)
        self.assertEqual(list(status["upstreams"]), ["web"])
        self.assertEqual(status["upstreams"]["web"]["strategy"], "round_robin")
        first, second = self.server(status, 0), self.server(status, 1)
        self.assertEqual(
            (first["state"], first["setBy"], first["backup"], first["active"]),
            ("up", "file", False, 1),
        )
        self.assertEqual((first["requests"], first["failures"]), (2, 0))
        self.assertEqual((second["requests"], second["active"]), (2, 0))
        self.assertEqual(first["weight"], {"configured": 1, "current": 1, "effective": 1.0})
        self.assertEqual(first["health"], {"phase": "up", "reason": None, "history": []})
        latency = first["latency"]
        self.assertEqual(latency["samples"], 2)
        self.assertEqual(set(latency), {"samples", "p50", "p90", "p99", "max"})
        self.assertTrue(0 <= latency["p50"] <= latency["p99"] <= latency["max"])
        self.backends[0].release()
        response, body = yield pending
        self.assertEqual(body, b"done")
        code, status = yield self.api(b"GET", "/api/status")
        self.assertEqual((self.server(status, 0)["active"], self.server(status, 0)["requests"]),
                         (0, 3))

    @inlineCallbacks
    def test_explain(self):
        """
        C{GET /api/explain/ID} explains the request of that C{X-Request-Id};
        an unknown id is a 404.
        """
        yield self.serve()
        response, body = yield self.get("/page")
        [requestId] = response.headers.getRawHeaders(b"x-request-id")
        code, record = yield self.api(b"GET", "/api/explain/" + requestId.decode("ascii"))
        self.assertEqual(code, 200)
        self.assertEqual((record["requestId"], record["target"], record["status"]),
                         (requestId.decode("ascii"), "/page", 200))
        self.assertEqual(record["attempts"][0]["server"], self.serverNames[0])
        code, error = yield self.api(b"GET", "/api/explain/unknown")
        self.assertEqual((code, list(error)), (404, ["error"]))

    @inlineCallbacks
    def test_metrics(self):
        """
        C{GET /metrics} on the admin listener serves Prometheus text: the
        requests by route, upstream, server and status class, and the live
        health of each server.
        """
        yield self.serve()
        for _ in range(2):
            response, body = yield self.get("/page")
        response = yield self.agent.request(
            b"GET", b"http://127.0.0.1:%d/metrics" % (self.adminPort,)
        )
        text = (yield readBody(response)).decode("utf-8")
        self.assertEqual(response.code, 200)
        families = {family.name: family for family in text_string_to_metric_families(text)}
        requests = [
            sample
            for sample in families["manualb_requests"].samples
            if sample.name == "manualb_requests_total"
        ]
        self.assertEqual(sum(sample.value for sample in requests), 2)
        self.assertEqual({sample.labels["status"] for sample in requests}, {"2xx"})
        self.assertEqual({sample.labels["upstream"] for sample in requests}, {"web"})
        up = {
            sample.labels["server"]: sample.value
            for sample in families["manualb_server_up"].samples
        }
        self.assertEqual(up, {name: 1.0 for name in self.serverNames})

    @inlineCallbacks
    def test_unknownPath(self):
        """
        Another path is a 404 with a JSON error; a POST to the status a 405.
        """
        yield self.serve()
        code, error = yield self.api(b"GET", "/api/nothing")
        self.assertEqual((code, list(error)), (404, ["error"]))
        code, error = yield self.api(b"POST", "/api/status", {})
        self.assertEqual(code, 405)


class ChangeTests(AdminTestCase):
    balance = "cookie"

    @inlineCallbacks
    def test_drain(self):
        """
        A drained server gets no new request and no sticky client (the
        cookie that names it is ignored, and the client gets another's),
        while the request in flight to it finishes.
        """
        yield self.serve()
        response, body = yield self.get()
        self.assertEqual(body, b"a\n")
        [cookie] = response.headers.getRawHeaders(b"set-cookie")
        cookie = cookie.split(b";")[0].decode("ascii")
        held = Deferred()
        self.backends[0].arrived = held
        pending = self.get("/hold", {"Cookie": cookie})
        yield held
        code, server = yield self.api(
            b"POST", "/api/upstreams/web/servers/" + self.serverNames[0], {"state": "drain"}
        )
        self.assertEqual((code, server["state"], server["setBy"], server["active"]),
                         (200, "drain", "admin", 1))
        last = server["health"]["history"][-1]
        self.assertEqual(
            (last["state"], last["reason"], last["source"]),
            ("drain", "admin API (127.0.0.1): state drain", "admin"),
        )
        for _ in range(3):
            response, body = yield self.get(headers={"Cookie": cookie})
            self.assertEqual(body, b"b\n")
            self.assertTrue(response.headers.getRawHeaders(b"set-cookie"))
        self.backends[0].release()
        response, body = yield pending
        self.assertEqual((response.code, body), (200, b"done"))
        code, status = yield self.api(b"GET", "/api/status")
        self.assertEqual(self.server(status, 0)["state"], "drain")
        self.assertEqual(self.server(status, 0)["requests"], 2)
        # Up again: the sticky client comes back.
        code, server = yield self.api(
            b"POST", "/api/upstreams/web/servers/" + self.serverNames[0], {"state": "up"}
        )
        self.assertEqual(server["state"], "up")
        response, body = yield self.get(headers={"Cookie": cookie})
        self.assertEqual(body, b"a\n")

    @inlineCallbacks
    def test_downAndUp(self):
        """
        A server set down gets no request until it is set up again.
        """
        yield self.serve()
        code, server = yield self.api(
            b"POST", "/api/upstreams/web/servers/" + self.serverNames[1], {"state": "down"}
        )
        self.assertEqual(server["state"], "down")
        bodies = []
        for _ in range(3):
            response, body = yield self.get()
            bodies.append(body)
        self.assertEqual(bodies, [b"a\n"] * 3)
        yield self.api(b"POST", "/api/upstreams/web/servers/" + self.serverNames[1],
                       {"state": "up"})
        bodies = []
        for _ in range(2):
            response, body = yield self.get()
            bodies.append(body)
        self.assertIn(b"b\n", bodies)

    @inlineCallbacks
    def test_weight(self):
        """
        A new weight takes effect at once; the status shows it beside the
        configured one.
        """
        self.balance = "round_robin"
        yield self.serve()
        code, server = yield self.api(
            b"POST", "/api/upstreams/web/servers/" + self.serverNames[0], {"weight": 3}
        )
        self.assertEqual(server["weight"], {"configured": 1, "current": 3, "effective": 3.0})
        bodies = []
        for _ in range(8):
            response, body = yield self.get()
            bodies.append(body)
        self.assertEqual(bodies.count(b"a\n"), 6)

    @inlineCallbacks
    def test_badInput(self):
        """
        A body that is not JSON, an unknown field or value, an unknown pool
        or server: a 400 or 404 with a JSON error, and nothing changes.
        """
        yield self.serve()
        path = "/api/upstreams/web/servers/" + self.serverNames[0]
        for raw, code in [
            (b"{drain", 400),
            (b"[]", 400),
            (b"{}", 400),
            (b'{"state": "sleeping"}', 400),
            (b'{"weight": 0}', 400),
            (b'{"weight": "3"}', 400),
            (b'{"weight": true}', 400),
            (b'{"colour": "red"}', 400),
            (b"\xff", 400),
        ]:
            got, error = yield self.api(b"POST", path, raw=raw)
            self.assertEqual((raw, got, list(error)), (raw, code, ["error"]))
        got, error = yield self.api(b"POST", "/api/upstreams/nope/servers/x:1", {"state": "up"})
        self.assertEqual((got, error), (404, {"error": "no upstream 'nope'"}))
        got, error = yield self.api(b"POST", "/api/upstreams/web/servers/192.0.2.1:1",
                                    {"state": "up"})
        self.assertEqual(got, 404)
        got, error = yield self.api(b"GET", path)
        self.assertEqual(got, 405)
        code, status = yield self.api(b"GET", "/api/status")
        self.assertEqual(
            [(each["state"], each["weight"]["current"])
             for each in status["upstreams"]["web"]["servers"]],
            [("up", 1), ("up", 1)],
        )


class TokenTests(AdminTestCase):
    @inlineCallbacks
    def serveWithToken(self, admin="admin = tcp:0:interface=127.0.0.1"):
        path = os.path.join(self.directory(), "admin.token")
        with open(path, "wb") as f:
            f.write(b"s3cret-token\n")
        yield self.serve(admin=admin, extra=f"admin_token_file = {path}")

    @inlineCallbacks
    def test_tokenRequired(self):
        """
        With C{admin_token_file}, a request without the token, or with
        another, is refused with 401; with it, it is served.
        """
        yield self.serveWithToken()
        code, error = yield self.api(b"GET", "/api/status")
        self.assertEqual(code, 401)
        code, error = yield self.api(b"GET", "/api/status", token=b"s3cret-tokeN")
        self.assertEqual(code, 401)
        code, error = yield self.api(
            b"POST", "/api/upstreams/web/servers/" + self.serverNames[0],
            {"state": "down"}, token=b"wrong",
        )
        self.assertEqual(code, 401)
        code, status = yield self.api(b"GET", "/api/status", token=b"s3cret-token")
        self.assertEqual((code, self.server(status, 0)["state"]), (200, "up"))

    @inlineCallbacks
    def test_constantTime(self):
        """
        The token is compared with L{hmac.compare_digest}.
        """
        compared = []
        original = adminModule.compare_digest

        def compare(a, b):
            compared.append((a, b))
            return original(a, b)

        self.patch(adminModule, "compare_digest", compare)
        yield self.serveWithToken()
        code, status = yield self.api(b"GET", "/api/status", token=b"guess")
        self.assertEqual(compared, [(b"guess", b"s3cret-token")])

    @inlineCallbacks
    def test_nonLoopbackWithToken(self):
        """
        With a token, the admin listener may bind every interface.
        """
        yield self.serveWithToken(admin="admin = tcp:0:interface=0.0.0.0")
        code, status = yield self.api(b"GET", "/api/status", token=b"s3cret-token")
        self.assertEqual(code, 200)


MAIN = "[manualb]\nlisten = tcp:8080\n"
REST = "[upstream web]\nservers = 127.0.0.1:8001\n[route r]\npath = /\nupstream = web\n"


class ConfigTests(SynchronousTestCase):
    def test_explainRecords(self):
        """
        C{explain_records} bounds the ring of requests the API can explain
        (10000 by default; 0 keeps none).
        """
        config = parseConfig(MAIN + "admin = tcp:9000\n" + REST)
        self.assertEqual(MemoryBalancer(config).balancer.recent.entries.maxlen, 10000)
        config = parseConfig(MAIN + "admin = tcp:9000\nexplain_records = 0\n" + REST)
        self.assertEqual(MemoryBalancer(config).balancer.recent.entries.maxlen, 0)

    def test_absent(self):
        """
        Without C{admin} there is no admin listener, and no record is kept.
        """
        config = parseConfig(MAIN + REST)
        self.assertEqual((config.admin, config.admin_token_file), (None, None))
        balancer = MemoryBalancer(config)
        self.assertIsNone(balancer.balancer.recent)
        self.assertEqual([child.name for child in makeService(config) if child.name],
                         ["tcp:8080"])
        config = parseConfig(MAIN + "admin = tcp:9000\n" + REST)
        self.assertEqual([child.name for child in makeService(config) if child.name],
                         ["tcp:8080", "admin tcp:9000:interface=127.0.0.1"])

    def test_loopbackByDefault(self):
        """
        A C{tcp:} endpoint without an interface binds the loopback one.
        """
        config = parseConfig(MAIN + "admin = tcp:9000\n" + REST)
        self.assertEqual(config.admin, "tcp:9000:interface=127.0.0.1")
        self.assertEqual(withLoopback("tcp6:9000"), r"tcp6:9000:interface=\:\:1")
        self.assertTrue(isLoopback("tcp:9000:127.0.0.1"))
        self.assertTrue(isLoopback(r"tcp6:9000:interface=\:\:1"))
        self.assertTrue(isLoopback("unix:/run/manualb.sock"))
        self.assertFalse(isLoopback("tcp:9000:interface=0.0.0.0"))
        self.assertFalse(isLoopback("tcp:9000"))

    def test_nonLoopbackWithoutToken(self):
        """
        An admin listener on another interface without a token file is
        refused, naming the file, the line and the key.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(MAIN + "admin = tcp:9000:interface=0.0.0.0\n" + REST)
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertTrue(str(error).startswith(path + ", line 3: [manualb] admin: "), str(error))
        self.assertIn("admin_token_file", str(error))

    def test_tokenFileMissing(self):
        """
        A token file that does not exist is refused.
        """
        error = self.assertRaises(
            ConfigError, parseConfig, MAIN + "admin = tcp:9000\nadmin_token_file = /nonexistent\n"
            + REST,
        )
        self.assertEqual(
            str(error), "<string>: [manualb] admin_token_file: no such file '/nonexistent'"
        )

    def test_emptyToken(self):
        """
        An empty token file stops the start.
        """
        path = os.path.abspath(self.mktemp())
        open(path, "w").close()
        config = parseConfig(MAIN + f"admin = tcp:9000\nadmin_token_file = {path}\n" + REST)
        balancer = LoadBalancer(attrs.evolve(config, access_log=None), reactor)
        error = self.assertRaises(ConfigError, balancer.load)
        self.assertIn("holds no token", str(error))

    def test_badEndpoint(self):
        error = self.assertRaises(ConfigError, parseConfig, MAIN + "admin = tcp:port\n" + REST)
        self.assertIn("[manualb] admin: cannot parse endpoint", str(error))


def memoryBalancer(extra: str = "", upstream: str = "") -> MemoryBalancer:
    config = parseConfig(
        "[manualb]\nlisten = tcp:8080\naccess_log = off\nadmin = tcp:9000\n" + extra
        + "[upstream web]\nservers =\n    10.0.0.1:80\n    10.0.0.2:80\n" + upstream
        + "[route r]\npath = /\nupstream = web\n"
    )
    lb = MemoryBalancer(config)
    lb.addBackend("10.0.0.1:80", NamedBackend("a"))
    lb.addBackend("10.0.0.2:80", NamedBackend("b"))
    return lb


class ExplainTests(SynchronousTestCase):
    def request(self, lb, headers=None, clientHost="127.0.0.1"):
        d = lb.agent(clientHost=clientHost).request(
            b"GET", b"http://example.com/x?y=1", Headers(headers or {})
        )
        lb.flush()
        response = self.successResultOf(d)
        body = responseBody(response)
        lb.flush()
        return response, self.successResultOf(body)

    def explain(self, lb, response):
        [requestId] = response.headers.getRawHeaders(b"x-request-id")
        return lb.balancer.recent.find(requestId)

    def test_proxied(self):
        """
        The explanation of a proxied request: listener, route and rule, the
        pick with its candidates, and the attempt.
        """
        lb = memoryBalancer(upstream="balance = hash $request_uri\n")
        response, body = self.request(lb)
        record = self.explain(lb, response)
        self.assertEqual(
            (record["listener"], record["method"], record["target"], record["status"]),
            ("default", "GET", "/x?y=1", 200),
        )
        self.assertEqual(record["route"]["name"], "r")
        self.assertEqual(record["route"]["rule"], "prefix")
        self.assertEqual(record["upstream"], "web")
        [attempt] = record["attempts"]
        self.assertEqual(attempt["outcome"], "succeeded")
        self.assertEqual(attempt["server"], {b"a\n": "10.0.0.1:80", b"b\n": "10.0.0.2:80"}[body])
        pick = attempt["pick"]
        self.assertEqual((pick["strategy"], pick["key"]), ("hash", "$request_uri"))
        self.assertEqual(
            pick["candidates"],
            [
                {"server": "10.0.0.1:80", "weight": 1, "effectiveWeight": 1.0, "health": "up"},
                {"server": "10.0.0.2:80", "weight": 1, "effectiveWeight": 1.0, "health": "up"},
            ],
        )
        self.assertIsNotNone(record["finished"])
        json.dumps(record)

    def test_drainedSkipped(self):
        """
        A drained server is skipped, and the explanation says so.
        """
        lb = memoryBalancer()
        pool = lb.balancer.pools["web"]
        pool.server("10.0.0.1:80").setState("drain")
        response, body = self.request(lb)
        self.assertEqual(body, b"b\n")
        [attempt] = self.explain(lb, response)["attempts"]
        self.assertEqual(attempt["pick"]["skipped"],
                         [{"server": "10.0.0.1:80", "reason": "draining"}])

    def test_gatekeeperRefusal(self):
        """
        A request the gatekeeper refuses is explained by its decision, with
        no route and no attempt.
        """
        lb = memoryBalancer(extra="[gatekeeper]\ndeny = 192.0.2.0/24\n")
        response, body = self.request(lb, clientHost="192.0.2.7")
        self.assertEqual(response.code, 403)
        record = self.explain(lb, response)
        self.assertEqual(record["status"], 403)
        self.assertEqual(record["attempts"], [])
        [decision] = record["gatekeeper"]
        self.assertEqual((decision["rule"], decision["action"], decision["status"]),
                         ("deny", "block", 403))

    def test_retried(self):
        """
        A request retried after its first server refused the connection:
        both attempts, the cause of the first, the server tried skipped in
        the second pick.
        """
        lb = memoryBalancer()
        del lb.backends["10.0.0.1:80"]
        d = lb.agent().request(b"GET", b"http://example.com/")
        lb.flush()
        lb.refuseConnection()
        lb.flush()
        response = self.successResultOf(d)
        self.successResultOf(responseBody(response))
        record = self.explain(lb, response)
        first, second = record["attempts"]
        self.assertEqual((first["server"], first["outcome"]), ("10.0.0.1:80", "failed"))
        self.assertIn("refused", first["cause"])
        self.assertEqual((second["server"], second["outcome"]), ("10.0.0.2:80", "succeeded"))
        self.assertIn({"server": "10.0.0.1:80", "reason": "already tried"},
                      second["pick"]["skipped"])
        status = lb.balancer.admin.status()["upstreams"]["web"]["servers"]
        self.assertEqual([(s["requests"], s["failures"]) for s in status], [(1, 1), (1, 0)])
        self.assertEqual(status[0]["health"]["phase"], "unavailable")
        self.assertIn("refused", status[0]["health"]["reason"])

    def test_unknownId(self):
        lb = memoryBalancer()
        self.assertIsNone(lb.balancer.recent.find(b"nope"))

    def test_ringBounded(self):
        """
        Only the latest requests are kept.
        """
        recent = RecentRequests(size=3)
        for number in range(5):
            passage = Passage(RequestView("127.0.0.1"), requestId=b"%d" % (number,))
            recent.keep(passage, 200, 0.0, "default")
        self.assertEqual(len(recent.entries), 3)
        self.assertIsNone(recent.find(b"1"))
        self.assertEqual(recent.find(b"4")["requestId"], "4")
        lb = memoryBalancer()
        self.assertEqual(lb.balancer.recent.entries.maxlen, 10000)

    def test_ringByBatches(self):
        """
        Records are kept by batches, each serialised once full: a record
        reads the same from its batch as before; the ring still keeps the
        latest records only, by any size, and forgets the batches of those
        it no longer keeps.
        """
        batch = RecentRequests.BATCH
        recent = RecentRequests(size=batch * 2 + 3)
        explained = {}
        for number in range(batch * 5 + 7):
            requestId = b"%d" % (number,)
            view = RequestView("127.0.0.1", method=b"GET", target=b"/%d" % (number,))
            recent.keep(Passage(view, requestId=requestId), 200, float(number), "default")
            explained[number] = recent.find(requestId)
            self.assertEqual(explained[number]["target"], "/%d" % (number,))
        self.assertEqual(len(recent.entries), batch * 2 + 3)
        first = batch * 5 + 7 - (batch * 2 + 3)
        self.assertIsNone(recent.find(b"%d" % (first - 1,)))
        for number in range(first, batch * 5 + 7):
            self.assertEqual(recent.find(b"%d" % (number,)), explained[number])
        self.assertLessEqual(len(recent._batches), 3)
        recent.resize(2)
        self.assertIsNone(recent.find(b"%d" % (first,)))
        self.assertEqual(recent.find(b"%d" % (batch * 5 + 6,)), explained[batch * 5 + 6])
        for number in range(batch * 2):
            recent.keep(Passage(RequestView("127.0.0.1"), requestId=b"x"), 200, 0.0, "default")
        self.assertLessEqual(len(recent._batches), 1)
        none = RecentRequests(size=0)
        for number in range(batch * 3):
            none.keep(Passage(RequestView("127.0.0.1"), requestId=b"x"), 200, 0.0, "default")
        self.assertEqual((len(none.entries), none._batches, none.find(b"x")), (0, {}, None))

    def test_ringKeepsNotTheRequest(self):
        """
        The ring keeps what an explanation needs, not the request itself
        (its view, headers and the pool's leases): ten thousand of those
        would weigh on memory and on every garbage collection.
        """
        recent = RecentRequests(size=3)
        view = RequestView("127.0.0.1", method=b"GET", target=b"/a", headers=[(b"a", b"b")])
        gone = weakref.ref(view)
        recent.keep(Passage(view, requestId=b"1"), 200, 5.0, "default")
        del view
        self.assertIsNone(gone())
        record = recent.find(b"1")
        self.assertEqual(
            (record["client"], record["method"], record["target"], record["finished"]),
            ("127.0.0.1", "GET", "/a", 5.0),
        )

    def test_header(self):
        """
        A request from loopback, or from a trusted proxy, carrying
        C{X-Manualb-Explain: 1} gets its explanation in a header, compact
        JSON on one line; another client does not.
        """
        lb = memoryBalancer(extra="[gatekeeper]\ntrusted_proxies = 192.0.2.0/24\n")
        response, body = self.request(lb)
        self.assertIsNone(response.headers.getRawHeaders(b"x-manualb-explain"))
        response, body = self.request(lb, {b"X-Manualb-Explain": [b"1"]})
        [value] = response.headers.getRawHeaders(b"x-manualb-explain")
        self.assertNotIn(b"\n", value)
        self.assertNotIn(b" ", value[:20])
        record = json.loads(value)
        self.assertEqual((record["route"]["name"], len(record["attempts"])), ("r", 1))
        response, body = self.request(lb, {b"X-Manualb-Explain": [b"1"]}, "192.0.2.9")
        self.assertTrue(response.headers.getRawHeaders(b"x-manualb-explain"))
        response, body = self.request(lb, {b"X-Manualb-Explain": [b"1"]}, "198.51.100.1")
        self.assertIsNone(response.headers.getRawHeaders(b"x-manualb-explain"))

    def test_headerOnRefusal(self):
        """
        A refused request gets its explanation too.
        """
        lb = memoryBalancer(extra="[gatekeeper]\ndeny = 127.0.0.2/32\n")
        response, body = self.request(lb, {b"X-Manualb-Explain": [b"1"]}, "127.0.0.2")
        self.assertEqual(response.code, 403)
        [value] = response.headers.getRawHeaders(b"x-manualb-explain")
        self.assertEqual(json.loads(value)["gatekeeper"][0]["rule"], "deny")

    def test_headerBounded(self):
        """
        The header is at most L{adminModule.EXPLAIN_HEADER_LIMIT} bytes.
        """
        self.patch(adminModule, "EXPLAIN_HEADER_LIMIT", 200)
        lb = memoryBalancer()
        response, body = self.request(lb, {b"X-Manualb-Explain": [b"1"]})
        [value] = response.headers.getRawHeaders(b"x-manualb-explain")
        self.assertLessEqual(len(value), 200)
        self.assertTrue(json.loads(value)["truncated"])


class AdminBoundsTests(SynchronousTestCase):
    """
    The admin listener holds what a client can make it keep: bodies past
    L{adminModule.MAX_BODY} drop the connection before they are read, and
    idle connections close.
    """

    def connect(self):
        clock = MemoryReactorClock()
        site = adminModule.adminSite(
            adminModule.AdminResource({}, RecentRequests(), clock), clock
        )
        protocol = site.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return clock, protocol, transport

    def test_declaredBodyTooLarge(self):
        clock, protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /api/upstreams/p/servers/a:1 HTTP/1.1\r\nHost: a\r\n"
            b"Content-Length: %d\r\n\r\n" % (adminModule.MAX_BODY + 1,)
        )
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_chunkedBodyTooLarge(self):
        clock, protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /api/upstreams/p/servers/a:1 HTTP/1.1\r\nHost: a\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (4096, b"x" * 4096)
        for _ in range(adminModule.MAX_BODY // 4096 + 1):
            protocol.dataReceived(chunk)
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_idleClosed(self):
        clock, protocol, transport = self.connect()
        clock.advance(adminModule.ADMIN_TIMEOUT + 1)
        self.assertTrue(transport.disconnecting or transport.disconnected)
