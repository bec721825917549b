"""The read-only status page for provider staff."""
