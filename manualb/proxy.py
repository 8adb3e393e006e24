"""
The proxy's names as they were first published: the twisted.web front end
is now L{manualb.web}, the per-request exchange L{manualb.exchange}.
"""

from manualb.web import (
    LINGERING_TIME,
    ProxyResource,
    ProxySite,
    StreamingRequest,
    errorPage,
)

__all__ = ["LINGERING_TIME", "ProxyResource", "ProxySite", "StreamingRequest", "errorPage"]
