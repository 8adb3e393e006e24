"""
The ways users start manualb: the twistd plugin and C{python -m manualb}.
"""

import os
import re
import select
import signal
import subprocess
import sys
from importlib import metadata

from twisted.application.service import IServiceMaker
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.plugin import getPlugins
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, readBody

from manualb.testing import NamedBackend, listenBackend, serverAddress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]

BAD_CONFIG = """\
[manualb]
listen = tcp:0:interface=127.0.0.1
[upstream pool]
servers = 127.0.0.1:notaport
[route default]
path = /
upstream = pool
"""


def run(args, cwd=ROOT):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)


class PluginTests(TestCase):
    def test_pluginFound(self):
        """
        Twisted's plugin system finds the C{manualb} service maker, whose
        options take C{--config}.
        """
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("manualb", makers)
        options = makers["manualb"].options()
        options.parseOptions(["--config", "some.ini"])
        self.assertEqual(options["config"], "some.ini")

    def test_installedTwistdListsPlugin(self):
        """
        After a plain install, C{twistd --help} run away from the source tree
        lists manualb.
        """
        try:
            metadata.distribution("manualb")
        except metadata.PackageNotFoundError:
            raise SkipTest("manualb is not installed in this environment")
        elsewhere = self.mktemp()
        os.makedirs(elsewhere)
        result = run(TWISTD + ["--help"], cwd=elsewhere)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, r"\n\s+manualb\s+A load balancer")

    def test_badConfigStopsStartup(self):
        """
        A broken configuration file stops C{twistd manualb} with one line
        naming file, section and key, and no traceback.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(BAD_CONFIG)
        result = run(TWISTD + ["-n", "--pidfile=", "manualb", "--config", path])
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("%s, line 4: [upstream pool] servers: " % (path,), result.stderr)
        self.assertNotIn("Traceback", result.stderr + result.stdout)

    def test_check(self):
        """
        C{python -m manualb check FILE} exits 0 for a good file and 1, with
        the error, for a bad one.
        """
        bad = os.path.abspath(self.mktemp())
        with open(bad, "w") as f:
            f.write(BAD_CONFIG)
        good = os.path.abspath(self.mktemp())
        with open(good, "w") as f:
            f.write(BAD_CONFIG.replace("notaport", "8080"))
        result = run([sys.executable, "-m", "manualb", "check", good])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("is ok", result.stdout)
        result = run([sys.executable, "-m", "manualb", "check", bad])
        self.assertEqual(result.returncode, 1)
        self.assertIn("[upstream pool] servers: ", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_shippedConfigIsValid(self):
        """
        The commented example configuration passes the check.
        """
        result = run([sys.executable, "-m", "manualb", "check", "conf/lb.ini"])
        self.assertEqual(result.returncode, 0, result.stderr)


class Twistd(ProcessProtocol):
    """
    A twistd child process: C{ready} fires with the port its site listens
    on (logged once bound), C{ended} with its exit status.
    """

    def __init__(self):
        self.output = b""
        self.ready = Deferred()
        self.ended = Deferred()

    def outReceived(self, data):
        self.output += data
        found = re.search(rb"ProxySite starting on (\d+)", self.output)
        if found and not self.ready.called:
            self.ready.callback(int(found.group(1)))

    errReceived = outReceived

    def processEnded(self, reason):
        if not self.ready.called:
            self.ready.errback(Exception(self.output.decode("utf-8", "replace")))
        self.ended.callback((reason.value.exitCode, reason.value.signal))


class TwistdTests(TestCase):
    @inlineCallbacks
    def serve(self, *twistdOptions):
        """
        Run C{twistd [twistdOptions] -n manualb --config FILE}, proxy a
        request through it, stop it; return what it logged.
        """
        backend = yield listenBackend(reactor, NamedBackend("Backend A"))
        self.addCleanup(backend.stopListening)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = os.path.join(directory, "lb.ini")
        with open(config, "w") as f:
            f.write(
                "[manualb]\nlisten = tcp:0:interface=127.0.0.1\naccess_log = %s\n"
                "[upstream pool]\nservers = %s\n"
                "[route default]\npath = /\nupstream = pool\n"
                % (os.path.join(directory, "access.log"), serverAddress(backend))
            )
        process = Twistd()
        transport = reactor.spawnProcess(
            process,
            sys.executable,
            TWISTD + list(twistdOptions) + ["-n", "--pidfile=", "manualb", "--config", config],
            env=dict(os.environ),
            path=ROOT,
        )
        try:
            port = yield process.ready
            response = yield Agent(reactor).request(
                b"GET", b"http://127.0.0.1:%d/hello" % (port,)
            )
            body = yield readBody(response)
            self.assertEqual(body, b"Backend A\n")
        finally:
            if not process.ended.called:
                transport.signalProcess(signal.SIGTERM)
        exitCode = yield process.ended
        # A graceful stop on SIGTERM ends with status 0, as nginx's quit does.
        self.assertEqual(exitCode, (0, None), process.output)
        self.assertIn(b"Server Shut Down.", process.output)
        with open(os.path.join(directory, "access.log"), "rb") as f:
            self.assertIn(b'"GET /hello HTTP/1.1" 200 10', f.read())
        return process.output

    @inlineCallbacks
    def test_twistdServes(self):
        """
        C{twistd -n manualb --config FILE} serves the proxy until stopped,
        on manualb's reactor (L{manualb.reactor}) where there is epoll.
        """
        output = yield self.serve()
        if hasattr(select, "epoll"):
            self.assertIn(b"reactor class: manualb.reactor.LeanEPollReactor", output)

    @inlineCallbacks
    def test_twistdChosenReactor(self):
        """
        The reactor chosen with C{twistd --reactor} is the one manualb runs
        on.
        """
        output = yield self.serve("--reactor=poll")
        self.assertIn(b"reactor class: twisted.internet.pollreactor.PollReactor", output)


class ExampleTests(TestCase):
    def test_embeddedExampleRuns(self):
        """
        The embedding example of the README runs, and balances /api/ over
        its two backends while serving its own home page.
        """
        env = dict(os.environ, PYTHONPATH=ROOT)
        result = subprocess.run(
            [sys.executable, "examples/embedded.py"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            result.stdout.splitlines(),
            [
                "/ -> the application's home page",
                "/api/users -> api server A",
                "/api/users -> api server B",
                "/api/orders -> api server A",
            ],
        )


class BadKeyTests(TestCase):
    def test_badKeyFile(self):
        """
        A key file that exists but holds no key fails the check and start-up
        with one line naming the file, no traceback.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        from manualb.tlstesting import makeCA, writeTLSFiles

        certificate, key = writeTLSFiles(directory, makeCA("test CA"), ["www.example.com"])
        with open(key, "w") as f:
            f.write("not a key\n")
        path = os.path.join(directory, "lb.ini")
        with open(path, "w") as f:
            f.write(
                "[manualb]\nlisten = sni:0:interface=127.0.0.1\n"
                f"[tls]\ncertificates = www.example.com {certificate} {key}\n"
                "[upstream u]\nservers = 127.0.0.1:9\n[route r]\npath = /\nupstream = u\n"
            )
        for command in [
            [sys.executable, "-m", "manualb", "check", path],
            TWISTD + ["-n", "--pidfile=", "manualb", "--config", path],
        ]:
            result = run(command)
            self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
            self.assertIn(key, result.stderr)
            self.assertNotIn("Traceback", result.stderr + result.stdout)


class PortInUseTests(TestCase):
    def test_portInUse(self):
        """
        A listen port that is taken stops twistd with one line, no traceback.
        """
        import socket

        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(
                f"[manualb]\nlisten = tcp:{port}:interface=127.0.0.1\n"
                "[upstream u]\nservers = 127.0.0.1:9\n[route r]\npath = /\nupstream = u\n"
            )
        result = run(TWISTD + ["-n", "--pidfile=", "manualb", "--config", path])
        self.assertEqual(result.returncode, 1)
        output = result.stdout + result.stderr
        self.assertIn("manualb: Couldn't listen on 127.0.0.1:%d" % (port,), output)
        self.assertNotIn("Traceback", output)


class CollectorTests(TestCase):
    def test_startUpObjectsFrozen(self):
        """
        Once twistd's service has started, what start-up made is out of the
        garbage collector's reach, so that full collections stay short.
        """
        import gc

        from twisted.application.service import MultiService

        from manualb.tap import _ExitIfCannotListen

        inner = MultiService()
        inner.balancer = None
        service = _ExitIfCannotListen(inner)
        self.addCleanup(gc.unfreeze)
        gc.unfreeze()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertGreater(gc.get_freeze_count(), 0)


class NothingToListenOnTests(TestCase):
    """
    A file that listens on nothing (fine for an embedder) is refused by the
    commands that serve or check a file for serving.
    """

    def test_refused(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("[upstream pool]\nservers = 127.0.0.1:8080\n[route default]\n")
            f.write("path = /\nupstream = pool\n[manualb]\naccess_log = -\n")
        expected = "%s, line 6: [manualb] listen: nothing to listen on" % (path,)
        result = run([sys.executable, "-m", "manualb", "check", path])
        self.assertEqual(result.returncode, 1)
        self.assertIn(expected, result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        result = run(TWISTD + ["-n", "--pidfile=", "manualb", "--config", path])
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(expected, result.stderr)
        self.assertNotIn("Traceback", result.stderr + result.stdout)
