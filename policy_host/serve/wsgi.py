"""Entry point for WSGI servers: ``gunicorn policy_host.serve.wsgi:app``.

Reads the provider config from ``$POLICY_HOST_CONFIG`` (or the default).
The snapshot is watched every ``web.WATCH_INTERVAL`` seconds, as under
`policy-host serve`, so `apply` waits long enough for these workers too.
"""

from policy_host.serve.web import WATCH_INTERVAL, create_app

app = create_app(watch_interval=WATCH_INTERVAL)
