"""TLS reports (RFC 8460): receiving, parsing, storing and summarising them."""
