"""
The README's code examples run, and so do the files of C{examples/},
without a warning.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types

from twisted.internet import reactor
from twisted.trial.reporter import TestResult
from twisted.trial.runner import TestLoader
from twisted.trial.unittest import SynchronousTestCase, TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readmeBlocks() -> list[str]:
    """
    The code of each C{.. code-block:: python} of README.rst.
    """
    with open(os.path.join(ROOT, "README.rst"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks = []
    for index, line in enumerate(lines):
        if line.strip() != ".. code-block:: python":
            continue
        body = []
        for following in lines[index + 1 :]:
            if following.strip() and not following.startswith(" "):
                break
            body.append(following)
        blocks.append(textwrap.dedent("\n".join(body)).strip() + "\n")
    return blocks


def load(code: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(code, "README.rst:" + name, "exec"), module.__dict__)
    return module


def block(containing: str) -> str:
    [found] = [code for code in readmeBlocks() if containing in code]
    return found


class ReadmeTests(TestCase):
    def test_embedding(self):
        """
        The embedding example mounts the balancer in a plain Site, gets an
        answer through it, and closes.
        """
        module = load(block("root.putChild(b\"api\", balancer.resource)"), "embedding")
        return module.main(reactor)

    def test_testing(self):
        """
        The test of the testing section passes.
        """
        module = load(block("class BalancingTests"), "readme_testing")
        suite = TestLoader().loadClass(module.BalancingTests)
        result = TestResult()
        suite.run(result)
        self.assertEqual(result.testsRun, 2)
        self.assertTrue(result.wasSuccessful(), result.errors + result.failures)


class ExampleFileTests(SynchronousTestCase):
    def test_embeddedWithoutWarnings(self):
        """
        examples/embedded.py runs with warnings made errors, and writes
        nothing to stderr.
        """
        env = dict(os.environ, PYTHONPATH=ROOT)
        result = subprocess.run(
            [sys.executable, "-W", "error", "examples/embedded.py"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertEqual(len(result.stdout.splitlines()), 4)
