"""Helpers every package of the project shares: the standard library only, so any extra can use them.

- exit codes, one convention for every CLI: 0 done, 1 the work failed, 2 a usage error, 130 interrupted;
- ``int_list``: the argparse type for comma-separated integers (``--length-buckets 64,128``);
- ``HelpFormatter``: argparse help with each option's default, unless it has none or says it itself;
- ``progress_printer``: progress lines with the elapsed time, on stderr so stdout stays the result;
- ``free_port``: a TCP port nobody listens on right now.

``reranker_common.agreement`` (numpy; scipy when used) measures how two rankings agree.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Callable
from typing import TextIO

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Progress = Callable[[str], None]
"""Receives one human-readable progress line at a time."""


def int_list(text: str) -> tuple[int, ...]:
    """``"64, 128,256"`` -> ``(64, 128, 256)``; an argparse ``type=`` (bad input is a usage error)."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help, except where there is no default worth
    printing (``None``, ``False``, an empty string or list) or where the help already gives it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        empty = default is None or default is False or (isinstance(default, str | tuple | list) and not default)
        if empty or "default" in text.lower():  # (0 is a default worth printing, though 0 == False)
            return text
        return super()._get_help_string(action)


def progress_printer(stream: TextIO | None = None) -> Progress:
    """A ``Progress`` that prints ``[  12.3s] message``, timed from its creation (default: stderr)."""
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=stream or sys.stderr, flush=True)

    return say


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
