"""
C{include = conf.d/*.ini} and C{${NAME}} in the configuration file: the
files are read and merged, variables replaced, and every mistake named by
the file and line it is in, by the start, C{check} and a reload alike.
"""

from __future__ import annotations

import os
import sys
from io import StringIO

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody

from manualb.__main__ import main
from manualb.config import ConfigError
from manualb.configfile import loadConfig, parseConfig
from manualb.includes import compose, substitute
from manualb.service import LoadBalancer
from manualb.testing import NamedBackend, listenBackend, serverAddress

MAIN = """\
[manualb]
listen = tcp:0:interface=127.0.0.1
access_log = off
include = conf.d/*.ini

[route default]
path = /
upstream = app
"""

UPSTREAM = """\
; the servers
[upstream app]
servers = 127.0.0.1:9
"""


class Files:
    """
    A directory of configuration files for one test.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.directory = os.path.abspath(case.mktemp())
        os.makedirs(os.path.join(self.directory, "conf.d"))

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path


class IncludeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.files = Files(self)

    def assertError(self, path: str, message: str) -> ConfigError:
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(str(error), message)
        return error

    def test_merged(self) -> None:
        """
        The sections of the included files join those of the main file, in
        sorted order of the files.
        """
        path = self.files.write("lb.ini", MAIN)
        self.files.write("conf.d/20-b.ini", "[upstream b]\nservers = 127.0.0.1:11\n")
        self.files.write("conf.d/10-app.ini", UPSTREAM)
        config = loadConfig(path)
        self.assertEqual(list(config.upstreams), ["app", "b"])
        self.assertEqual(config.routes[0].upstream, "app")

    def test_emptyGlob(self) -> None:
        """
        A glob that matches nothing includes nothing.
        """
        path = self.files.write(
            "lb.ini", MAIN.replace("conf.d/*.ini", "conf.d/*.ini\n    none/*.ini")
            + UPSTREAM
        )
        self.assertEqual(list(loadConfig(path).upstreams), ["app"])

    def test_missingFile(self) -> None:
        """
        A file named without glob characters must be there.
        """
        path = self.files.write("lb.ini", MAIN.replace("conf.d/*.ini", "up.ini"))
        missing = os.path.join(self.files.directory, "up.ini")
        self.assertError(
            path,
            f"{path}, line 4: [manualb] include: cannot include {missing}: no such file",
        )

    def test_sectionTwice(self) -> None:
        """
        A section given in two files names both files and lines.
        """
        path = self.files.write("lb.ini", MAIN + "\n" + UPSTREAM)
        other = self.files.write("conf.d/app.ini", "\n" + UPSTREAM)
        self.assertError(
            path,
            f"{other}, line 3: [upstream app]: section defined twice: "
            f"in {path}, line 11, and here",
        )

    def test_loop(self) -> None:
        """
        A file that includes itself (a glob that matches it) is refused.
        """
        path = self.files.write("lb.ini", MAIN.replace("conf.d/*.ini", "*.ini") + UPSTREAM)
        self.assertError(
            path,
            f"{path}, line 4: [manualb] include: {path} includes itself "
            f"(through {os.path.realpath(path)})",
        )

    def test_errorInIncludedFile(self) -> None:
        """
        A mistake in an included file names that file and its line.
        """
        path = self.files.write("lb.ini", MAIN)
        other = self.files.write(
            "conf.d/app.ini", UPSTREAM + "conect_timeout = 5s\n"
        )
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(error.source, other)
        self.assertEqual(error.line, 4)
        self.assertIn("did you mean 'connect_timeout'?", str(error))

    def test_keysBeforeSection(self) -> None:
        """
        An included file starts with a section: keys before it would join
        the last section of the file before.
        """
        path = self.files.write("lb.ini", MAIN + UPSTREAM)
        other = self.files.write("conf.d/x.ini", "\nkeepalive = 2\n")
        self.assertError(
            path,
            f"{other}, line 2: 'keepalive = 2' comes before any section header "
            f"(an included file starts with a section, such as [upstream NAME])",
        )

    def test_includeFromText(self) -> None:
        """
        A text that is not read from a file cannot include.
        """
        error = self.assertRaises(ConfigError, parseConfig, MAIN + UPSTREAM)
        self.assertEqual(
            str(error),
            "<string>: [manualb] include: includes are read from a file only (loadConfig)",
        )

    def test_includeOutsideMain(self) -> None:
        """
        C{include} belongs in C{[manualb]}.
        """
        path = self.files.write("lb.ini", MAIN + UPSTREAM + "include = x.ini\n")
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(error.line, 12)
        self.assertEqual(error.key, "include")

    def test_check(self) -> None:
        """
        C{python -m manualb check} reads the includes too, and names the
        included file at fault.
        """
        path = self.files.write("lb.ini", MAIN)
        other = self.files.write("conf.d/app.ini", UPSTREAM + "balance = roundrobin\n")
        out, err = StringIO(), StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.assertEqual(main(["check", path]), 1)
        first = err.getvalue().splitlines()[0]
        self.assertTrue(first.startswith(f"manualb: {other}, line 4: [upstream app] balance:"), first)
        self.files.write("conf.d/app.ini", UPSTREAM)
        out.truncate(0)
        self.assertEqual(main(["check", path]), 0, err.getvalue())


class SubstituteTests(SynchronousTestCase):
    def test_replaced(self) -> None:
        """
        C{${NAME}} takes the variable's value; C{$${} is a literal C{${};
        nginx's C{$variables} and comments are left alone.
        """
        text = (
            "[manualb]\nlog_format = $remote_addr ${A} $${B} ; ${UNSET}\n"
            "# ${UNSET}\n"
        )
        self.assertEqual(
            substitute(text, "f", {"A": "x"}),
            "[manualb]\nlog_format = $remote_addr x ${B} ; ${UNSET}\n# ${UNSET}\n",
        )

    def test_unset(self) -> None:
        error = self.assertRaises(
            ConfigError,
            substitute,
            "[upstream app]\nservers =\n    127.0.0.1:${PORT}\n",
            "lb.ini",
            {},
        )
        self.assertEqual(
            str(error),
            "lb.ini, line 3: [upstream app] servers: environment variable PORT "
            "is not set (write $${ for a literal ${)",
        )

    def test_malformed(self) -> None:
        for reference in ("${A", "${}", "${A-B}"):
            error = self.assertRaises(
                ConfigError, substitute, f"[manualb]\nx = {reference}\n", "f", {"A": "1"}
            )
            self.assertEqual(error.line, 2)
            self.assertIn("bad reference", error.message)

    def test_lineBreak(self) -> None:
        error = self.assertRaises(
            ConfigError, substitute, "[manualb]\nx = ${A}\n", "f", {"A": "1\n[x]"}
        )
        self.assertEqual(error.message, "environment variable A holds a line break")

    def test_fromEnvironment(self) -> None:
        """
        L{loadConfig} reads the process's environment.
        """
        files = Files(self)
        path = files.write("lb.ini", MAIN.replace("include = conf.d/*.ini\n", "") +
                           UPSTREAM.replace("9", "${MANUALB_TEST_PORT}"))
        self.patch(os, "environ", {**os.environ, "MANUALB_TEST_PORT": "8089"})
        config = loadConfig(path)
        self.assertEqual(config.upstreams["app"].servers[0].address.port, 8089)

    def test_lines(self) -> None:
        """
        The composed text maps each of its lines to its file and line.
        """
        files = Files(self)
        path = files.write("lb.ini", MAIN)
        other = files.write("conf.d/a.ini", UPSTREAM)
        composed = compose(path)
        self.assertEqual(composed.sources, [path, other])
        self.assertEqual(composed.origin(2), (path, 2))
        self.assertEqual(composed.origin(10), (other, 1))
        self.assertEqual(composed.origin(12), (other, 3))


class IncludeEndToEndTests(TestCase):
    @inlineCallbacks
    def test_servesAndReloads(self):
        """
        A balancer started from a file with includes serves the upstream of
        the included file over real sockets, and a reload reads the
        included files again.
        """
        portA = yield listenBackend(reactor, NamedBackend("A"))
        self.addCleanup(portA.stopListening)
        portB = yield listenBackend(reactor, NamedBackend("B"))
        self.addCleanup(portB.stopListening)
        files = Files(self)
        path = files.write("lb.ini", MAIN)
        files.write(
            "conf.d/app.ini",
            UPSTREAM.replace("127.0.0.1:9", "${MANUALB_TEST_SERVER}"),
        )
        self.patch(os, "environ", {**os.environ, "MANUALB_TEST_SERVER": serverAddress(portA)})
        balancer = LoadBalancer(loadConfig(path), reactor)
        self.addCleanup(balancer.close)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(balancer.site)
        self.addCleanup(port.stopListening)
        url = b"http://127.0.0.1:%d/" % (port.getHost().port,)
        agent = Agent(reactor)
        body = yield readBody((yield agent.request(b"GET", url)))
        self.assertEqual(body, b"A\n")
        files.write("conf.d/app.ini", UPSTREAM.replace("127.0.0.1:9", serverAddress(portB)))
        applied, message = balancer.reloadFile()
        self.assertTrue(applied, message)
        body = yield readBody((yield agent.request(b"GET", url)))
        self.assertEqual(body, b"B\n")
