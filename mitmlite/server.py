"""The listener: accepts proxy clients and runs each connection in its own task.

Owns the listening sockets, the handler nursery, the cap on concurrent connections, isolation
(one function catches whatever a connection raises, logs one line, and closes it, so a failing
connection never touches another), signal handling for a clean stop, and the start-up banner.
"""

from __future__ import annotations

import errno
import signal
import sys
from collections.abc import Callable
from typing import TextIO

import trio

from mitmlite.ca.cache import LeafCache
from mitmlite.ca.files import LoadedCA
from mitmlite.config import Config
from mitmlite.connection import ConnectionEnv, handle_client, peer_name
from mitmlite.flow import FlowSink
from mitmlite.hooks import HookRunner
from mitmlite.relay import RelayEnv
from mitmlite.tls.contexts import upstream_context
from mitmlite.upstream import TCPConnector

# accept() fails with these when the process runs out of descriptors or memory: back off and
# retry instead of dying, the way trio.serve_listeners does.
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_BACKOFF = 0.1
# How long and how much a closing connection may drain before it is closed regardless.
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 1024 * 1024

Address = tuple[str, int]


async def serve(
    config: Config,
    env: ConnectionEnv,
    *,
    task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen and serve until cancelled; reports the bound addresses through ``task_status``."""
    listeners = await trio.open_tcp_listeners(config.listen_port, host=config.listen_host)
    limiter = trio.CapacityLimiter(config.limits.max_connections)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, limiter, env, nursery)
        task_status.started([listener.socket.getsockname()[:2] for listener in listeners])


async def _accept_loop(
    listener: trio.SocketListener,
    limiter: trio.CapacityLimiter,
    env: ConnectionEnv,
    nursery: trio.Nursery,
) -> None:
    async with listener:
        while True:
            token = object()
            # Waiting for a free slot before accept() leaves extra clients in the kernel's
            # backlog instead of costing us a task and a descriptor each.
            await limiter.acquire_on_behalf_of(token)
            try:
                stream = await listener.accept()
            except OSError as exc:
                limiter.release_on_behalf_of(token)
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                env.relay.sink.event("proxy", f"accept failed: {exc.strerror}; retrying")
                await trio.sleep(_ACCEPT_BACKOFF)
                continue
            nursery.start_soon(
                _isolated, env, stream, lambda t=token: limiter.release_on_behalf_of(t)
            )


async def _isolated(
    env: ConnectionEnv, stream: trio.SocketStream, release: Callable[[], None]
) -> None:
    """Run one connection; whatever it raises stays here, logged in one line."""
    try:
        await handle_client(env, stream)
    except Exception as exc:  # the one place a connection's failure is contained
        env.relay.sink.event(peer_name(stream), f"connection error: {type(exc).__name__}: {exc}")
    finally:
        release()
        await _linger_close(stream)


async def _linger_close(stream: trio.SocketStream) -> None:
    """Half-close, drain briefly, then close (RFC 9112 §9.6).

    Closing a socket with unread input makes the kernel answer with a reset, which can destroy a
    response (a 431, a 400) that is still on its way to the client.
    """
    try:
        with trio.move_on_after(_LINGER_SECONDS):
            await stream.send_eof()
            drained = 0
            while drained < _LINGER_BYTES and (data := await stream.receive_some(65536)):
                drained += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


def build_env(
    config: Config, cache: LeafCache, sink: FlowSink, hooks: HookRunner | None = None
) -> ConnectionEnv:
    """The shared, per-process pieces: built once, passed down, never global."""
    tls = upstream_context(config.upstream_cas, insecure=config.insecure)
    timeouts = config.timeouts
    connector = TCPConnector(tls, timeouts.connect, timeouts.handshake)
    relay = RelayEnv(config, connector, sink, hooks, ca=cache.root)
    return ConnectionEnv(relay=relay, leaves=cache)


def banner(config: Config, loaded: LoadedCA, addresses: list[Address]) -> str:
    """What the user sees at start: where we listen, which CA, a line to paste."""
    bound = ", ".join(f"{host}:{port}" for host, port in addresses)
    url = config.listen_url
    lines = [
        f"mitmlite listening on {bound}",
        f"CA: {loaded.cert_path} (SHA-256 {loaded.root.fingerprint_sha256[:23]}...)",
        "Try it:",
        f"  https_proxy={url} curl --cacert {loaded.cert_path} https://example.org/",
        f"  http_proxy={url} curl http://example.org/",
        "Trust the CA: open http://mitmlite.ca/ in a browser that uses the proxy",
    ]
    if config.insecure:
        lines.insert(0, INSECURE_WARNING)
    return "\n".join(lines)


INSECURE_WARNING = (
    "WARNING: --insecure: upstream certificates are NOT verified; anyone on the path to a "
    "server can read and change this traffic"
)


def run(config: Config, loaded: LoadedCA, env: ConnectionEnv, out: TextIO = sys.stdout) -> None:
    """Run the proxy in the foreground until Ctrl-C or SIGTERM."""
    if config.insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
    trio.run(_main, config, loaded, env, out)


async def _main(config: Config, loaded: LoadedCA, env: ConnectionEnv, out: TextIO) -> None:
    hooks = env.relay.hooks
    if hooks is not None:
        await hooks.lifecycle("load")
    try:
        await _serve_until_signal(config, loaded, env, out)
    finally:
        if hooks is not None:
            with trio.CancelScope(shield=True):
                await hooks.lifecycle("done")


async def _serve_until_signal(
    config: Config, loaded: LoadedCA, env: ConnectionEnv, out: TextIO
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(serve, config, env)
            out.write(banner(config, loaded, addresses) + "\n")
            out.flush()
            async for signum in signals:
                out.write(f"mitmlite: {signal.Signals(signum).name}, shutting down\n")
                out.flush()
                nursery.cancel_scope.cancel()
                break
