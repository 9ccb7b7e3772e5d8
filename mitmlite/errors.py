"""The error tree: every failure mitmlite reports to a user or a client.

Each error's ``str()`` is one concrete line that names the thing and the limit. Errors that reach a
client carry the HTTP ``status`` the proxy answers with; configuration and CA errors have no status
and make the command line exit with code 2. Foreign exceptions are mapped to these once, at the
edge where they are raised, with ``raise ... from exc``. Pure: no trio, no sockets.
"""

from __future__ import annotations


class MitmliteError(Exception):
    """Base of every error mitmlite raises on purpose."""

    status: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(MitmliteError):
    """An option, a script or the environment is unusable; the command line exits with 2."""


class CAError(ConfigError):
    """The root CA cannot be loaded, created or used."""


class InvalidHostError(MitmliteError):
    """A name that is not a valid host name or IP address, so no certificate is minted for it."""

    status = 400


class ClientError(MitmliteError):
    """The client sent something the proxy cannot serve (4xx)."""

    status = 400


class HeaderTooLargeError(ClientError):
    """The client's request header block exceeds the configured limit."""

    status = 431


class TargetTooLongError(HeaderTooLargeError):
    """The request line alone exceeds the header limit: the URI is what is too long."""

    status = 414


class ClientTimeoutError(ClientError):
    """The client did not finish its request in time."""

    status = 408


class UpstreamError(MitmliteError):
    """The upstream server could not be reached or misbehaved (502)."""

    status = 502


class UpstreamCertificateError(UpstreamError):
    """The upstream certificate failed verification; its content must never reach the client."""


class UpstreamTimeoutError(UpstreamError):
    """The upstream server did not answer in time (504)."""

    status = 504


class HookOutputError(MitmliteError):
    """A hook left a message that cannot be sent (a header with a newline, a non-ASCII method)."""

    status = 500


class FlowKilledError(MitmliteError):
    """A hook called ``flow.kill()``: the client connection is closed without an answer."""
