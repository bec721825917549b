"""Serving: the snapshot, the change journal, policy files for nginx,
the WSGI app and the gunicorn runner."""
