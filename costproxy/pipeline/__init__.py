"""The one place that sequences a request (DESIGN §2).

``run.run_unary`` and ``run.run_stream`` own the whole order, for every protocol edge:

``plan``     count tokens → budget view → route (analyze, steering, select; the ``Router``) →
             output caps and the worst case (``plan.py``)
``reserve``  the worst case on every budget of the caller's chain (``Accounts``), all or nothing
``call``     the upstream (``Upstream``), falling back along the chain on retryable failures before
             any byte reached the client
``settle``   from the usage the provider reported (or counted, for streams without usage), in a
             ``finally`` so failures release and disconnects still charge what was generated
             (``settle.py``); then the breakers learn the result and ``events`` go out.

A request refused before the call (bad body, budget, rule, store) still leaves a ledger entry with
status ``refused`` and a ``RequestCompleted`` event, so logs and metrics see every request.
The HTTP handlers parse the body and write the answer; nothing in this package knows aiohttp.
"""
