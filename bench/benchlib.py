"""
What the bench scripts share: free ports on loopback and publishing a run's
report and figures.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def publish(results: dict, text: str, path: Path) -> None:
    """
    Print the report C{text} and write it, with the figures of C{results},
    as JSON to C{path}.
    """
    print()
    print(text)
    results["report"] = text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {path}")
