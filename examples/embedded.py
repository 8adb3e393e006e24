"""
manualb inside another Twisted application.

The application serves its own pages and mounts manualb's proxy under /api/,
in its own Site; requests there are balanced over two backends.  Run it with

    python examples/embedded.py

It starts the two backends, makes a few requests to show the balancing, and
exits.
"""

from twisted.internet import task
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import Site

from manualb import LoadBalancer, parseConfig
from manualb.testing import NamedBackend, listenBackend, responseBody, serverAddress

# The application's own Site serves the balancer, and logs its requests
# (one line each, in the Site's format); the balancer listens nowhere.
CONFIG = """
[upstream api]
servers =
    {a}
    {b}

[route api]
path = /api/
upstream = api
"""


class Home(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/plain")
        return b"the application's home page\n"


@inlineCallbacks
def main(reactor):
    # Two backends to balance over (in real life: your API servers).
    a = yield listenBackend(reactor, NamedBackend("api server A"))
    b = yield listenBackend(reactor, NamedBackend("api server B"))
    config = parseConfig(CONFIG.format(a=serverAddress(a), b=serverAddress(b)))

    # The application's own resource tree, with manualb mounted at /api/.
    balancer = LoadBalancer(config, reactor)
    balancer.start()
    root = Resource()
    root.putChild(b"", Home())
    root.putChild(b"api", balancer.resource)
    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(root))

    agent = Agent(reactor)
    base = b"http://127.0.0.1:%d" % (port.getHost().port,)
    for path in [b"/", b"/api/users", b"/api/users", b"/api/orders"]:
        response = yield agent.request(b"GET", base + path)
        body = yield responseBody(response)
        print(path.decode(), "->", body.decode().strip())
    yield port.stopListening()
    # Fires once the balancer's connections to the backends are closed.
    yield balancer.close()


if __name__ == "__main__":
    task.react(main)
