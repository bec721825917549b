"""Promotion from testing to enforce, and the guard against MX drift."""
