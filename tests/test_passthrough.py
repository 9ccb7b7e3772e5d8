"""Passthrough rules and the hosts learnt from clients that refuse our certificate."""

from __future__ import annotations

import pytest

from mitmlite.errors import ConfigError
from mitmlite.passthrough import HostRules, LearnedHosts, compile_rules


def test_no_rules_intercept_everything() -> None:
    assert not HostRules().passthrough("a.test", 443, "a.test")


def test_ignore_hosts_matches_host_port_and_sni() -> None:
    rules = compile_rules([r"\.pinned\.test:443$", "^bank"], [])
    assert rules.passthrough("app.pinned.test", 443)
    assert rules.passthrough("APP.PINNED.TEST", 443)  # case-insensitive, as host names are
    assert not rules.passthrough("app.pinned.test", 8443)  # the port is part of the match
    assert rules.passthrough("10.0.0.1", 443, sni="x.pinned.test")  # matched through the SNI
    assert rules.passthrough("bank.test", 443)
    assert not rules.passthrough("mybank.test", 443)
    assert not rules.passthrough("other.test", 443, sni="other.test")


def test_allow_hosts_intercepts_only_those() -> None:
    rules = compile_rules([], [r"(^|\.)example\.test:"])
    assert not rules.passthrough("example.test", 443)
    assert not rules.passthrough("www.example.test", 443)
    assert rules.passthrough("elsewhere.test", 443)
    assert not rules.passthrough("10.0.0.1", 443, sni="api.example.test")


def test_rules_refuse_bad_patterns_and_both_lists() -> None:
    with pytest.raises(ConfigError, match="not a regular expression"):
        compile_rules(["(unclosed"], [])
    with pytest.raises(ConfigError, match="cannot be combined"):
        compile_rules(["a"], ["b"])


def test_learned_hosts_are_case_insensitive_and_bounded() -> None:
    learned = LearnedHosts(limit=2)
    assert learned.add("Pinned.test.")
    assert not learned.add("pinned.test")
    assert "PINNED.TEST" in learned
    assert "other.test" not in learned
    learned.add("b.test")
    learned.add("c.test")
    assert len(learned) == 2
    assert "pinned.test" not in learned  # the oldest went first
    assert 42 not in learned
