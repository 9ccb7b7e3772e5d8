"""The command line, in-process with CliRunner (messages, exit codes) and once as a subprocess."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mitmlite import __version__
from mitmlite.ca.authority import RootCA, create_root, mint_leaf
from mitmlite.ca.files import key_to_pem
from mitmlite.ca.names import leaf_name
from mitmlite.cli import cli
from mitmlite.config import Config

NOW = dt.datetime.now(dt.UTC)
TRUST_WORDS = [
    "update-ca-certificates",
    "update-ca-trust",
    "security add-trusted-cert",
    "certutil -addstore",
    "certutil -d sql:",
    "--cacert",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MITMLITE_HOME in tmp_path, every other MITMLITE_* variable unset, the server stubbed."""
    for name in list(os.environ):
        if name.startswith("MITMLITE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MITMLITE_HOME", str(tmp_path / "home"))

    def no_server(*args: object, **kwargs: object) -> None:
        raise AssertionError("the proxy started although the CA could not be loaded")

    monkeypatch.setattr("mitmlite.cli.run", no_server)
    return tmp_path / "home"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="mitmlite")


def fingerprint(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def assert_one_line_error(result: Result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr == f"mitmlite: error: {message}\n"
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_ca_init(home: Path, tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    result = invoke("ca", "init", str(directory))
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "rootCA-key.pem").stat().st_mode) == 0o600
    assert f"created {directory / 'rootCA.pem'} and {directory / 'rootCA-key.pem'}" in result.stdout
    assert fingerprint(directory / "rootCA.pem") in result.stdout
    assert "update-ca-certificates" in result.stdout
    assert not home.exists()
    key = serialization.load_pem_private_key((directory / "rootCA-key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)


def test_ca_init_rsa(home: Path, tmp_path: Path) -> None:
    assert invoke("ca", "init", "--rsa", str(tmp_path / "ca")).exit_code == 0
    key = serialization.load_pem_private_key(
        (tmp_path / "ca" / "rootCA-key.pem").read_bytes(), None
    )
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 3072


def test_ca_init_twice_refuses(home: Path, tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    assert invoke("ca", "init", str(directory)).exit_code == 0
    before = (directory / "rootCA-key.pem").read_bytes()
    result = invoke("ca", "init", str(directory))
    message = f"{directory / 'rootCA.pem'} already exists; refusing to overwrite a CA"
    assert_one_line_error(result, message)
    assert (directory / "rootCA-key.pem").read_bytes() == before


def test_ca_init_defaults_to_home(home: Path) -> None:
    assert invoke("ca", "init").exit_code == 0
    assert (home / "rootCA.pem").exists()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_ca_show(home: Path, tmp_path: Path) -> None:
    assert invoke("ca", "init", str(tmp_path / "ca")).exit_code == 0
    cert_path = tmp_path / "ca" / "rootCA.pem"
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    result = invoke("ca", "show", "--ca", str(cert_path))
    assert result.exit_code == 0, result.output
    assert f"subject:     {cert.subject.rfc4514_string()}" in result.stdout
    assert f"valid from:  {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC" in result.stdout
    assert f"valid until: {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC" in result.stdout
    assert f"SHA-256:     {fingerprint(cert_path)}" in result.stdout
    for word in TRUST_WORDS:
        assert word in result.stdout, word
    assert result.stderr == ""
    assert not home.exists()


def test_ca_show_creates_home_ca_once(home: Path) -> None:
    first = invoke("ca", "show")
    assert first.exit_code == 0, first.output
    assert first.stderr.startswith(f"mitmlite: created a new root CA in {home}\n")
    assert "NODE_EXTRA_CA_CERTS" in first.stderr
    assert fingerprint(home / "rootCA.pem") in first.stdout
    second = invoke("ca", "show")
    assert second.exit_code == 0
    assert second.stderr == ""
    assert second.stdout == first.stdout


def test_ca_export(home: Path, tmp_path: Path) -> None:
    assert invoke("ca", "init", str(tmp_path / "ca")).exit_code == 0
    cert_path = tmp_path / "ca" / "rootCA.pem"
    der = invoke("ca", "export", "--ca", str(cert_path), "--der", "-o", str(tmp_path / "ca.cer"))
    assert der.exit_code == 0, der.output
    cert = x509.load_der_x509_certificate((tmp_path / "ca.cer").read_bytes())
    assert cert == x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert b"PRIVATE" not in (tmp_path / "ca.cer").read_bytes()
    pem = invoke("ca", "export", "--ca", str(cert_path))
    assert pem.exit_code == 0, pem.output
    assert pem.stdout_bytes == cert_path.read_bytes()
    assert b"PRIVATE KEY" not in pem.stdout_bytes


def test_group_readable_key_warns(home: Path, tmp_path: Path) -> None:
    assert invoke("ca", "init", str(tmp_path / "ca")).exit_code == 0
    (tmp_path / "ca" / "rootCA-key.pem").chmod(0o644)
    result = invoke("ca", "show", "--ca", str(tmp_path / "ca" / "rootCA.pem"))
    assert result.exit_code == 0
    assert result.stderr.startswith("mitmlite: warning: CA key ")
    assert "readable by group or others (mode 0644)" in result.stderr


def test_passphrase_from_environment(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = create_root("cli test CA", NOW)
    cert_path = write_ca(tmp_path, root, password=b"s3cret")
    monkeypatch.setenv("MITMLITE_CA_PASS", "s3cret")
    assert invoke("ca", "show", "--ca", str(cert_path)).exit_code == 0
    monkeypatch.setenv("MITMLITE_CA_PASS", "wrong")
    assert invoke("ca", "show", "--ca", str(cert_path)).exit_code == 2


# -- every CA loading error stops the proxy before it starts: one line, exit status 2 ---------


def write_ca(
    directory: Path, root: RootCA, *, key: bytes | None = None, password: bytes | None = None
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rootCA.pem").write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))
    if password is not None:
        encryption = serialization.BestAvailableEncryption(password)
        key = root.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
    (directory / "rootCA-key.pem").write_bytes(key if key is not None else key_to_pem(root.key))
    (directory / "rootCA-key.pem").chmod(0o600)
    return directory / "rootCA.pem"


Case = Callable[[Path], tuple[list[str], str]]


def missing(d: Path) -> tuple[list[str], str]:
    return ["--ca", str(d / "nope.pem")], f"CA certificate {d / 'nope.pem'} does not exist"


def unreadable(d: Path) -> tuple[list[str], str]:
    (d / "loop.pem").symlink_to(d / "loop.pem")
    message = f"cannot read CA certificate {d / 'loop.pem'}: Too many levels of symbolic links"
    return ["--ca", str(d / "loop.pem")], message


def no_certificate(d: Path) -> tuple[list[str], str]:
    (d / "x.pem").write_bytes(key_to_pem(ec.generate_private_key(ec.SECP256R1())))
    return ["--ca", str(d / "x.pem")], f"no PEM certificate found in {d / 'x.pem'}"


def no_key(d: Path) -> tuple[list[str], str]:
    path = write_ca(d, create_root("t", NOW))
    (d / "rootCA-key.pem").unlink()
    looked = f"{path}, {d / 'rootCA-key.pem'}"
    return ["--ca", str(path)], f"no CA private key found; looked in: {looked} (use --ca-key)"


def no_explicit_key(d: Path) -> tuple[list[str], str]:
    path = write_ca(d, create_root("t", NOW))
    return ["--ca", str(path), "--ca-key", str(d / "k.pem")], f"CA key {d / 'k.pem'} does not exist"


def mismatch(d: Path) -> tuple[list[str], str]:
    other = key_to_pem(ec.generate_private_key(ec.SECP256R1()))
    path = write_ca(d, create_root("t", NOW), key=other)
    return ["--ca", str(path)], "the CA private key does not match the CA certificate"


def not_a_ca(d: Path) -> tuple[list[str], str]:
    root, key = create_root("t", NOW), ec.generate_private_key(ec.SECP256R1())
    leaf = mint_leaf(root, key, leaf_name("example.com"), NOW)
    path = write_ca(d, RootCA(cert=leaf, key=key))
    return ["--ca", str(path)], "certificate 'CN=example.com' is not a CA (no CA:TRUE)"


def expired(d: Path) -> tuple[list[str], str]:
    root = create_root("t", NOW - dt.timedelta(days=3651))
    when = f"{root.cert.not_valid_after_utc:%Y-%m-%d %H:%M}"
    return ["--ca", str(write_ca(d, root))], f"the CA expired on {when} UTC"


def not_yet_valid(d: Path) -> tuple[list[str], str]:
    root = create_root("t", NOW + dt.timedelta(days=3))
    when = f"{root.cert.not_valid_before_utc:%Y-%m-%d %H:%M}"
    return ["--ca", str(write_ca(d, root))], f"the CA is not valid before {when} UTC"


def encrypted(d: Path) -> tuple[list[str], str]:
    path = write_ca(d, create_root("t", NOW), password=b"s3cret")
    key = d / "rootCA-key.pem"
    message = (
        f"the CA key in {key} is encrypted: give its passphrase with --ca-pass or MITMLITE_CA_PASS"
    )
    return ["--ca", str(path)], message


def wrong_passphrase(d: Path) -> tuple[list[str], str]:
    path = write_ca(d, create_root("t", NOW), password=b"s3cret")
    message = (
        f"cannot read the CA key in {d / 'rootCA-key.pem'}: wrong passphrase or not a valid PEM key"
    )
    return ["--ca", str(path), "--ca-pass", "wrong"], message


@pytest.mark.parametrize(
    "case",
    [
        missing,
        unreadable,
        no_certificate,
        no_key,
        no_explicit_key,
        mismatch,
        not_a_ca,
        expired,
        not_yet_valid,
        encrypted,
        wrong_passphrase,
    ],
)
def test_loading_errors_exit_2_before_serving(home: Path, tmp_path: Path, case: Case) -> None:
    options, message = case(tmp_path)
    for command in (["--listen", "127.0.0.1:0", *options], ["ca", "show", *options]):
        assert_one_line_error(invoke(*command), message)
    assert not home.exists()  # an explicit --ca never creates the home CA


def test_directory_as_ca_is_one_line(home: Path, tmp_path: Path) -> None:
    result = invoke("--listen", "127.0.0.1:0", "--ca", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr.startswith("mitmlite: error: ")
    assert result.stderr.count("\n") == 1


def test_working_ca_reaches_the_server(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The twin of the loading errors: a good CA gets past loading and starts the proxy.
    started: list[object] = []
    monkeypatch.setattr("mitmlite.cli.run", lambda *args: started.append(args))
    path = write_ca(tmp_path, create_root("t", NOW))
    result = invoke("--listen", "127.0.0.1:0", "--ca", str(path))
    assert result.exit_code == 0, result.output
    assert len(started) == 1


def test_bad_listen_address(home: Path) -> None:
    result = invoke("--listen", "127.0.0.1:x")
    assert_one_line_error(result, "port in listen address '127.0.0.1:x' is not a number in 0-65535")
    assert not home.exists()


# -- as a subprocess ------------------------------------------------------------------------------


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MITMLITE_")}
    return env | {"MITMLITE_HOME": str(home)}


def test_console_script_version(home: Path) -> None:
    script = Path(sys.executable).with_name("mitmlite")
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, env=clean_env(home), check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"mitmlite, version {__version__}\n"


def test_python_m_ca_init(home: Path, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "mitmlite", "ca", "init", str(tmp_path / "ca")]
    result = subprocess.run(argv, capture_output=True, text=True, env=clean_env(home), check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ca" / "rootCA.pem").exists()
    again = subprocess.run(argv, capture_output=True, text=True, env=clean_env(home), check=False)
    assert again.returncode == 2
    assert again.stderr.startswith("mitmlite: error: ")
    assert again.stderr.count("\n") == 1


def test_missing_upstream_ca_is_one_line(home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    result = invoke("--listen", "127.0.0.1:0", "--upstream-ca", str(missing))
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        f"mitmlite: error: cannot load upstream CA {missing}: [Errno 2] No such file or directory"
    )
    assert "Traceback" not in result.output


def test_help_lists_every_option_with_its_environment_variable() -> None:
    result = CliRunner().invoke(cli, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    for param in cli.params:
        if param.name in ("help", "version") or not isinstance(param, click.Option):
            continue
        line = next((line for line in result.output.splitlines() if param.opts[-1] in line), None)
        assert line is not None, f"{param.opts} missing from --help"
        assert str(param.envvar).startswith("MITMLITE_"), f"{param.opts} has no variable"
        assert str(param.envvar) in result.output, f"{param.envvar} not shown in --help"


def test_help_shows_defaults() -> None:
    result = CliRunner().invoke(cli, ["--help"], terminal_width=200)
    assert "default: 127.0.0.1:8080" in result.output
    assert "default: 33554432" in result.output


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"mitmlite, version {__version__}"


def test_timeouts_reach_the_config(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[object, ...]] = []
    monkeypatch.setattr("mitmlite.cli.run", lambda *args: started.append(args))
    monkeypatch.setenv("MITMLITE_BODY_TIMEOUT", "7")
    path = write_ca(tmp_path, create_root("t", NOW))
    result = invoke("--listen", "127.0.0.1:0", "--ca", str(path), "--read-timeout", "5")
    assert result.exit_code == 0, result.output
    config = next(arg for arg in started[0] if isinstance(arg, Config))
    assert (config.timeouts.upstream_response, config.timeouts.read) == (5.0, 7.0)
    # The twin: without them, the defaults.
    started.clear()
    monkeypatch.delenv("MITMLITE_BODY_TIMEOUT")
    assert invoke("--listen", "127.0.0.1:0", "--ca", str(path)).exit_code == 0
    config = next(arg for arg in started[0] if isinstance(arg, Config))
    assert (config.timeouts.upstream_response, config.timeouts.read) == (120.0, 300.0)
