"""Which CONNECT tunnels are intercepted and which are relayed untouched (passthrough).

Owns ``--ignore-hosts`` / ``--allow-hosts`` (regular expressions searched, case-insensitively, in
``host:port`` of the CONNECT target and of the ClientHello's SNI, as mitmproxy does) and the hosts
``--auto-passthrough`` learnt from clients that refused our certificate. Pure: the connection asks,
this module answers; nothing here touches a socket.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from mitmlite.errors import ConfigError


@dataclass(frozen=True, slots=True)
class HostRules:
    """The user's passthrough rules; with neither list every tunnel is intercepted."""

    ignore: tuple[re.Pattern[str], ...] = ()
    allow: tuple[re.Pattern[str], ...] = ()

    def passthrough(self, host: str, port: int, sni: str | None = None) -> bool:
        """True when the tunnel to ``host:port`` (asking for ``sni``) must not be intercepted."""
        if not self.ignore and not self.allow:
            return False
        names = [f"{host}:{port}"]
        if sni and sni.lower() != host.lower():
            names.append(f"{sni}:{port}")
        if self.ignore:
            return any(p.search(name) for p in self.ignore for name in names)
        return not any(p.search(name) for p in self.allow for name in names)


def compile_rules(ignore: Sequence[str], allow: Sequence[str]) -> HostRules:
    """Compile the option values; a bad pattern or both lists at once is a start-up error."""
    if ignore and allow:
        raise ConfigError("--ignore-hosts and --allow-hosts cannot be combined: pick one")
    return HostRules(_compiled(ignore, "--ignore-hosts"), _compiled(allow, "--allow-hosts"))


def _compiled(patterns: Sequence[str], option: str) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE))
        except re.error as exc:
            raise ConfigError(f"{option} {pattern!r} is not a regular expression: {exc}") from exc
    return tuple(compiled)


class LearnedHosts:
    """Hosts whose clients refused our certificate (pinning): tunnelled blindly from then on.

    Bounded, oldest first out, so a client refusing every name it tries cannot grow it forever.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._hosts: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def add(self, host: str) -> bool:
        """Remember ``host``; True when it is new."""
        key = host.lower().rstrip(".")
        new = key not in self._hosts
        self._hosts[key] = None
        self._hosts.move_to_end(key)
        while len(self._hosts) > self._limit:
            self._hosts.popitem(last=False)
        return new

    def __contains__(self, host: object) -> bool:
        return isinstance(host, str) and host.lower().rstrip(".") in self._hosts

    def __len__(self) -> int:
        return len(self._hosts)
