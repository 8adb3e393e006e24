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
from twisted.web.client import Agent, readBody
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from manualb import LoadBalancer, parseConfig
from manualb.testing import NamedBackend, listenBackend, serverAddress

CONFIG = """
[manualb]
listen = tcp:0:interface=127.0.0.1
access_log = off

[upstream api]
servers =
    {a}
    {b}

[route api]
path = /api/
upstream = api
"""


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
    root.putChild(b"", Data(b"the application's home page\n", "text/plain"))
    root.putChild(b"api", balancer.resource)
    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(root))

    agent = Agent(reactor)
    base = b"http://127.0.0.1:%d" % (port.getHost().port,)
    for path in [b"/", b"/api/users", b"/api/users", b"/api/orders"]:
        response = yield agent.request(b"GET", base + path)
        body = yield readBody(response)
        print(path.decode(), "->", body.decode().strip())
    balancer.close()


if __name__ == "__main__":
    task.react(main)
