"""
C{python -m manualb check FILE} refuses whatever would stop C{twistd
manualb}, naming the file and line (and the name a misspelt one was meant
to be); the files of C{contrib/} and the operations guide.
"""

import os
import signal
import socket
import subprocess
import sys
from io import StringIO

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody

from manualb import waf
from manualb.__main__ import BIND_NOTE, main
from manualb.testing import NamedBackend, listenBackend, serverAddress

from .test_plugin import ROOT, TWISTD, Twistd

UPSTREAM = "[upstream app]\nservers = 127.0.0.1:9\n"
ROUTE = "[route default]\npath = /\nupstream = app\n"


class CheckTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "lb.ini")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def check(self, path: str) -> tuple[int, str, str]:
        """
        Run C{python -m manualb check path} in this process.
        """
        out, err = StringIO(), StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        status = main(["check", path])
        return status, out.getvalue(), err.getvalue()

    def assertRefused(self, text: str, line: int, message: str) -> str:
        """
        The file of C{text} fails the check with C{message} at C{line}.
        """
        path = self.write(text)
        status, out, err = self.check(path)
        self.assertEqual(status, 1, out + err)
        self.assertEqual(out, "")
        self.assertEqual(
            err,
            f"manualb: {path}, line {line}: {message}\n"
            f"manualb: configuration file {path} test failed\n",
        )
        return path

    def test_portOutOfRange(self) -> None:
        """
        A port Twisted parses but no socket can bind (which made the start
        end with a traceback) is refused.
        """
        self.assertRefused(
            "[manualb]\nlisten =\n    tcp:8080\n    tcp:70000\n" + UPSTREAM + ROUTE,
            4,
            "[manualb] listen: cannot parse endpoint 'tcp:70000' "
            "(port 70000 out of range 0..65535)",
        )

    def test_portOutOfRangeInStream(self) -> None:
        self.assertRefused(
            "[stream db]\nupstream = app\nlisten = tcp6:port=65536\n" + UPSTREAM,
            3,
            "[stream db] listen: cannot parse endpoint 'tcp6:port=65536' "
            "(port 65536 out of range 0..65535)",
        )

    def test_unixSocketDirectoryMissing(self) -> None:
        missing = os.path.abspath(self.mktemp())
        self.assertRefused(
            f"[manualb]\nlisten = unix:{missing}/lb.sock\n" + UPSTREAM + ROUTE,
            2,
            f"[manualb] listen: endpoint 'unix:{missing}/lb.sock': directory "
            f"{missing} does not exist",
        )

    def test_accessLogDirectoryMissing(self) -> None:
        missing = os.path.abspath(self.mktemp())
        self.assertRefused(
            f"[manualb]\nlisten = tcp:8080\naccess_log = {missing}/access.log\n"
            + UPSTREAM
            + ROUTE,
            3,
            f"[manualb] access_log: cannot open {missing}/access.log: "
            f"No such file or directory",
        )

    def test_accessLogIsADirectory(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.assertRefused(
            f"[manualb]\nlisten = tcp:8080\naccess_log = {directory}\n" + UPSTREAM + ROUTE,
            3,
            f"[manualb] access_log: cannot open {directory}: Is a directory",
        )

    def test_accessLogNotWritable(self) -> None:
        if os.getuid() == 0:
            raise SkipTest("root may write anywhere")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        os.chmod(directory, 0o555)
        self.addCleanup(os.chmod, directory, 0o755)
        self.assertRefused(
            f"[manualb]\nlisten = tcp:8080\naccess_log = {directory}/a.log\n"
            + UPSTREAM
            + ROUTE,
            3,
            f"[manualb] access_log: cannot open {directory}/a.log: Permission denied",
        )

    def test_accessLogNotCreated(self) -> None:
        """
        A good access log passes, and the check creates no file.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        log = os.path.join(directory, "access.log")
        path = self.write(
            f"[manualb]\nlisten = tcp:8080\naccess_log = {log}\n" + UPSTREAM + ROUTE
        )
        self.assertEqual(self.check(path)[0], 0)
        self.assertFalse(os.path.exists(log))

    def test_keyDoesNotMatch(self) -> None:
        """
        Certificates and keys load as the start loads them: a key that is
        not the certificate's is refused at the line of C{certificates}
        that names it.
        """
        from manualb.tlstesting import makeCA, writeTLSFiles

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        ca = makeCA("test CA")
        good, goodKey = writeTLSFiles(directory, ca, ["a.example.com"])
        other, otherKey = writeTLSFiles(directory, ca, ["b.example.com"])
        path = self.write(
            "[manualb]\nlisten = sni:8443\n[tls]\ncertificates =\n"
            f"    a.example.com {good} {goodKey}\n"
            f"    b.example.com {other} {goodKey}\n" + UPSTREAM + ROUTE
        )
        status, out, err = self.check(path)
        self.assertEqual(status, 1)
        self.assertTrue(
            err.startswith(f"manualb: {path}, line 4: [tls] certificates: "), err
        )
        self.assertIn(goodKey, err)

    def test_wafNeedsExtra(self) -> None:
        """
        C{waf = block} without the optional extra it needs is refused.
        """
        self.patch(waf, "libinjection", None)
        self.assertRefused(
            "[manualb]\nlisten = tcp:8080\n[gatekeeper]\n\nwaf = block\n" + UPSTREAM + ROUTE,
            5,
            f"[gatekeeper] waf: waf = block {waf.UNAVAILABLE}",
        )

    def test_misspeltSection(self) -> None:
        self.assertRefused(
            "[manualb]\nlisten = tcp:8080\n\n[upstrem app]\nservers = 127.0.0.1:9\n"
            + ROUTE,
            4,
            "[upstrem app]: unknown section (known sections: [manualb], "
            "[gatekeeper], [upstream NAME], [route NAME], [listener NAME], "
            "[stream NAME], [tls], [acme]); did you mean [upstream app]?",
        )

    def test_misspeltKey(self) -> None:
        self.assertRefused(
            "[manualb]\nlisten = tcp:8080\n" + UPSTREAM + "conect_timeout = 3s\n" + ROUTE,
            5,
            "[upstream app] conect_timeout: unknown key (known keys: servers, "
            "balance, connect_timeout, read_timeout, send_timeout, keepalive, "
            "keepalive_timeout, keepalive_requests, passive_fail_on, tries, "
            "retry_timeout, retry_body_limit, health_check, tunnel_timeout, "
            "tls_verify, tls_ca, tls_name); did you mean 'connect_timeout'?",
        )

    def test_misspeltServerOption(self) -> None:
        """
        An error in one line of C{servers} names that line.
        """
        self.assertRefused(
            "[manualb]\nlisten = tcp:8080\n[upstream app]\nservers =\n"
            "    127.0.0.1:8001 weight=2\n"
            "    127.0.0.1:8002 max_fail=3  ; the second\n" + ROUTE,
            6,
            "[upstream app] servers: unknown option 'max_fail' in "
            "'127.0.0.1:8002 max_fail=3' (known options: weight, max_fails, "
            "fail_timeout, backup, down, slow_start, max_conns, route); did you mean "
            "'max_fails'?",
        )

    def test_semanticError(self) -> None:
        """
        Errors found once the whole file is read name the line too.
        """
        self.assertRefused(
            "[manualb]\nlisten = tcp:8080\n" + UPSTREAM
            + "[route default]\npath = /\n; which pool\nupstream = ap\n",
            8,
            "[route default] upstream: no section [upstream ap] (defined "
            "upstreams: app)",
        )

    def test_missingKey(self) -> None:
        """
        A required key that is missing: the line of its section.
        """
        self.assertRefused(
            "[manualb]\nlisten = tcp:8080\n" + ROUTE + "\n[upstream app]\nbalance = random\n",
            7,
            "[upstream app] servers: missing required key",
        )

    def test_systemdAccepted(self) -> None:
        """
        C{systemd:} endpoints pass without the sockets systemd would hand
        over, and the output says what was not checked.
        """
        path = self.write(
            "[manualb]\nlisten =\n    systemd:domain=INET:index=0\n"
            "    systemd:domain=INET6:name=https\n" + UPSTREAM + ROUTE
        )
        status, out, err = self.check(path)
        self.assertEqual((status, err), (0, ""))
        self.assertIn(
            "manualb: systemd:domain=INET:index=0, systemd:domain=INET6:name=https: "
            "taken from systemd at start (socket activation), so only the syntax "
            "was checked\n",
            out,
        )

    def test_systemdSyntax(self) -> None:
        for endpoint, problem in [
            ("systemd:domain=INET", "systemd: takes exactly one of index=N or name=NAME"),
            ("systemd:domain=INET:index=0:name=a",
             "systemd: takes exactly one of index=N or name=NAME"),
            ("systemd:domain=IPX:index=0",
             "unknown domain 'IPX': expected INET, INET6 or UNIX"),
            ("systemd:domain=INET:index=x", "index must be a whole number from 0, got 'x'"),
            ("systemd:index=0", "systemd: needs domain=INET, INET6 or UNIX"),
        ]:
            self.assertRefused(
                f"[manualb]\nlisten = {endpoint}\n" + UPSTREAM + ROUTE,
                2,
                f"[manualb] listen: cannot parse endpoint {endpoint!r} ({problem})",
            )

    def test_bindNote(self) -> None:
        """
        A good file passes with a note that no address was bound.
        """
        path = self.write("[manualb]\nlisten = tcp:8080\n" + UPSTREAM + ROUTE)
        status, out, err = self.check(path)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out,
            f"manualb: configuration file {path} is ok: 1 HTTP endpoint(s), "
            f"0 stream(s), 1 upstream(s), 1 route(s)\n{BIND_NOTE}\n",
        )
        self.assertEqual(
            BIND_NOTE,
            "manualb: check binds no address: one that is in use, not local or "
            "not allowed (a port below 1024 without privileges) stops only the start",
        )


class StartTests(SynchronousTestCase):
    def test_startRefusesPortOutOfRange(self) -> None:
        """
        The start refuses what the check refuses, with the same line instead
        of a traceback.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("[manualb]\nlisten = tcp:99999\n" + UPSTREAM + ROUTE)
        result = subprocess.run(
            TWISTD + ["-n", "--pidfile=", "manualb", "--config", path],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn(
            f"manualb: {path}, line 2: [manualb] listen: cannot parse endpoint "
            f"'tcp:99999' (port 99999 out of range 0..65535)",
            result.stderr,
        )
        self.assertNotIn("Traceback", result.stdout + result.stderr)


class SocketActivationTests(TestCase):
    @inlineCallbacks
    def test_systemdEndpointServes(self):
        """
        Given a listening socket as systemd hands it over (descriptor 3,
        C{LISTEN_FDS}, C{LISTEN_PID}), a C{systemd:} listen line serves on it.
        """
        backend = yield listenBackend(reactor, NamedBackend("Backend A"))
        self.addCleanup(backend.stopListening)
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listening.close)
        listening.bind(("127.0.0.1", 0))
        listening.listen(16)
        port = listening.getsockname()[1]
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(
                "[manualb]\nlisten = systemd:domain=INET:index=0\naccess_log = -\n"
                "[upstream pool]\nservers = %s\n"
                "[route default]\npath = /\nupstream = pool\n" % (serverAddress(backend),)
            )
        command = " ".join(
            ["exec", *(f"'{word}'" for word in [sys.executable] + TWISTD[1:])]
            + ["-n", "--pidfile=", "manualb", "--config", f"'{config}'"]
        )
        environment = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES="manualb.socket")
        process = Twistd()
        transport = reactor.spawnProcess(
            process,
            "/bin/sh",
            ["/bin/sh", "-c", "LISTEN_PID=$$; export LISTEN_PID; " + command],
            env=environment,
            path=ROOT,
            childFDs={0: "w", 1: "r", 2: "r", 3: listening.fileno()},
        )
        try:
            yield process.ready
            response = yield Agent(reactor).request(
                b"GET", b"http://127.0.0.1:%d/hello" % (port,)
            )
            body = yield readBody(response)
            self.assertEqual(body, b"Backend A\n")
        finally:
            if transport.pid is not None:
                transport.signalProcess(signal.SIGTERM)
        yield process.ended


class ContribTests(SynchronousTestCase):
    def test_filesExist(self) -> None:
        """
        The systemd unit, the socket-activation example and the operations
        guide are there; the unit restarts on failure and reloads by HUP.
        """
        for name in ["contrib/manualb.service", "contrib/manualb.socket",
                     "contrib/lb-systemd.ini", "docs/operations.rst"]:
            self.assertTrue(os.path.isfile(os.path.join(ROOT, name)), name)
        with open(os.path.join(ROOT, "contrib/manualb.service")) as f:
            unit = f.read()
        self.assertIn("\nRestart=on-failure\n", unit)
        self.assertIn(" -n --pidfile= ", unit)
        self.assertIn("\nExecReload=/bin/kill -HUP $MAINPID\n", unit)
        with open(os.path.join(ROOT, "README.rst")) as f:
            readme = f.read()
        self.assertIn("docs/operations.rst", readme)
        self.assertIn("twistd -n --pidfile= manualb --config conf/lb.ini", readme)

    def test_contribConfigPasses(self) -> None:
        out, err = StringIO(), StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.assertEqual(main(["check", os.path.join(ROOT, "contrib/lb-systemd.ini")]), 0, err.getvalue())
