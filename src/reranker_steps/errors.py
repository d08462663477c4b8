"""The error a step answers a single request with, when the caller must change the request."""

from __future__ import annotations


class BadRequest(Exception):
    """The request is wrong; the message says what the caller must change (INVALID_ARGUMENT)."""
