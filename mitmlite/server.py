"""The listener: accepts proxy clients and runs each connection in its own task.

Owns the listening sockets, the handler nursery, the cap on concurrent connections, isolation
(one function catches whatever a connection raises, logs one line, and closes it, so a failing
connection never touches another), signal handling for a clean stop, and the start-up banner.
"""

from __future__ import annotations

import errno
import functools
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import TextIO

import trio

from mitmlite.allocator import RELEASE_SECONDS, release_free_heap, tune_for_bulk_io
from mitmlite.auth import Credentials
from mitmlite.ca.cache import LeafCache
from mitmlite.ca.files import LoadedCA
from mitmlite.config import Config
from mitmlite.connection import ConnectionEnv, TunnelPolicy, peer_name
from mitmlite.flow import Capture, FlowSink
from mitmlite.hooks import HookRunner
from mitmlite.modes import Handler, handler_for
from mitmlite.pool import PooledConnector, UpstreamPool
from mitmlite.relay import RelayEnv
from mitmlite.streams import deepen_send_queue
from mitmlite.tls.contexts import upstream_context
from mitmlite.upstream import Connector, TCPConnector
from mitmlite.upstream_proxy import ProxiedConnector

# accept() fails with these when the process runs out of descriptors or memory: back off and
# retry instead of dying, the way trio.serve_listeners does.
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_BACKOFF = 0.1
# How long and how much a closing connection may drain before it is closed regardless.
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 1024 * 1024
# How often the HAR file is rewritten while the proxy runs (only when new flows arrived).
FLUSH_SECONDS = 5.0
# An idle upstream waits this long for another client connection to the same destination;
# servers commonly keep idle connections 60-75 s (nginx), so this stays under theirs.
POOL_IDLE_SECONDS = 30.0

Address = tuple[str, int]


async def serve(
    config: Config,
    env: ConnectionEnv,
    connections: trio.Nursery | None = None,
    *,
    handler: Handler | None = None,
    task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen and serve until cancelled; reports the bound addresses through ``task_status``.

    Connections run in ``connections`` when given, so that cancelling this task stops accepting
    while the connections already accepted go on (a graceful stop); else in our own nursery.
    """
    listeners = await trio.open_tcp_listeners(config.listen_port, host=config.listen_host)
    limiter = trio.CapacityLimiter(config.limits.max_connections)
    serve_one = handler or handler_for(config, env)
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                target = connections or nursery
                nursery.start_soon(_accept_loop, listener, limiter, env, serve_one, target)
            task_status.started([listener.socket.getsockname()[:2] for listener in listeners])
    finally:
        if env.relay.pool is not None:  # connections still running close theirs when done
            with trio.CancelScope(shield=True):
                await env.relay.pool.aclose()


async def _accept_loop(
    listener: trio.SocketListener,
    limiter: trio.CapacityLimiter,
    env: ConnectionEnv,
    handler: Handler,
    nursery: trio.Nursery,
) -> None:
    async with listener:
        full = False
        while True:
            token = object()
            # Waiting for a free slot before accept() leaves extra clients in the kernel's
            # backlog instead of costing us a task and a descriptor each. They wait unseen, so
            # the log says so, once each time the limit is reached.
            if limiter.available_tokens == 0 and not full:
                limit = int(limiter.total_tokens)
                env.relay.sink.event(
                    "proxy",
                    f"connection limit reached (--max-connections {limit}): "
                    "new clients wait until a connection closes",
                )
            full = limiter.available_tokens == 0
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
            release = functools.partial(limiter.release_on_behalf_of, token)
            nursery.start_soon(_isolated, env, handler, stream, release)


async def _isolated(
    env: ConnectionEnv,
    handler: Handler,
    stream: trio.SocketStream,
    release: Callable[[], None],
) -> None:
    """Run one connection; whatever it raises stays here, logged in one line."""
    deepen_send_queue(stream)
    try:
        await handler(stream)
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
    config: Config,
    cache: LeafCache,
    sink: FlowSink,
    hooks: HookRunner | None = None,
    *,
    capture: Capture | None = None,
    auth: Credentials | None = None,
    policy: TunnelPolicy | None = None,
) -> ConnectionEnv:
    """The shared, per-process pieces: built once, passed down, never global."""
    tls = upstream_context(config.upstream_cas, insecure=config.insecure)
    timeouts = config.timeouts
    connector: Connector = TCPConnector(tls, timeouts.connect, timeouts.handshake)
    if config.upstream_proxy is not None:
        connector = ProxiedConnector(config.upstream_proxy, tls, timeouts.connect,
                                     timeouts.handshake)  # fmt: skip
    pool = UpstreamPool(idle_limit=min(timeouts.idle, POOL_IDLE_SECONDS))
    connector = PooledConnector(connector, pool)
    relay = RelayEnv(
        config,
        connector,
        sink,
        hooks,
        ca=cache.root,
        capture=capture or Capture(),
        auth=auth,
        pool=pool,
    )
    return ConnectionEnv(relay=relay, leaves=cache, policy=policy or TunnelPolicy())


def banner(config: Config, loaded: LoadedCA, addresses: list[Address]) -> str:
    """What the user sees at start: where we listen, which CA, a line to paste."""
    bound = ", ".join(f"{host}:{port}" for host, port in addresses)
    url = config.listen_url
    ca = loaded.cert_path
    lines = [
        f"mitmlite listening on {bound}",
        f"CA: {ca} (SHA-256 {loaded.root.fingerprint_sha256[:23]}...)",
        "Try it:",
    ]
    if config.reverse is not None:
        lines.insert(1, f"Reverse proxy for {config.reverse.scheme}://{config.reverse.authority}")
        port = addresses[0][1] if addresses else config.listen_port
        lines.append(f"  curl --cacert {ca} https://localhost:{port}/")
    elif config.listen_tls:
        tls_url = url.replace("http://", "https://", 1)
        lines += [
            f"  curl --proxy {tls_url} --proxy-cacert {ca} --cacert {ca} https://example.org/",
            "Trust the CA: open http://mitmlite.ca/ in a browser that uses the proxy",
        ]
    else:
        lines += [
            f"  https_proxy={url} curl --cacert {ca} https://example.org/",
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


Flush = Callable[[], None]


def run(
    config: Config,
    loaded: LoadedCA,
    env: ConnectionEnv,
    out: TextIO = sys.stdout,
    flush: Flush | None = None,
) -> None:
    """Run the proxy in the foreground until Ctrl-C or SIGTERM, then stop gracefully.

    ``flush`` (the HAR writer) runs every few seconds and once more at the very end.
    """
    if config.insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
    handler = handler_for(config, env)  # a bad --cert fails here, before anything listens
    tune_for_bulk_io()
    trio.run(_main, config, loaded, env, out, flush, handler)


async def _main(
    config: Config,
    loaded: LoadedCA,
    env: ConnectionEnv,
    out: TextIO,
    flush: Flush | None,
    handler: Handler,
) -> None:
    hooks = env.relay.hooks
    if hooks is not None:
        await hooks.lifecycle("load")
    try:
        await _serve_until_signal(config, loaded, env, out, flush, handler)
    finally:
        if hooks is not None:
            with trio.CancelScope(shield=True):
                await hooks.lifecycle("done")
        if env.relay.pool is not None:
            with trio.CancelScope(shield=True):
                await env.relay.pool.aclose()
        if flush is not None:
            flush()


async def _serve_until_signal(
    config: Config,
    loaded: LoadedCA,
    env: ConnectionEnv,
    out: TextIO,
    flush: Flush | None,
    handler: Handler,
) -> None:
    def say(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    grace = config.timeouts.shutdown
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    addresses = await accepting.start(
                        functools.partial(serve, handler=handler), config, env, connections
                    )
                    say(banner(config, loaded, addresses))
                    if flush is not None:
                        accepting.start_soon(_every, FLUSH_SECONDS, flush)
                    accepting.start_soon(_every, RELEASE_SECONDS, release_free_heap)
                    signum = await signals.__anext__()
                    accepting.cancel_scope.cancel()
                # Not accepting any more: flows in progress may finish within the grace time,
                # connections idle between requests close now.
                env.relay.idle.close_all()
                busy = len(connections.child_tasks)
                name = signal.Signals(signum).name
                say(f"mitmlite: {name}: stopped accepting; waiting up to {grace:g} s for "
                    f"{busy} connection(s) to finish (again to quit now)")  # fmt: skip
                connections.cancel_scope.deadline = trio.current_time() + grace
                outer.start_soon(_quit_on_signal, signals, connections.cancel_scope, say)
            outer.cancel_scope.cancel()  # every connection is done: stop watching for signals


async def _quit_on_signal(
    signals: AsyncIterator[int], scope: trio.CancelScope, say: Callable[[str], None]
) -> None:
    signum = await signals.__anext__()
    say(f"mitmlite: {signal.Signals(signum).name} again: closing every connection now")
    scope.cancel()


async def _every(seconds: float, chore: Callable[[], object]) -> None:
    # In a worker thread: a HAR rewrite is blocking file I/O that grows with the run, and the
    # connections must not stall on it (HarSink serialises its writes with a lock).
    while True:
        await trio.sleep(seconds)
        await trio.to_thread.run_sync(chore)  # the chore reports its own failures
