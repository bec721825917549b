"""policy-host: hosted MTA-STS (RFC 8461) policies for many customer domains."""

__version__ = "0.1.0"
