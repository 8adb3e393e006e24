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
        reason, when it is not.  Cancelling it ends the probe.  It fires once
        the probe has ended, any connection it made closed: the monitor's
        C{stop} waits for it.
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


class IStage(Interface):
    """
    One step of the chain every HTTP request passes before it goes to a
    backend: a stage looks at the request and either passes it on, adding
    what it learned (the URL map adds the route it chose), or answers it
    itself (a redirect, a 404, a 403 or 429 of a gatekeeper).

    The chain is a list, run in order until a stage answers:
    C{manualb.stages.defaultStages} gives the standard one, and
    C{manualb.web.ProxyResource.stages} is the list a resource runs.  To add
    a stage, put it in that list where it belongs: one that refuses
    clients (a gatekeeper) goes after the front end's own refusals
    (C{Refusal}) and before the URL map, so that it answers before any
    route or backend is looked at::

        resource.stages.insert(resource.stages.index(urlMap), Gatekeeper(...))

    A stage must not block: it answers at once, from what it holds in
    memory.
    """

    def handle(passage):
        """
        Look at a request on its way.

        @param passage: The request and what the stages before learned of
            it, a L{manualb.view.Passage}: its C{view} (a
            L{manualb.view.RequestView}), and fields a stage may set
            (C{route}, C{headers}...).
        @return: L{None} to pass the request on to the next stage, or a
            L{manualb.view.Answer} that the client gets at once; the
            stages after are then not asked.
        """


class IRequestBody(Interface):
    """
    The body of a request as the exchange sends it to a backend: a push
    producer that writes into a backend connection (C{writeBody},
    C{finishBody}) and can be sent again to another one when it is kept.
    """

    length = Attribute(
        "The body's length in bytes: 0 for none, L{None} when it is not "
        "known beforehand (chunked)."
    )
    replayable = Attribute("Whether the body can still be sent whole to another server.")

    def keepForRetry(limit):
        """
        Keep up to C{limit} bytes of the body, so that it can go again to
        another server.
        """

    def whenTooLarge(callback):
        """
        Call C{callback} (no arguments) if the body grows beyond what the
        front end accepts (or L{limitTo}); the rest of it is dropped.
        """

    def limitTo(limit):
        """
        Accept at most C{limit} bytes of body (0: no limit) in place of the
        front end's limit, for this request (a route's
        C{client_max_body_size}); called before any of the body is read.

        @return: L{False} when the declared length is beyond it already.
        """

    def hold(size, callback):
        """
        Send none of the body to a backend before its first C{size} bytes
        (all of a shorter body) are in, then call C{callback} with them; the
        body is then delivered whole as usual.
        """

    def deliverTo(connection):
        """
        Send the body, from its start, to a backend connection
        (C{manualb.handoff.UpstreamConnection}).
        """

    def detach():
        """
        Stop sending to the current connection, which failed; the body may
        still go to another.
        """

    def discard():
        """
        Drop the rest of the body: its backend exchange is over.
        """


class IDownstream(Interface):
    """
    The client's side of one HTTP request, as a front end hands it to the
    exchange (C{manualb.exchange.Exchange}): what the client asked, and the
    means to answer it.  The exchange speaks to the client only through
    this, so any front end that provides it (twisted.web's, in
    C{manualb.web}; another HTTP/1.1 parser) drives the same exchange.

    The exchange calls, in this order: C{whenGone} once; then either
    C{startResponse}, any C{write}s (with the backend connection registered
    as producer meanwhile) and C{finish} or C{breakOff}; or C{takeOver}
    after a C{101}; and C{logTo} once the request is over.
    """

    view = Attribute(
        "The request as the stages see it, a L{manualb.view.RequestView}, "
        "built once by the front end (C{manualb.stages.requestView})."
    )
    version = Attribute("The HTTP version the client spoke, C{b'HTTP/1.1'}, for C{Via}.")
    body = Attribute("The request body, an L{IRequestBody}.")
    refusal = Attribute(
        "C{(code, reason, detail)} when the front end read the request but "
        "refuses it (a bad header, say), so that the exchange answers and "
        "logs it; else L{None}."
    )
    hsts = Attribute(
        "The C{Strict-Transport-Security} value this front end's listener "
        "gives its responses over TLS, or L{None}."
    )

    def mayUpgrade():
        """
        Whether the request asks for a protocol upgrade (C{Upgrade},
        C{Connection: upgrade}) that this front end can carry out with
        C{takeOver}.
        """

    def whenGone(callback):
        """
        Call C{callback} with a L{twisted.python.failure.Failure} should the
        client leave before the response is finished.
        """

    def startResponse(code, reason, headers):
        """
        Start the response: its status and its headers, C{(name, value)}
        byte pairs, in order, repeated names kept.
        """

    def write(data):
        """
        Send a piece of the response body.
        """

    def finish():
        """
        End the response; a body the client is still sending is read and
        dropped.
        """

    def breakOff():
        """
        End a started response that cannot be completed, so that the client
        cannot take the truncated body for a whole one.
        """

    def abort():
        """
        Drop the client's connection at once.
        """

    def closeAfterResponse():
        """
        Close the client's connection once this response is sent, rather
        than keep it for another request.
        """

    def registerProducer(producer):
        """
        Pause and resume C{producer} (an C{IPushProducer}, the backend
        connection) as the client takes the response, for back-pressure.
        """

    def unregisterProducer():
        """
        Undo C{registerProducer}.
        """

    def takeOver(protocol):
        """
        Take the client's connection over for an upgraded protocol: from
        now on C{protocol} gets what the client sends.

        @return: The client's transport, and what the client sent after the
            request that was kept for the next request.
        @raise Exception: The connection cannot be taken over.
        """

    def logTo(accessLog, status, upstreams, times, sent=None, passage=None):
        """
        Write the access log line of this request to C{accessLog}.

        @param status: The status sent, or the one that stands for what
            happened (499: the client went away first).
        @param upstreams: The names of the servers tried, in order.
        @param times: How long each try took, in seconds.
        @param sent: The bytes sent to the client, when the front end did
            not count them (through a tunnel), else L{None}.
        @param passage: The request's L{manualb.view.Passage} (its id, the
            servers tried), for the log's variables.
        """


class IRequestInspector(Interface):
    """
    Looks for attacks in a request before it goes to a backend: the web
    application firewall (C{manualb.waf.WAF}), or a user's own.
    """

    mode = Attribute("C{block}, C{detect} or C{off}.")
    bodyLimit = Attribute(
        "How many bytes of a request body C{inspectBody} wants; 0 for none."
    )

    def inspect(request):
        """
        Inspect the request line and headers of C{request} (a
        L{manualb.view.RequestView}): the path, the query, the headers and
        the cookies.

        @return: A L{manualb.records.Finding}, or L{None} when nothing fired.
        """

    def inspectBody(request, body):
        """
        Inspect the first bytes of C{request}'s body (a form or JSON body,
        at most C{bodyLimit} of it).

        @return: A L{manualb.records.Finding}, or L{None}.
        """


class IRateLimiter(Interface):
    """
    A request rate limit (C{manualb.ratelimit.RateLimiter}).
    """

    def check(request, route):
        """
        Count C{request} (a L{manualb.view.RequestView}) of the route named
        C{route} (or L{None}) against its bucket.

        @return: A L{manualb.records.RateDecision}.
        """


class IRateLimitStore(Interface):
    """
    Where the token buckets of rate limits live: in the process by default
    (C{manualb.ratelimit.MemoryStore}); shared between instances through an
    L{IStateStore} by C{manualb.sharedrates.SharedRateStore}.
    """

    def take(key, rate, burst, now):
        """
        Take one token from the bucket C{key} (bytes, of any length),
        refilled at C{rate} tokens a second up to C{burst} + 1, at time
        C{now}; as nginx's C{limit_req} counts (see C{manualb.ratelimit}).

        @return: How many seconds the request must wait for its token: 0
            when one is there, at most C{burst / rate} when it is let in;
            more than C{burst / rate} when the bucket is over its burst
            (the request is refused and takes no token).
        """


class IStateListener(Interface):
    """
    What hears from an L{IStateStore}: the store's comings and goings, and
    what every instance publishes (C{manualb.state.SharedState}).
    """

    def stateConnected():
        """
        The store can be reached: at start, or again after it was lost.
        What it holds may have changed meanwhile: read it again
        (L{IStateStore.read}).
        """

    def stateLost(reason):
        """
        The store cannot be reached any more (C{reason}, in words): keep
        serving on the last state known.  The store tries again by itself,
        and calls L{stateConnected} when it is back.
        """

    def stateChanged(topic, key, value, version):
        """
        An instance (this one included) published C{value}, a JSON-ready
        dict, or L{None} when it was removed, under C{key} (text) of
        C{topic} (text), as the store's C{version}-th change (an integer
        that grows with every change): a value of a lower version than one
        already seen for the same key is older and must be ignored.
        """


class IStateStore(Interface):
    """
    State that every instance of manualb naming the same store shares: the
    admin API's changes, the health each instance sees, the rate limits'
    buckets, the certificates obtained by ACME and the locks taken to
    obtain them.  C{manualb.state.MemoryStateStore} keeps it in the process (for
    balancers in one process, and for tests); C{manualb.redisstate} keeps it
    in Redis.

    Every method answers with a L{Deferred} that fires within the store's
    own timeout, and fails when the store cannot be reached: nothing of
    the request path waits for one.
    """

    description = Attribute("Where the state is, in words, for the log and the status.")
    connected = Attribute("Whether the store can be reached now.")

    def start(listener):
        """
        Connect, in the background, and keep connecting: tell C{listener}
        (an L{IStateListener}) each time the store is reached and lost, and
        each change published.
        """

    def stop():
        """
        Disconnect and stop trying.

        @return: A L{Deferred} that fires once the connections are closed.
        """

    def publish(topic, key, value):
        """
        Keep C{value} (a JSON-ready dict, or L{None} to remove it) under
        C{key} of C{topic}, replacing the one there, and tell every
        instance's listener (L{IStateListener.stateChanged}).

        @return: A L{Deferred} that fires with the change's version.
        """

    def read(topic):
        """
        Everything kept under C{topic}.

        @return: A L{Deferred} that fires with a dict of C{(version, value)}
            by key.
        """

    def syncBuckets(counts):
        """
        Add to shared rate-limit buckets the requests an instance let in.

        @param counts: C{(key, rate, admitted)} for each bucket: its key
            (bytes), its rate (tokens a second) and how many requests the
            instance let in since it last synchronised it (0 to just read
            it).

        @return: A L{Deferred} that fires with C{(level, total)} for each,
            in order: the bucket's level (its C{excess}, as
            C{manualb.ratelimit} counts, after those requests, drained at
            C{rate} by the store's clock) and how many requests have been
            added to it in all, by every instance, since it was made.
        """

    def lock(name, token, ttl):
        """
        Take the lock C{name} for C{token} (its holder's own random mark)
        for C{ttl} seconds, unless another holds it: a holder that dies
        without releasing it blocks the others for C{ttl} at most.

        @return: A L{Deferred} that fires with whether C{token} took it.
        """

    def renewLock(name, token, ttl):
        """
        Keep the lock C{name} for C{ttl} seconds more, if C{token} still
        holds it.

        @return: A L{Deferred} that fires with whether C{token} holds it.
        """

    def unlock(name, token):
        """
        Release the lock C{name} if C{token} holds it (not when it expired
        and another took it since).

        @return: A L{Deferred} that fires with whether it was released.
        """
