"""Secure by default: the rule that decides whether the gateway may start."""

from __future__ import annotations

import pytest

from contract.exposure import MIN_TOKEN_LENGTH, PLACEHOLDER_SECRETS, is_loopback, refusals
from contract.settings import Settings
from tests.conftest import PROJECT_DIR

STRONG = "9f2c" * 8


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("gateway.example.org", False),
])
def test_loopback_is_the_loopback_addresses_and_localhost_only(host, loopback):
    assert is_loopback(host) is loopback


def test_without_authentication_the_gateway_starts_on_loopback_only():
    assert refusals(settings()) == []  # `make up` as today
    exposed = refusals(settings(host="0.0.0.0"))
    assert len(exposed) == 1 and "STACK_HOST=0.0.0.0" in exposed[0] and "GATEWAY_AUTH=token" in exposed[0]
    # in a container it binds 0.0.0.0; what counts is where its port is published
    assert refusals(settings(host="0.0.0.0", published_host="127.0.0.1")) == []
    published = refusals(settings(host="0.0.0.0", published_host="0.0.0.0"))
    assert len(published) == 1 and "GATEWAY_PUBLISHED_HOST=0.0.0.0" in published[0]
    assert refusals(settings(host="0.0.0.0", auth="none", api_token=STRONG)) != []  # `none` means none


def test_a_token_is_required_real_and_when_exposed_long_enough():
    assert refusals(settings(host="0.0.0.0", api_token=STRONG)) == []  # a token alone means GATEWAY_AUTH=token
    assert "needs GATEWAY_API_TOKEN" in refusals(settings(auth="token"))[0]
    assert "placeholder 'change-me'" in refusals(settings(api_token="change-me"))[0]  # even on loopback
    short = "x" * (MIN_TOKEN_LENGTH - 1)
    assert refusals(settings(api_token=short)) == []  # on loopback, a short one is yours to choose
    assert f"at least {MIN_TOKEN_LENGTH}" in refusals(settings(host="0.0.0.0", api_token=short))[0]
    assert refusals(settings(host="0.0.0.0", api_token="x" * MIN_TOKEN_LENGTH)) == []


def test_a_placeholder_postgres_password_is_refused_without_printing_a_real_one():
    assert "PostgreSQL password" in refusals(settings(postgres_password="change-me"))[0]
    assert refusals(settings(postgres_password="p@ss:w/rd%#?&=")) == []
    assert "p@ss" not in repr(settings(postgres_password="p@ss:w/rd", api_token=STRONG))
    assert STRONG not in repr(settings(api_token=STRONG))


def test_every_secret_in_env_example_is_a_placeholder_the_rule_refuses():
    example = dict(line.split("=", 1) for line in (PROJECT_DIR / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    secrets = {k: v for k, v in example.items() if "PASSWORD" in k or "TOKEN" in k}
    assert set(secrets) == {"POSTGRES_PASSWORD", "GATEWAY_API_TOKEN", "MLFLOW_AUTH_ADMIN_PASSWORD"}
    assert all(value in PLACEHOLDER_SECRETS for value in secrets.values()), secrets
    assert example["GATEWAY_AUTH"] == "token" and example["GATEWAY_BIND"] == "127.0.0.1"


def test_mlflow_auth_needs_an_admin_password_of_ones_own_and_counts_as_authentication():
    assert "needs MLFLOW_AUTH_ADMIN_PASSWORD" in refusals(settings(auth="mlflow"))[0]
    assert "of your own" in refusals(settings(auth="mlflow", mlflow_admin_password="change-me"))[0]
    assert "of your own" in refusals(settings(auth="mlflow", mlflow_admin_password="short"))[0]
    assert refusals(settings(auth="mlflow", mlflow_admin_password=STRONG, host="0.0.0.0")) == []
    assert STRONG not in repr(settings(auth="mlflow", mlflow_admin_password=STRONG))
