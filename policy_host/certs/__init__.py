"""Certificates: certbot runs and nginx's per-customer server blocks."""
