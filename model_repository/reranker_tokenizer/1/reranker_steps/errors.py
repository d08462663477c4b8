"""The error a step answers a single request with, when the caller must change the request."""

from __future__ import annotations


class BadRequest(Exception):
    """The request is wrong; the message says what the caller must change (INVALID_ARGUMENT)."""


class Abandoned(Exception):
    """Nobody waits for the answer any more (the caller cancelled, or its deadline passed): the
    step stops working on the request and answers CANCELLED. The message says which."""
