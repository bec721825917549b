"""Entry point for WSGI servers: ``gunicorn policy_host.serve.wsgi:app``.

Reads the provider config from ``$POLICY_HOST_CONFIG`` (or the default).
"""

from policy_host.serve.web import create_app

app = create_app(watch_interval=0.5)
