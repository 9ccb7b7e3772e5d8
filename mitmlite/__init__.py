"""mitmlite: a small, fast intercepting HTTPS proxy built on trio and h11.

This module owns the version and the public hook-script API: what a script imports (``from
mitmlite import Response``) is re-exported here; everything else in the package is internal.
"""

from mitmlite.flow import ClientInfo, Flow, Headers, Query, Request, Response, ServerInfo
from mitmlite.hooks import in_thread

__version__ = "0.1.0"

__all__ = [
    "ClientInfo",
    "Flow",
    "Headers",
    "Query",
    "Request",
    "Response",
    "ServerInfo",
    "__version__",
    "in_thread",
]
