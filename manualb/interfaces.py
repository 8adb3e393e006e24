"""
The interfaces between manualb's parts, and where users plug in their own:
a balancing strategy (L{IBalancer}, with L{IAffinity} when it pins clients),
a health probe (L{IHealthProbe}), a stage of the request chain (L{IStage}).

This module is a leaf: it imports nothing of manualb's.  The types the
methods take (a pool's C{Server}, a L{manualb.view.RequestView}) are named in
the docstrings only.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IBalancer(Interface):
    """
    A balancing strategy: chooses one server among those a pool offers.

    Write your own by implementing C{pick}, and name its factory (called with
    the text after the name, or L{None}) in C{balance = package.module.name}.
    """

    name = Attribute("The name of this strategy, as C{balance = ...} gives it.")

    def pick(candidates, request):
        """
        Choose a server for C{request}.

        @param candidates: The C{manualb.selection.Server}s that may take the
            request now, never empty, in the order the configuration lists
            them.  Their C{weight} and C{active} tell their share and their
            load.
        @param request: A L{manualb.view.RequestView}: the client's address,
            host, path, headers and cookies, for strategies that key on them.
        @return: One of C{candidates}.
        """


class IAffinity(Interface):
    """
    A balancer that pins a client to a server and tells the client how (a
    cookie, say).  The exchange adds what C{affinityHeaders} returns to the
    response of the server that finally answers, so a retry on another
    server sends the right one.
    """

    key = Attribute(
        "What the strategy keys on, for decision records: C{cookie NAME}, say."
    )

    def affinityHeaders(server, request):
        """
        The response headers, as C{(name, value)} byte pairs, that send
        C{request}'s client back to C{server} next time; empty when the
        client already carries them.
        """


class IHealthProbe(Interface):
    """
    An active health check of one server.
    """

    def check(server):
        """
        Probe C{server} (a C{manualb.selection.Server}): the result, a
        C{Deferred}, fires when the server is healthy and fails, with the
        reason, when it is not.  Cancelling it ends the probe.
        """


class IResponseReceiver(Interface):
    """
    Takes a backend's response as it is parsed.
    """

    def responseStarted(code, reason, headers):
        """
        The status line and headers have arrived.  C{headers} keeps every
        value of a repeated header, in order, as C{(name, value)} byte pairs.
        """

    def responseData(data):
        """
        A piece of the response body (decoded from chunked framing); after a
        C{101 Switching Protocols}, what the backend sent, as it is.
        """

    def responseDone():
        """
        The whole response has arrived; after a C{101}, the backend closed
        the tunnel cleanly.
        """

    def responseFailed(reason):
        """
        The response cannot be completed; nothing more will be delivered.
        After a C{101}, the tunnel broke.  C{reason} is a
        C{manualb.handoff.UpstreamError}.
        """
