"""
manualb's tests.  C{MANUALB_TEST_FRONT_END=lean} or C{twisted} runs them with
that HTTP/1.1 front end where a listener does not choose one.
"""

import os

_frontEnd = os.environ.get("MANUALB_TEST_FRONT_END")
if _frontEnd:
    import manualb.front

    manualb.front.DEFAULT_FRONT_END = _frontEnd
