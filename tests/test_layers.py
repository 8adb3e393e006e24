"""
The one-way shape of manualb: each module imports only modules of lower
layers, with no import cycle of any kind (imports inside functions and under
C{TYPE_CHECKING} count), no module over 1000 lines, and Twisted's private
names used in the twisted.web adapter only.
"""

from __future__ import annotations

import ast
import os
import re

from twisted.trial.unittest import SynchronousTestCase

import manualb

#: The layers, lowest first.  A module may import modules of lower layers
#: only; within a layer, only the modules listed before it in the same row.
LAYERS: list[tuple[str, ...]] = [
    (
        "_version",
        "interfaces",
        "view",
        "records",
        "configkeys",
        "config",
        "syntax",
        "transports",
        "reactor",
        "forwarding",
        "proxyprotocol",
        "merging",
    ),
    (
        "rules",
        "accesslog",
        "tunnel",
        "responseparser",
        "bodies",
        "variables",
        "wafdecode",
        "headers",
        "compression",
        "errorpages",
        "routecontrols",
        "includes",
        "stickycookie",
        "acmeclient",
        "acmechallenges",
        "tlscontexts",
    ),
    (
        "handoff",
        "health",
        "selection",
        "metrics",
        "balancers",
        "routelimits",
        "urlmap",
        "stages",
        "hsts",
        "termination",
        "waf",
        "ratelimit",
        "gatekeeper",
        "redisstate",
        "sharedrates",
        "state",
        "autotls",
    ),
    (
        "pools",
        "exchange",
        "streams",
        "endpoints",
        "listensockets",
        "dashboard",
        "admin",
        "fleetadmin",
        "upstreamconfig",
        "configfile",
    ),
    (
        "web.splicing",
        "web.uploadsplicing",
        "web.tls",
        "web.h2input",
        "web.h2output",
        "web.h2request",
        "web.http2",
        "web.channel",
        "web.site",
        "web",
        "front.request",
        "front.http1",
        "front",
    ),
    ("reloading", "entry", "sites", "service"),
    (
        "supervisor",
        "tlstesting",
        "testing",
        "cartdemo",
        "demo",
        "tap",
        "worker",
        "__main__",
        "__init__",
    ),
]

#: Twisted names private to twisted.web that manualb reaches, all in the
#: twisted.web adapter, the package C{manualb.web}.
_PRIVATE = re.compile(
    r"(?<!manualb)\._(?:command|path|version|disconnected"
    r"|protocolUpgradeForWebsockets|dataBuffer|networkProducer|savedTimeOut"
    r"|raiseSynchronously|sslContextFactory)\b"
)
_ADAPTER = "web"

#: The write buffers of Twisted's connections, private to twisted.internet:
#: read by the adapter (splicing) and by L{manualb.transports.sendNow}, the
#: one other module allowed Twisted's private names; and the connector an
#: endpoint's factory keeps (L{manualb.transports.releaseConnector}).
_BUFFERS = re.compile(
    r"\._(?:tempDataBuffer|tempDataLen|writeDisconnected|aborting|connector)\b"
)
_SENDER = "transports"

_PACKAGE = os.path.dirname(manualb.__file__)


def _modules() -> dict[str, str]:
    """
    Every module of manualb by its name in the package (C{web.site}), a
    subpackage by its own (C{web}).
    """
    modules = {}
    for directory, _, files in os.walk(_PACKAGE):
        prefix = os.path.relpath(directory, _PACKAGE).replace(os.sep, ".")
        for name in files:
            if not name.endswith(".py"):
                continue
            module = name[:-3]
            if prefix != ".":
                module = prefix if module == "__init__" else prefix + "." + module
            modules[module] = os.path.join(directory, name)
    return modules


def importsOf(path: str, modules: set[str]) -> set[str]:
    """
    The manualb modules (of C{modules}) that the module at C{path} imports,
    anywhere in it.
    """
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read(), path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = node.module or ""
                names = [base] if base else [alias.name for alias in node.names]
                names = ["manualb." + name for name in names]
            elif node.module == "manualb":
                names = ["manualb." + alias.name for alias in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")[1:] if name.startswith("manualb.") else []
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts:
                found.add(".".join(parts))
    return found


def importGraph() -> dict[str, set[str]]:
    """
    Every manualb module and the manualb modules it imports.
    """
    modules = _modules()
    return {
        name: importsOf(path, set(modules)) - {name} for name, path in modules.items()
    }


def _rank() -> dict[str, tuple[int, int]]:
    return {
        module: (layer, position)
        for layer, row in enumerate(LAYERS)
        for position, module in enumerate(row)
    }


class LayerTests(SynchronousTestCase):
    def test_everyModuleHasALayer(self) -> None:
        """
        Every module of the package is placed in L{LAYERS}.
        """
        self.assertEqual(sorted(set(_modules()) - set(_rank())), [])

    def test_importsGoDown(self) -> None:
        """
        A module imports only modules placed before it, which also rules
        out every cycle.
        """
        rank = _rank()
        upward = [
            f"{module} imports {imported}"
            for module, imports in sorted(importGraph().items())
            for imported in sorted(imports)
            if module in rank and imported in rank and rank[imported] >= rank[module]
        ]
        self.assertEqual(upward, [])

    def test_leavesImportNothing(self) -> None:
        """
        The modules of the lowest layer import nothing of manualb but its
        version, and the data model its own way of declaring keys.
        """
        graph = importGraph()

        def allowed(module: str) -> set[str]:
            return {"_version", "configkeys"} if module == "config" else {"_version"}

        self.assertEqual(
            {module: graph[module] - allowed(module) for module in LAYERS[0] if module in graph},
            {module: set() for module in LAYERS[0] if module in graph},
        )

    def test_smallModules(self) -> None:
        """
        No module is over 1000 lines.
        """
        sizes = {}
        for name, path in _modules().items():
            with open(path, encoding="utf-8") as source:
                sizes[name] = sum(1 for _ in source)
        self.assertEqual({name: size for name, size in sizes.items() if size > 1000}, {})

    def test_privateTwistedNamesInOneModule(self) -> None:
        """
        Twisted's private names are used in the twisted.web adapter only,
        but for its connections' write buffers, which L{manualb.transports}
        reads too.
        """
        users = []
        for name, path in _modules().items():
            with open(path, encoding="utf-8") as source:
                text = source.read()
                inAdapter = name == _ADAPTER or name.startswith(_ADAPTER + ".")
                if inAdapter:
                    continue
                if _PRIVATE.search(text) or (name != _SENDER and _BUFFERS.search(text)):
                    users.append(name)
        self.assertEqual(users, [])

