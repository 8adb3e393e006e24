"""
What a running manualb carries: the modules of features its configuration
does not use (the WAF, automatic HTTPS, the admin listener and its metrics,
shared state, TCP streams, workers) are not loaded, so that they cost no
memory.  Each feature imports its modules where its configuration builds it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Starts manualb as C{twistd manualb --config FILE} builds it, once its
#: listeners listen prints the names of the modules loaded, and stops.
_START = """\
import json, sys
from twisted.internet import reactor
from manualb.tap import Options, makeService

options = Options()
options.parseOptions(["--config", sys.argv[1]])
service = makeService(options)
service.privilegedStartService()
service.startService()

def report():
    sys.stdout.write(json.dumps(sorted(sys.modules)))
    reactor.stop()

reactor.callWhenRunning(report)
reactor.run()
"""

PLAIN = """\
[manualb]
listen = tcp:0:interface=127.0.0.1
access_log = off

[upstream backends]
servers =
    127.0.0.1:1
    127.0.0.1:2

[route default]
path = /
upstream = backends
"""

#: The modules of the features L{PLAIN} leaves out, with what they bring.
OPTIONAL = {
    "the WAF": ("manualb.waf", "manualb.wafdecode", "libinjection"),
    "automatic HTTPS": (
        "manualb.autotls", "manualb.acmeclient", "manualb.acmechallenges", "acme", "josepy",
    ),
    "the admin listener": (
        "manualb.admin", "manualb.dashboard", "manualb.metrics", "prometheus_client",
    ),
    "shared state": ("manualb.state", "manualb.sharedrates", "manualb.redisstate", "txredisapi"),
    "TCP streams": ("manualb.streams",),
    "HTTP/2": (
        "manualb.web.http2", "manualb.web.h2input", "manualb.web.h2output",
        "manualb.web.h2request",
    ),
    "workers": ("manualb.supervisor", "manualb.fleetadmin", "manualb.worker"),
}


class FootprintTests(TestCase):
    def loadedBy(self, config: str) -> set[str]:
        """
        The modules loaded by a manualb started with C{config}.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(config)
        result = subprocess.run(
            [sys.executable, "-c", _START, path],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        return set(json.loads(result.stdout))

    def assertNoOptionalFeature(self, config: str) -> None:
        loaded = self.loadedBy(config)
        self.assertIn("manualb.service", loaded)
        self.assertEqual(
            {
                feature: sorted(loaded.intersection(modules))
                for feature, modules in OPTIONAL.items()
            },
            {feature: [] for feature in OPTIONAL},
        )

    def test_plainListenerLoadsNoOptionalFeature(self) -> None:
        """
        A plain configuration (one TCP listener, no WAF, no admin listener,
        no TLS, no shared state, no stream, one process) loads none of the
        optional features' modules.
        """
        self.assertNoOptionalFeature(PLAIN)

    def test_twistedFrontEnd(self) -> None:
        """
        Neither does it on twisted.web's front end.
        """
        self.assertNoOptionalFeature(
            PLAIN.replace("access_log = off\n", "access_log = off\nfront_end = twisted\n")
        )

    def test_featuresLoadTheirModules(self) -> None:
        """
        A configuration with a WAF, an admin listener and a TCP stream loads
        their modules.
        """
        loaded = self.loadedBy(
            PLAIN.replace(
                "access_log = off\n", "access_log = off\nadmin = tcp:port=0:interface=127.0.0.1\n"
            )
            + "\n[gatekeeper]\nwaf = detect\n"
            + "\n[stream tcp]\nlisten = tcp:0:interface=127.0.0.1:backlog=8\nupstream = backends\n"
        )
        for module in ("manualb.waf", "manualb.admin", "manualb.metrics", "manualb.streams"):
            self.assertIn(module, loaded)
