"""The command line: ``mitmlite`` (run the proxy) and ``mitmlite ca init|show|export``.

Owns option parsing (every option also read from a ``MITMLITE_*`` variable), wiring the CA, the
leaf cache, the upstream context and the server together once, and turning any
``MitmliteError`` into one stderr line with exit status 2. Nothing imports this module.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, ParamSpec, TypeVar

import click
from cryptography.hazmat.primitives import serialization

from mitmlite import __version__
from mitmlite.auth import parse_proxy_auth
from mitmlite.ca.cache import LeafCache, leaves_dir
from mitmlite.ca.files import LoadedCA, default_home, init_ca, load_ca, load_or_init, write_file
from mitmlite.ca.trust import describe, instructions
from mitmlite.config import (
    DEFAULT_LISTEN,
    Config,
    Limits,
    Timeouts,
    is_loopback,
    parse_listen,
    parse_mode,
    parse_upstream_proxy,
)
from mitmlite.connection import TunnelPolicy
from mitmlite.errors import ConfigError, MitmliteError
from mitmlite.har import HarSink
from mitmlite.hooks import HookRunner
from mitmlite.log import Fanout, JsonLinesFile, LineLog, merged_capture
from mitmlite.passthrough import LearnedHosts, compile_rules
from mitmlite.scripts import Scripts
from mitmlite.server import build_env, run

P = ParamSpec("P")
R = TypeVar("R")
FC = TypeVar("FC", bound=Callable[..., Any])
# Defaults shown in --help come from the dataclasses, so they are stated once.
_T = Timeouts()
_L = Limits()


class Failure(click.ClickException):
    """A MitmliteError on its way to the user: one line on stderr, exit status 2."""

    exit_code = 2

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"mitmlite: error: {self.format_message()}", err=True)


def reports_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn MitmliteError (config, CA, scripts) into a Failure instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except MitmliteError as exc:
            raise Failure(str(exc)) from exc

    return wrapper


def ca_options(func: Callable[P, R]) -> Callable[P, R]:
    """The options that choose a CA, shared by running the proxy and ``ca show/export``."""
    func = click.option(
        "--ca-pass",
        envvar="MITMLITE_CA_PASS",
        show_envvar=True,
        help="Passphrase of an encrypted CA key.",
    )(func)
    func = click.option(
        "--ca-key",
        type=click.Path(path_type=Path),
        envvar="MITMLITE_CA_KEY",
        show_envvar=True,
        help="CA private key [default: in the --ca file, else its mkcert sibling *-key.pem].",
    )(func)
    return click.option(
        "--ca",
        "ca_path",
        type=click.Path(path_type=Path),
        envvar="MITMLITE_CA",
        show_envvar=True,
        help="Root CA certificate (PEM), e.g. mkcert's rootCA.pem "
        "[default: MITMLITE_HOME/rootCA.pem, created on first run].",
    )(func)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def obtain_ca(ca_path: Path | None, ca_key: Path | None, ca_pass: str | None) -> LoadedCA:
    """Load the chosen CA, or the home CA (creating it on first use with a notice)."""
    password = ca_pass.encode() if ca_pass else None
    if ca_path is not None:
        loaded = load_ca(ca_path, ca_key, password, now_utc())
    else:
        home = default_home(os.environ)
        loaded, created = load_or_init(home, now_utc())
        if created:
            click.echo(f"mitmlite: created a new root CA in {home}", err=True)
            click.echo(instructions(loaded.cert_path), err=True)
    for warning in loaded.warnings:
        click.echo(f"mitmlite: {warning}", err=True)
    return loaded


def leaf_cache(loaded: LoadedCA, max_hosts: int) -> LeafCache:
    """The leaf cache beside the CA, or in a private temp dir when the CA's folder is read-only."""
    try:
        return LeafCache(loaded.root, leaves_dir(loaded.cert_path.parent), max_hosts=max_hosts)
    except OSError:
        fallback = Path(tempfile.mkdtemp(prefix="mitmlite-leaves-"))
        return LeafCache(loaded.root, fallback, max_hosts=max_hosts)


def tuning(flag: str, kind: type, default: float, text: str) -> Callable[[FC], FC]:
    """A numeric tuning option whose environment variable is derived from its flag."""
    env = "MITMLITE_" + flag.lstrip("-").replace("-", "_").upper()
    return click.option(flag, type=kind, default=default, envvar=env, show_envvar=True, help=text)


@click.group(invoke_without_command=True, context_settings={"show_default": True})
@click.version_option(__version__, prog_name="mitmlite")
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    envvar="MITMLITE_LISTEN",
    show_envvar=True,
    help="Address to accept proxy clients on; a non-loopback address exposes the proxy.",
)
@ca_options
@click.option(
    "--upstream-ca",
    "upstream_cas",
    multiple=True,
    type=click.Path(path_type=Path),
    envvar="MITMLITE_UPSTREAM_CA",
    show_envvar=True,
    help="Extra CA (PEM) to trust for upstream servers, besides the system store; repeatable.",
)
@click.option(
    "--insecure",
    is_flag=True,
    envvar="MITMLITE_INSECURE",
    show_envvar=True,
    help="DANGEROUS: do not verify upstream certificates.",
)
@click.option(
    "--mode",
    default="regular",
    envvar="MITMLITE_MODE",
    show_envvar=True,
    help="regular (a forward proxy) or reverse:https://HOST[:PORT] (every request goes there).",
)
@click.option(
    "--listen-tls",
    is_flag=True,
    envvar="MITMLITE_LISTEN_TLS",
    show_envvar=True,
    help="Clients reach the proxy over TLS (an https:// proxy URL), with a certificate from "
    "the CA for the listen address, or --cert.",
)
@click.option(
    "--cert",
    "--listen-cert",
    "cert_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    envvar="MITMLITE_CERT",
    show_envvar=True,
    help="Certificate chain (PEM) clients see in reverse mode or on the TLS listener, instead "
    "of one minted from the CA.",
)
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    envvar="MITMLITE_KEY",
    show_envvar=True,
    help="Private key (PEM) for --cert [default: in the --cert file].",
)
@click.option(
    "--upstream-proxy",
    default=None,
    envvar="MITMLITE_UPSTREAM_PROXY",
    show_envvar=True,
    help="Send every upstream connection through this proxy: http://[USER:PASS@]HOST:PORT or "
    "https://... (TLS to the proxy).",
)
@click.option(
    "--ignore-hosts",
    multiple=True,
    envvar="MITMLITE_IGNORE_HOSTS",
    show_envvar=True,
    help="Regex on host:port (CONNECT target or SNI): such tunnels pass through untouched; "
    "repeatable.",
)
@click.option(
    "--allow-hosts",
    multiple=True,
    envvar="MITMLITE_ALLOW_HOSTS",
    show_envvar=True,
    help="Regex on host:port: intercept only these tunnels, pass the rest through; repeatable.",
)
@click.option(
    "--auto-passthrough",
    is_flag=True,
    envvar="MITMLITE_AUTO_PASSTHROUGH",
    show_envvar=True,
    help="A host whose client refuses our certificate (pinning) is tunnelled untouched from "
    "its next connection on.",
)
@click.option(
    "--upstream-cert",
    is_flag=True,
    envvar="MITMLITE_UPSTREAM_CERT",
    show_envvar=True,
    help="Connect upstream before answering the client and copy the upstream certificate's "
    "names into the leaf (as mitmproxy does); slower: the handshakes no longer overlap.",
)
@click.option(
    "--clienthello-log",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    envvar="MITMLITE_CLIENTHELLO_LOG",
    show_envvar=True,
    help="Append each tunnel's parsed ClientHello (with JA3/JA4) to this file as JSON lines.",
)
@click.option(
    "--proxy-auth",
    default=None,
    envvar="MITMLITE_PROXY_AUTH",
    show_envvar=True,
    help="Require Basic proxy credentials: USER:PASSWORD, or @FILE in htpasswd format "
    "(bcrypt -B or {SHA} entries).",
)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    envvar="MITMLITE_QUIET",
    show_envvar=True,
    help="No line for successful flows; errors still print.",
)
@click.option(
    "-s",
    "--script",
    "scripts",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="MITMLITE_SCRIPT",
    show_envvar=True,
    help="Hook script (Python) to load; repeatable, hooks run in the order given.",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    envvar="MITMLITE_VERBOSE",
    show_envvar=True,
    help="-v adds request and response headers to each flow line, -vv also the bodies.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    envvar="MITMLITE_LOG_FORMAT",
    show_envvar=True,
    help="json: one JSON object per flow and per event, for machines.",
)
@click.option(
    "--har",
    "har_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    envvar="MITMLITE_HAR",
    show_envvar=True,
    help="Write every flow to this HAR 1.2 file (rewritten every few seconds and on exit).",
)
@tuning("--har-body-size", int, 1024 * 1024, "Bytes of each body kept in the HAR file.")
@tuning("--shutdown-timeout", float, _T.shutdown, "Seconds flows may finish after Ctrl-C.")
@tuning(
    "--max-body-size", int, _L.max_body_bytes, "Bytes of body buffered for hooks; more streams."
)
@tuning("--connect-timeout", float, _T.connect, "Seconds to connect to an upstream.")
@tuning("--handshake-timeout", float, _T.handshake, "Seconds for a TLS handshake.")
@tuning("--idle-timeout", float, _T.idle, "Close keep-alive connections idle this long (s).")
@tuning("--header-timeout", float, _T.request_header, "Seconds for a request head (408).")
@tuning("--read-timeout", float, _T.upstream_response, "Seconds to wait for a response (504).")
@tuning("--body-timeout", float, _T.read, "Seconds a body may go without a byte, either way.")
@tuning("--max-header-size", int, _L.max_header_bytes, "Bytes of request head before a 431.")
@tuning("--max-connections", int, _L.max_connections, "Concurrent client connections.")
@tuning("--leaf-cache-size", int, _L.leaf_cache_hosts, "Hosts whose leaves stay cached.")
@click.pass_context
@reports_errors
def cli(ctx: click.Context, /, **options: Any) -> None:
    """mitmlite: an intercepting HTTPS proxy. Without a command, it runs the proxy."""
    if ctx.invoked_subcommand is not None:
        return
    config = build_config(options)
    loaded = obtain_ca(options["ca_path"], options["ca_key"], options["ca_pass"])
    cache = leaf_cache(loaded, config.limits.leaf_cache_hosts)
    warn_if_exposed(config)
    log = LineLog(
        sys.stdout,
        quiet=config.quiet,
        verbosity=options["verbose"],
        json_lines=options["log_format"] == "json",
    )
    hooks = load_hooks(config, log)
    auth = parse_proxy_auth(options["proxy_auth"]) if options["proxy_auth"] else None
    if auth is not None and config.reverse is not None:
        # A reverse proxy's clients do not send Proxy-Authorization; accepting the option
        # would leave the user believing it protects something.
        raise ConfigError("--proxy-auth applies to the forward proxy, not --mode reverse")
    policy = tunnel_policy(options)
    har_path: Path | None = options["har_path"]
    if har_path is None:
        env = build_env(config, cache, log, hooks, capture=log.capture, auth=auth, policy=policy)
        run(config, loaded, env)
        return
    har = HarSink(har_path, options["har_body_size"])
    har.write(har_path)  # fails now, with exit 2, if the file cannot be written
    capture = merged_capture(log.capture, har.capture)
    sinks = Fanout([log, har])
    env = build_env(config, cache, sinks, hooks, capture=capture, auth=auth, policy=policy)

    def flush() -> None:
        # A full disk or a removed directory must not stop the proxy: say so and go on.
        try:
            har.flush_if_dirty(har_path)
        except OSError as exc:
            log.event("har", f"error: cannot write {har_path}: {exc.strerror or exc}")

    run(config, loaded, env, flush=flush)


def load_hooks(config: Config, log: LineLog) -> HookRunner | None:
    """Import the -s scripts now, so one that cannot load stops the start with exit 2."""
    if not config.scripts:
        return None

    def report(message: str) -> None:
        log.event("script", message)

    scripts = Scripts(config.scripts, report)
    scripts.load()
    return HookRunner(scripts, report)


def tunnel_policy(options: dict[str, Any]) -> TunnelPolicy:
    """Passthrough rules and ClientHello reporting, from the options."""
    path: Path | None = options["clienthello_log"]
    return TunnelPolicy(
        rules=compile_rules(options["ignore_hosts"], options["allow_hosts"]),
        learned=LearnedHosts() if options["auto_passthrough"] else None,
        hello_log=JsonLinesFile(path) if path is not None else None,
        show_hellos=options["verbose"] >= 1,
        upstream_cert=options["upstream_cert"],
    )


def cert_pair(cert: Path | None, key: Path | None) -> tuple[Path, Path] | None:
    if cert is None:
        if key is not None:
            raise ConfigError("--key needs --cert")
        return None
    return cert, key or cert


def build_config(options: dict[str, Any]) -> Config:
    """Turn validated click values into the immutable Config."""
    host, port = parse_listen(options["listen"])
    timeouts = Timeouts(
        connect=options["connect_timeout"],
        handshake=options["handshake_timeout"],
        idle=options["idle_timeout"],
        request_header=options["header_timeout"],
        upstream_response=options["read_timeout"],
        read=options["body_timeout"],
        shutdown=options["shutdown_timeout"],
    )
    limits = Limits(
        max_header_bytes=options["max_header_size"],
        max_connections=options["max_connections"],
        leaf_cache_hosts=options["leaf_cache_size"],
        max_body_bytes=options["max_body_size"],
    )
    return Config(
        listen_host=host,
        listen_port=port,
        upstream_cas=tuple(options["upstream_cas"]),
        insecure=options["insecure"],
        quiet=options["quiet"],
        scripts=tuple(options["scripts"]),
        reverse=parse_mode(options["mode"]),
        listen_tls=options["listen_tls"],
        upstream_proxy=(
            parse_upstream_proxy(options["upstream_proxy"]) if options["upstream_proxy"] else None
        ),
        cert=cert_pair(options["cert_path"], options["key_path"]),
        timeouts=timeouts,
        limits=limits,
    )


@cli.group()
def ca() -> None:
    """Create, show and export the root CA."""


@ca.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), required=False)
@click.option("--rsa", is_flag=True, help="RSA 3072 key instead of EC P-256, for old clients.")
@reports_errors
def ca_init(directory: Path | None, rsa: bool) -> None:
    """Create rootCA.pem and rootCA-key.pem in DIRECTORY [default: MITMLITE_HOME]."""
    target = directory or default_home(os.environ)
    loaded = init_ca(target, now_utc(), "rsa" if rsa else "ec")
    click.echo(f"created {loaded.cert_path} and {loaded.key_path} (mode 0600)")
    click.echo(describe(loaded.root, loaded.cert_path))
    click.echo(instructions(loaded.cert_path))


@ca.command("show")
@ca_options
@reports_errors
def ca_show(ca_path: Path | None, ca_key: Path | None, ca_pass: str | None) -> None:
    """Print the CA's subject, validity and fingerprint, and how to trust it."""
    loaded = obtain_ca(ca_path, ca_key, ca_pass)
    click.echo(describe(loaded.root, loaded.cert_path))
    click.echo(instructions(loaded.cert_path))


@ca.command("export")
@ca_options
@click.option("--der", is_flag=True, help="DER (.cer/.crt for Windows, Android) instead of PEM.")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="File to write [default: stdout for PEM].")  # fmt: skip
@reports_errors
def ca_export(
    ca_path: Path | None, ca_key: Path | None, ca_pass: str | None, der: bool, output: Path | None
) -> None:
    """Export the CA certificate (never its key) as PEM or DER."""
    loaded = obtain_ca(ca_path, ca_key, ca_pass)
    encoding = serialization.Encoding.DER if der else serialization.Encoding.PEM
    data = loaded.root.cert.public_bytes(encoding)
    if output is not None:
        write_file(output, data, mode=0o644)
        click.echo(f"wrote {output}", err=True)
    elif der and sys.stdout.isatty():
        raise Failure("refusing to write DER to a terminal; use -o FILE")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="mitmlite")


def warn_if_exposed(config: Config) -> None:
    """Binding beyond loopback lets others on the network use the proxy and see its traffic."""
    if not is_loopback(config.listen_host):
        click.echo(
            f"mitmlite: WARNING: listening on {config.listen_host}, not loopback: anyone who can "
            "reach this address can use the proxy",
            err=True,
        )
