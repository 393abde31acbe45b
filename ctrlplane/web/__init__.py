"""The request pipeline, one job per module.

Outside in: ``access_log`` (``RequestContextASGI``: request IDs, response headers, the access log,
the request metrics),
``unit_of_work`` (``UnitOfWork``: the transaction, the audit entry and the held-back response of
every ``/v1`` call), which calls ``admission`` (authentication, the tenant's standing, roles, the
rate limit) and ``idempotency`` (``Idempotency-Key`` claims and replays). ``scope`` holds what a
request carries on its ASGI scope, ``responses`` the bodies and responses held on the way,
``json_response`` the app's ``response_class`` (a JSON answer encoded in one step).
Handlers see ``context`` (``AppServices``, ``RequestContext``) and ``http`` (the shared route
options and parameters), and use ``pagination`` and ``preconditions``; ``openapi`` finishes the
OpenAPI document. Errors map onto HTTP in ``ctrlplane/errors.py``.
"""
