"""One client connection: the proxy request, then interception, a tunnel, or plain proxying.

Owns reading the first request (absolute-form requests go straight to the relay), answering
``CONNECT``, peeking at the client's first bytes inside the tunnel (a ClientHello is parsed before
any handshake; plain HTTP is relayed as HTTP; anything else is piped raw), and taking the client's
TLS handshake with the leaf for its SNI, with the upstream connection opened alongside it (unless
scripts or the onboarding site may keep the request from ever going there). After that
handshake the first decrypted bytes decide again: HTTP goes to the relay, any other protocol is
piped to the verified upstream TLS connection. Connection-level failures are logged here in one
line.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import h11
import trio

from mitmlite.ca.cache import LeafCache
from mitmlite.config import Config
from mitmlite.errors import ClientError, MitmliteError
from mitmlite.flow import ClientHelloData
from mitmlite.http1 import (
    ConnectTarget,
    authority,
    classify_request,
    error_response,
    percent_encode_request_line,
    reason_phrase,
)
from mitmlite.onboarding import is_onboarding_host
from mitmlite.passthrough import HostRules, LearnedHosts
from mitmlite.relay import Relay, RelayEnv
from mitmlite.streams import PrefixedStream, pipe, tls_transport
from mitmlite.tls.clienthello import (
    MAX_HELLO_LENGTH,
    ClientHello,
    looks_like_tls,
    needs_rsa_leaf,
    parse_client_hello,
)
from mitmlite.tls.fingerprints import describe
from mitmlite.upstream import Destination, Preconnect, Upstream

# TLS alerts a client sends when it rejects our certificate (RFC 8446 §6.2): a pinned app, or a
# client that was never told to trust the mitmlite CA.
_DISTRUST_ALERTS = ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN")
# A client that reads neither our close_notify nor our refusal must not hold its task longer.
_CLOSE_NOTIFY_SECONDS = 2.0
_REFUSAL_SECONDS = 5.0
# A client silent this long after its 200 is taken to be waiting for the server to speak first:
# TLS and HTTP clients send at once, within a local round trip (a side-by-side run found SMTP-like
# greetings held back for the whole handshake timeout, where mitmproxy passes them at once).
SILENT_CLIENT_GRACE = 0.5


class HelloSink(Protocol):
    """Where parsed ClientHellos go for ``--clienthello-log`` (one JSON object per line)."""

    def write(self, data: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class TunnelPolicy:
    """What to do with a CONNECT tunnel once its ClientHello is read."""

    rules: HostRules = field(default_factory=HostRules)  # --ignore-hosts / --allow-hosts
    learned: LearnedHosts | None = None  # --auto-passthrough: hosts whose clients pin
    hello_log: HelloSink | None = None  # --clienthello-log
    show_hellos: bool = False  # -v: one line per ClientHello with its fingerprints
    upstream_cert: bool = False  # --upstream-cert: leaves carry the upstream certificate's names


@dataclass(frozen=True, slots=True)
class ConnectionEnv:
    """What every client connection needs: the relay's environment, leaves, tunnel policy."""

    relay: RelayEnv
    leaves: LeafCache
    policy: TunnelPolicy = field(default_factory=TunnelPolicy)


def peer_name(stream: trio.abc.Stream) -> str:
    """``ip:port`` of the client, for logs."""
    if isinstance(stream, trio.SocketStream):
        try:
            host, port, *_ = stream.socket.getpeername()
        except OSError:
            return "?"
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "memory"


async def handle_client(
    env: ConnectionEnv, stream: trio.abc.Stream, name: str | None = None
) -> None:
    """Serve one client connection to its end (``name``: its address, when not a socket)."""
    name = name or peer_name(stream)
    # Only the CONNECT's target and early bytes outlive this call: a tunnel can sit idle for
    # minutes, and its memory is what the proxy pays per idle connection (issue 3).
    accepted = await _serve_until_connect(env, stream, name)
    if accepted is not None:
        await _tunnel(env, stream, name, *accepted)


async def _serve_until_connect(
    env: ConnectionEnv, stream: trio.abc.Stream, name: str
) -> tuple[ConnectTarget, bytes] | None:
    conn = new_server_conn(env.relay.config)
    request = await Relay(env.relay, stream, conn, name, fixed=None).run()
    if request is None:
        return None
    return await _connect(env, stream, conn, name, request)


def new_server_conn(config: Config) -> h11.Connection:
    """An h11 server-side machine with our header limit (h11 answers overruns with a 431 hint)."""
    return h11.Connection(h11.SERVER, max_incomplete_event_size=config.limits.max_header_bytes)


async def _connect(
    env: ConnectionEnv, stream: trio.abc.Stream, conn: h11.Connection, name: str, req: h11.Request
) -> tuple[ConnectTarget, bytes] | None:
    """Answer a CONNECT: 200 and its target with any bytes sent after it, or a refusal."""
    try:
        target = classify_request(b"CONNECT", req.target)
        if not isinstance(target, ConnectTarget):
            raise ClientError("CONNECT needs a host:port target")
    except ClientError as exc:
        env.relay.sink.event(
            name, f"CONNECT {req.target.decode('ascii', 'replace')} -> error: {exc}"
        )
        await _refuse(conn, stream, exc)
        return None
    while isinstance(conn.next_event(), h11.Data | h11.EndOfMessage):
        pass  # drain the CONNECT's (empty) body so h11 sees the request complete
    reply = h11.Response(status_code=200, reason=b"Connection established", headers=[])
    await stream.send_all(conn.send(reply) or b"")
    return target, conn.trailing_data[0]


async def _refuse(conn: h11.Connection, stream: trio.abc.Stream, exc: MitmliteError) -> None:
    status = exc.status or 400
    headers, body = error_response(status, str(exc))
    response = h11.Response(status_code=status, headers=headers, reason=reason_phrase(status))
    data = conn.send(response) or b""
    data += (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
    with trio.move_on_after(_REFUSAL_SECONDS):
        await stream.send_all(data)


async def _tunnel(
    env: ConnectionEnv, stream: trio.abc.Stream, name: str, target: ConnectTarget, early: bytes
) -> None:
    first = early
    if not first:
        opening = await _first_speaker(env, stream, name, target)
        if opening is None:
            return  # closed by either side before a byte, or the upstream could not be reached
        first, upstream, greeting = opening
        if upstream is not None:
            if greeting or not (looks_like_tls(first) or _looks_like_http(first)):
                await _raw_tunnel(env, PrefixedStream(stream, first), name, target,
                                  opened=(upstream, greeting))  # fmt: skip
                return
            await upstream.stream.aclose()  # a TLS or HTTP client after all: served below
    if looks_like_tls(first):
        hello, first = await _read_client_hello(env, stream, first, name, target)
        if hello is None:
            return
        server_name = hello.sni or target.host
        offered = hello.alpn_protocols
        rsa = needs_rsa_leaf(hello)
        why = await _passthrough_reason(env, name, target, hello)
        replay = PrefixedStream(stream, first)
        del hello, first  # the parsed and raw ClientHello would live as long as the tunnel
        if why is not None:
            await _raw_tunnel(env, replay, name, target, f"passthrough ({why})")
            return
        await _intercept(env, replay, name, target, server_name, offered, rsa=rsa)
    elif _looks_like_http(first):
        dest = Destination(target.host, target.port, tls=False)
        conn = new_server_conn(env.relay.config)
        await Relay(env.relay, PrefixedStream(stream, first), conn, name, fixed=dest).run()
    else:
        await _raw_tunnel(env, PrefixedStream(stream, first), name, target)


async def _first_speaker(
    env: ConnectionEnv, stream: trio.abc.Stream, name: str, target: ConnectTarget
) -> tuple[bytes, Upstream | None, bytes] | None:
    """Who speaks first in a new tunnel: (client bytes, raw upstream if opened, its bytes).

    TLS and HTTP clients speak at once. One still silent after ``SILENT_CLIENT_GRACE`` is
    likely waiting for the server (SMTP, IMAP, FTP, MySQL greet first), so the upstream is
    opened then and both sides are read until the handshake timeout: the server's greeting
    reaches the client as soon as it is sent, not when the timeout ends. Not when scripts are
    loaded or the target is the onboarding host, which must not be contacted unasked (see
    ``_may_preconnect``). None when either side closes first.
    """
    config = env.relay.config
    deadline = trio.current_time() + config.timeouts.handshake
    with trio.move_on_after(min(SILENT_CLIENT_GRACE, config.timeouts.handshake)):
        data = bytes(await stream.receive_some(config.limits.read_size))
        return (data, None, b"") if data else None
    dest = Destination(target.host, target.port, tls=False, tunnel=True)
    upstream: Upstream | None = None
    failed = False
    if _may_preconnect(env, dest):
        try:
            upstream = await env.relay.connect(dest)
        except MitmliteError as exc:
            # A slow TLS client still gets its handshake and a 502 saying this, so wait on.
            env.relay.sink.event(name, f"{target.authority} tunnel error: {exc}")
            failed = True
    if upstream is None:
        with trio.move_on_at(deadline):
            data = bytes(await stream.receive_some(config.limits.read_size))
            return (data, None, b"") if data else None
        return None if failed else (b"", None, b"")  # silent: a raw tunnel, as ever
    client, server = await _first_to_speak(stream, upstream, deadline, config, broken=None)
    if client == b"" or server == b"":
        await upstream.stream.aclose()
        return None
    return client or b"", upstream, server or b""


async def _first_to_speak(
    client: trio.abc.Stream,
    upstream: Upstream,
    deadline: float,
    config: Config,
    *,
    broken: bytes | None,
) -> tuple[bytes | None, bytes | None]:
    """Read both sides until one speaks or closes, or ``deadline``: (client's, server's) bytes.

    None for a side that stayed silent; b"" for one that closed, and ``broken`` for one whose
    connection broke. Cancelled from outside (a shutdown), it closes the upstream.
    """
    heard: dict[str, bytes | None] = {}

    async def listen(side: str, source: trio.abc.Stream, scope: trio.CancelScope) -> None:
        try:
            heard[side] = bytes(await source.receive_some(config.limits.read_size))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            heard[side] = broken
        scope.cancel()  # the first to speak (or close) decides

    try:
        async with trio.open_nursery() as nursery:
            nursery.cancel_scope.deadline = deadline
            nursery.start_soon(listen, "client", client, nursery.cancel_scope)
            nursery.start_soon(listen, "server", upstream.stream, nursery.cancel_scope)
    except BaseException:
        await trio.aclose_forcefully(upstream.stream)
        raise
    return heard.get("client"), heard.get("server")


async def _read_client_hello(
    env: ConnectionEnv, stream: trio.abc.Stream, data: bytes, name: str, target: ConnectTarget
) -> tuple[ClientHello | None, bytes]:
    """Read until the whole ClientHello is in ``data``; None (logged) when it is malformed."""
    try:
        return await read_client_hello(stream, data, env.relay.config)
    except ClientError as exc:
        env.relay.sink.event(name, f"{target.authority} error: {exc}")
        return None, data


async def first_bytes(stream: trio.abc.Stream, config: Config) -> bytes:
    """A new client's first bytes; empty when it closes or stays silent for the handshake time."""
    with trio.move_on_after(config.timeouts.handshake):
        return bytes(await stream.receive_some(config.limits.read_size))
    return b""


async def read_client_hello(
    stream: trio.abc.Stream, data: bytes, config: Config
) -> tuple[ClientHello, bytes]:
    """Read until the whole ClientHello is in ``data``: the hello and every byte read so far.

    Raises ClientError when it is malformed, over 128 KiB, cut short or not complete within the
    handshake timeout.
    """
    try:
        with trio.fail_after(config.timeouts.handshake):
            while not isinstance(hello := parse_client_hello(data), ClientHello):
                if len(data) > 2 * MAX_HELLO_LENGTH:
                    raise ClientError("ClientHello is larger than 128 KiB")
                more = await stream.receive_some(config.limits.read_size)
                if not more:
                    raise ClientError("client closed the connection inside its ClientHello")
                data += more
    except trio.TooSlowError as exc:
        raise ClientError("ClientHello not received in time") from exc
    return hello, data


async def server_handshake(tls: trio.SSLStream[Any], seconds: float) -> str | None:
    """Take a client's TLS handshake: None when done, else why not ("timed out", "failed")."""
    try:
        with trio.fail_after(seconds):
            await tls.do_handshake()
    except trio.TooSlowError:
        return "timed out"
    except trio.BrokenResourceError:
        return "failed"
    return None


async def _intercept(
    env: ConnectionEnv,
    stream: trio.abc.Stream,
    name: str,
    target: ConnectTarget,
    server_name: str,
    offered: tuple[str, ...] = (),
    *,
    rsa: bool = False,
) -> None:
    dest = Destination(target.host, target.port, tls=True, server_name=server_name)
    pool = env.relay.pool
    pooled = pool is not None and pool.has(dest) and not env.policy.upstream_cert
    if pooled or not _may_preconnect(env, dest):
        # Nothing to overlap when a pooled connection is waiting: the first request takes it.
        context = _leaf_context(env, name, target, server_name, rsa=rsa)
        if context is not None:
            tls = client_tls_layer(stream, context)
            await _serve_intercepted(env, tls, name, dest, env.relay, offered)
        return
    # The upstream is opened while the client's handshake runs: both cost round trips and
    # handshakes, and nothing about the upstream connection depends on the client's. With
    # --upstream-cert the client's handshake waits for it instead, to show the upstream's names.
    early = Preconnect(env.relay.connect, dest, env.relay.config.timeouts.idle)
    relay_env = dataclasses.replace(env.relay, connect=early)
    failure: Exception | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(early.run)
            try:
                also = await early.certificate_names() if env.policy.upstream_cert else []
                context = _leaf_context(env, name, target, server_name, also, rsa=rsa)
                if context is not None:
                    tls = client_tls_layer(stream, context)
                    await _serve_intercepted(env, tls, name, dest, relay_env, offered)
            except Exception as exc:  # raised below, outside the nursery, so not in a group
                failure = exc
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await early.aclose()
    if failure is not None:
        raise failure


def _leaf_context(
    env: ConnectionEnv,
    name: str,
    target: ConnectTarget,
    server_name: str,
    also: Sequence[str] = (),
    *,
    rsa: bool = False,
) -> ssl.SSLContext | None:
    try:
        return env.leaves.context_for(server_name, also, rsa=rsa)
    except MitmliteError as exc:
        env.relay.sink.event(name, f"{target.authority} error: no certificate: {exc}")
        return None


def client_tls_layer(
    stream: trio.abc.Stream, context: ssl.SSLContext
) -> trio.SSLStream[trio.abc.Stream]:
    """The TLS layer we present to a client (the proxy's, an interception's, a reverse one's)."""
    # Not https_compatible: closing sends close_notify (RFC 8446 §6.1), so a client can tell a
    # complete close-delimited response from a truncated one. The relay treats a client's EOF
    # without close_notify (which then raises BrokenResourceError) as an ordinary close.
    return trio.SSLStream(tls_transport(stream), context, server_side=True)


def _may_preconnect(env: ConnectionEnv, dest: Destination) -> bool:
    """False when a request might never go to ``dest``, which must then not be contacted.

    Scripts can block a host, send a request elsewhere or answer it themselves (and can gain
    such hooks when edited), and the onboarding host is served by the proxy, never forwarded.
    """
    if env.relay.hooks is not None:
        return False
    return env.relay.ca is None or not is_onboarding_host(dest.host)


async def _serve_intercepted(
    env: ConnectionEnv,
    tls: trio.SSLStream[trio.abc.Stream],
    name: str,
    dest: Destination,
    relay_env: RelayEnv,
    offered: tuple[str, ...] = (),
) -> None:
    if not await _client_handshake(env, tls, name, dest.server_name or dest.host):
        return
    try:
        opening = await _first_decrypted(env, tls, name, dest, relay_env)
        if opening is None:
            return
        first, upstream, greeting = opening
        if upstream is not None:
            unverified = "" if upstream.verified else " [UNVERIFIED upstream: --insecure]"
            label = f"{authority(dest.host, dest.port)} tunnel (not HTTP)"
            await _pipe_opened(env, tls, upstream, name, label, first=first, greeting=greeting,
                               note=unverified)  # fmt: skip
            return
        conn = new_server_conn(env.relay.config)
        conn.receive_data(percent_encode_request_line(first))
        relay = Relay(relay_env, tls, conn, name, fixed=dest)
        relay.offered_alpn = offered
        await relay.run()
    finally:
        with trio.move_on_after(_CLOSE_NOTIFY_SECONDS, shield=True):
            await tls.aclose()


async def _first_decrypted(
    env: ConnectionEnv,
    tls: trio.SSLStream[trio.abc.Stream],
    name: str,
    dest: Destination,
    relay_env: RelayEnv,
) -> tuple[bytes, Upstream | None, bytes] | None:
    """What an intercepted client speaks: (its first bytes, upstream if not HTTP, its greeting).

    HTTP clients send a request at once. Bytes that are not HTTP (IMAP, SMTP, MQTT, a custom
    protocol over TLS) are relayed as they are, decrypted, over a verified TLS connection to
    the upstream, as mitmproxy does; so is a client that stays silent until the upstream
    greets it (IMAPS, SMTPS). None when the client closes first.
    """
    config = env.relay.config
    data: bytes | None = None
    with trio.move_on_after(SILENT_CLIENT_GRACE):
        data = await _receive_or_eof(tls, config.limits.read_size)
    if data is not None:
        if not data:
            return None
        if _looks_like_http(data):
            return data, None, b""
        upstream = await _upstream_or_log(env, name, dest, relay_env)
        return (data, upstream, b"") if upstream is not None else None
    if not _may_preconnect(env, dest):
        return b"", None, b""  # a slow HTTP client, as far as we may find out: the relay waits
    upstream = await _upstream_or_log(env, name, dest, relay_env)
    if upstream is None:
        return None
    deadline = trio.current_time() + config.timeouts.idle
    client, server = await _first_to_speak(tls, upstream, deadline, config, broken=b"")
    if client == b"" or server == b"" or (client is None and server is None):
        await trio.aclose_forcefully(upstream.stream)
        return None
    if client is not None and _looks_like_http(client):
        await trio.aclose_forcefully(upstream.stream)  # an HTTP client after all: the relay
        return client, None, b""  # opens its own, as it would have
    return client or b"", upstream, server or b""


async def _receive_or_eof(stream: trio.abc.Stream, size: int) -> bytes:
    """Some bytes, or b"" once the peer has closed or broken the connection."""
    try:
        return bytes(await stream.receive_some(size))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return b""


async def _upstream_or_log(
    env: ConnectionEnv, name: str, dest: Destination, relay_env: RelayEnv
) -> Upstream | None:
    try:
        return await relay_env.connect(dest)
    except MitmliteError as exc:
        env.relay.sink.event(name, f"{authority(dest.host, dest.port)} error: {exc}")
        return None


async def _client_handshake(
    env: ConnectionEnv, tls: trio.SSLStream[trio.abc.Stream], name: str, server_name: str
) -> bool:
    try:
        with trio.fail_after(env.relay.config.timeouts.handshake):
            await tls.do_handshake()
    except trio.TooSlowError:
        env.relay.sink.event(name, f"{server_name} error: client TLS handshake timed out")
        return False
    except trio.BrokenResourceError as exc:
        reason, distrust = _handshake_reason(exc, server_name)
        learned = env.policy.learned
        if distrust and learned is not None and learned.add(server_name):
            reason += "; tunnelled untouched from its next connection on (--auto-passthrough)"
        env.relay.sink.event(name, f"{server_name} error: {reason}")
        return False
    return True


def _handshake_reason(exc: trio.BrokenResourceError, server_name: str) -> tuple[str, bool]:
    """The one-line reason, and whether the client refused our certificate."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError) and cause.reason != "UNEXPECTED_EOF_WHILE_READING":
        reason = cause.reason or str(cause)
        if any(alert in reason for alert in _DISTRUST_ALERTS):
            return f"client does not trust the mitmlite CA for {server_name} ({reason})", True
        return f"client TLS handshake failed: {reason}", False
    return "client closed the connection during the TLS handshake", False


async def _passthrough_reason(
    env: ConnectionEnv, name: str, target: ConnectTarget, hello: ClientHello
) -> str | None:
    """Why this tunnel must be relayed untouched, or None to intercept it.

    Records the ClientHello first (the log, -v, the tls_clienthello hook), so passthrough
    tunnels are fingerprinted too. Fingerprints are computed only when someone looks at them.
    """
    policy = env.policy
    hooks = env.relay.hooks
    wants_hook = hooks is not None and hooks.wants("tls_clienthello")
    if wants_hook or policy.hello_log is not None or policy.show_hellos:
        details = describe(hello)
        if policy.show_hellos:
            env.relay.sink.event(name, _hello_line(target, details))
        if policy.hello_log is not None:
            policy.hello_log.write({"client": name, "target": target.authority, **details})
        if hooks is not None and wants_hook:
            data = ClientHelloData(
                client=name,
                host=target.host,
                port=target.port,
                sni=hello.sni,
                alpn_protocols=hello.alpn_protocols,
                ja3=str(details["ja3"]),
                ja4=str(details["ja4"]),
                details=details,
            )
            await hooks.run("tls_clienthello", data)
            if data.ignore_connection:
                return "a tls_clienthello hook"
    if policy.rules.passthrough(target.host, target.port, hello.sni):
        return "--ignore-hosts" if policy.rules.ignore else "not in --allow-hosts"
    learned = policy.learned
    if learned is not None and ((hello.sni or target.host) in learned or target.host in learned):
        return "--auto-passthrough: the client refused our certificate before"
    return None


def _hello_line(target: ConnectTarget, details: dict[str, Any]) -> str:
    alpn = ",".join(cast(list[str], details["alpn"])) or "-"
    return (
        f"{target.authority} ClientHello sni={details['sni'] or '-'} alpn={alpn} "
        f"ja3={details['ja3']} ja4={details['ja4']}"
    )


def _looks_like_http(data: bytes) -> bool:
    method, space, _ = data[:16].partition(b" ")
    return bool(space) and method.isalpha() and method.isupper()


async def _raw_tunnel(
    env: ConnectionEnv,
    stream: trio.abc.Stream,
    name: str,
    target: ConnectTarget,
    kind: str = "tunnel",
    opened: tuple[Upstream, bytes] | None = None,
) -> None:
    """Relay bytes as they are, both ways: no TLS of ours, nothing parsed.

    ``opened``: an upstream already connected, and what it said before the client spoke.
    """
    if opened is None:
        try:
            dest = Destination(target.host, target.port, tls=False, tunnel=True)
            upstream = await env.relay.connect(dest)
        except MitmliteError as exc:
            env.relay.sink.event(name, f"{target.authority} {kind} error: {exc}")
            return
        greeting = b""
    else:
        upstream, greeting = opened
    await _pipe_opened(env, stream, upstream, name, f"{target.authority} {kind}", greeting=greeting)


async def _pipe_opened(
    env: ConnectionEnv,
    client: trio.abc.Stream,
    upstream: Upstream,
    name: str,
    label: str,
    *,
    first: bytes = b"",
    greeting: bytes = b"",
    note: str = "",
) -> None:
    """Pipe ``client`` and an opened ``upstream`` both ways, after the bytes each side already
    said (``first`` from the client, ``greeting`` from the server); log one line at the end."""
    async with upstream.stream:
        try:
            with trio.fail_after(env.relay.config.timeouts.handshake):
                if greeting:
                    await client.send_all(greeting)
                if first:
                    await upstream.stream.send_all(first)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            return
        sent, received = await pipe(client, upstream.stream, env.relay.config.timeouts.idle)
    sent, received = sent + len(first), received + len(greeting)
    env.relay.sink.event(name, f"{label} closed: {sent}b up, {received}b down{note}")
