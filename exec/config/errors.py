"""Configuration errors.

One exception type for everything that makes a configuration unusable, so the executive
has a single ``except ConfigError`` that prints ``str(err)`` and exits with
:data:`EXIT_CONFIG` (corosync's ``COROSYNC_DONE_MAINCONFIGREAD``, the code the real
daemon uses for every broken-config case in ``shared/reference/broken-config``).
"""

from __future__ import annotations

#: Exit status of the real daemon for every configuration error (main.c, status 8).
EXIT_CONFIG = 8


class ConfigError(Exception):
    """A configuration problem located as precisely as we can.

    ``str()`` is ``"path:line: key: message"``; line and key are left out when unknown.

    Syntax and integer-range errors found while *reading* the file are formatted exactly
    like corosync's parser (``"parser error: path:line: message"``) because scripts and
    people compare them with the real daemon's output; set ``parser_style`` for those.
    """

    exit_code = EXIT_CONFIG

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        key: str | None = None,
        parser_style: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.key = key
        self.parser_style = parser_style

    def __str__(self) -> str:
        if self.parser_style:
            return f"parser error: {self.path}:{self.line}: {self.message}"
        where = [p for p in (self.path, None if self.line is None else str(self.line)) if p]
        parts = [":".join(where)] if where else []
        if self.key:
            parts.append(self.key)
        parts.append(self.message)
        return ": ".join(parts)
