"""The HTTP gateway (`cutq http`): a REST front end on the broker for programs that speak HTTP.

FastAPI on uvicorn in its own process; it keeps no queue or state of its own besides
the API token file, and talks to the broker only through `shared.client` (one Client
per request thread, from a small pool).  Never imports the broker, a worker, rembg or
textual (an import-linter contract in pyproject.toml).

    settings.py  GatewaySettings, --listen parsing, the loopback rule
    tokens.py    API tokens: sha256-hashed in a 0600 JSON file, each bound to a tenant and a role
    broker.py    the pool of broker Clients, each acting for the request's tenant (as_tenant)
    errors.py    broker error codes -> HTTP statuses (429 with Retry-After, 413, 404...)
    auth.py      the bearer-token dependency: who a request acts for
    sse.py       Server-Sent Events from the broker's pushed events, one thread per stream
    routes/      /v1/jobs, results and zip, events, stats; /healthz and /readyz
    app.py       create_app() and serve() (uvicorn, systemd notify)
"""
