"""The error tree: every error has a one-line ``str()`` and, where it reaches a client, a status."""

from __future__ import annotations

import pytest

from mitmlite.errors import (
    CAError,
    ClientError,
    ClientTimeoutError,
    ConfigError,
    HeaderTooLargeError,
    InvalidHostError,
    MitmliteError,
    TargetTooLongError,
    UpstreamCertificateError,
    UpstreamError,
    UpstreamTimeoutError,
)

STATUSES: list[tuple[type[MitmliteError], int | None]] = [
    (ClientError, 400),
    (InvalidHostError, 400),
    (HeaderTooLargeError, 431),
    (TargetTooLongError, 414),
    (ClientTimeoutError, 408),
    (UpstreamError, 502),
    (UpstreamCertificateError, 502),
    (UpstreamTimeoutError, 504),
    (ConfigError, None),
    (CAError, None),
    (MitmliteError, None),
]


@pytest.mark.parametrize(("cls", "status"), STATUSES)
def test_status_on_class_and_instance(cls: type[MitmliteError], status: int | None) -> None:
    assert cls.status == status
    assert cls("x").status == status


@pytest.mark.parametrize(("cls", "status"), STATUSES)
def test_str_is_the_one_line_message(cls: type[MitmliteError], status: int | None) -> None:
    message = "request header block exceeds 64 KiB"
    err = cls(message)
    assert str(err) == message
    assert err.message == message
    assert err.args == (message,)


def connect_refused() -> None:
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except OSError as exc:
        raise UpstreamError("cannot connect to a.test:80: Connection refused") from exc


def test_str_does_not_carry_the_class_name_or_cause() -> None:
    with pytest.raises(UpstreamError) as info:
        connect_refused()
    assert str(info.value) == "cannot connect to a.test:80: Connection refused"
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


@pytest.mark.parametrize(
    ("child", "parent"),
    [
        (HeaderTooLargeError, ClientError),
        (ClientTimeoutError, ClientError),
        (UpstreamCertificateError, UpstreamError),
        (UpstreamTimeoutError, UpstreamError),
        (CAError, ConfigError),
        (ClientError, MitmliteError),
        (InvalidHostError, MitmliteError),
        (ConfigError, MitmliteError),
        (UpstreamError, MitmliteError),
    ],
)
def test_hierarchy(child: type[MitmliteError], parent: type[MitmliteError]) -> None:
    assert issubclass(child, parent)


@pytest.mark.parametrize(
    ("cls", "not_parent"),
    [
        (UpstreamError, ClientError),  # a 502 is never mistaken for the client's fault
        (ClientError, UpstreamError),
        (ConfigError, UpstreamError),
        (InvalidHostError, ClientError),
        (UpstreamCertificateError, UpstreamTimeoutError),
    ],
)
def test_hierarchy_twins(cls: type[MitmliteError], not_parent: type[MitmliteError]) -> None:
    assert not issubclass(cls, not_parent)


def test_all_are_exceptions_not_base_exceptions() -> None:
    # The per-connection wrapper catches Exception only (DESIGN §4), so these must be Exceptions.
    for cls, _ in STATUSES:
        assert issubclass(cls, Exception)
