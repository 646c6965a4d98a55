"""Secure by default: when the gateway may start, given who can reach it and how it authenticates.

One rule, checked by the gateway before it listens (so every way of starting it obeys) and by
``make up`` before it starts anything (so the user reads the reason, not a log file):

- reachable beyond this host's loopback (``STACK_HOST``, or ``GATEWAY_PUBLISHED_HOST`` where a
  container runtime publishes the port) only with authentication: ``GATEWAY_AUTH=token`` or ``mlflow``;
- ``GATEWAY_AUTH=mlflow`` needs the tracking server's admin password (never MLflow's default);
- ``GATEWAY_AUTH=token`` needs a ``GATEWAY_API_TOKEN`` that is not a placeholder, of at least
  :data:`MIN_TOKEN_LENGTH` characters when reachable beyond loopback;
- a placeholder secret (``.env.example``'s ``change-me``, and the usual ones) is refused wherever it
  is given, as the FastAPI full-stack template refuses ``changethis``.

Standard library only at run time: the tracking server's image runs :func:`admin_password_refusal`
too (``stack/tracking_auth.py``) without the project's dependencies.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from contract.settings import Settings

# .env.example's placeholders (a unit test checks every secret there is one of these) and the usual ones
PLACEHOLDER_SECRETS = frozenset({"change-me", "changeme", "change-this", "changethis", "secret", "password",
                                 "token", "admin", "admin1234", "password1234"})
MIN_TOKEN_LENGTH = 16


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost, or 0.0.0.0's like: may be reached from elsewhere


def reachable_on(settings: Settings) -> str:
    """The address other machines would reach the gateway on."""
    return settings.published_host or settings.host


def is_placeholder(secret: str | None) -> bool:
    return secret is not None and secret.strip().lower() in PLACEHOLDER_SECRETS


def refusals(settings: Settings) -> list[str]:
    """Why the gateway must not start with these settings, one line each; empty when it may."""
    found = []
    where = reachable_on(settings)
    if settings.auth_mode == "none" and not is_loopback(where):
        setting = "GATEWAY_PUBLISHED_HOST" if settings.published_host else "STACK_HOST"
        found.append(f"the gateway would be reachable beyond this host ({setting}={where}) without "
                     "authentication: set GATEWAY_AUTH=token and GATEWAY_API_TOKEN (at least "
                     f"{MIN_TOKEN_LENGTH} characters, e.g. `openssl rand -hex 32`) or GATEWAY_AUTH=mlflow, or keep "
                     "it on 127.0.0.1")
    if settings.auth_mode == "token":
        token = settings.api_token or ""
        if not token:
            found.append("GATEWAY_AUTH=token needs GATEWAY_API_TOKEN (e.g. `openssl rand -hex 32`)")
        elif is_placeholder(token):
            found.append(f"GATEWAY_API_TOKEN is the placeholder {token!r}: set a token of your own "
                         "(e.g. `openssl rand -hex 32`)")
        elif len(token) < MIN_TOKEN_LENGTH and not is_loopback(where):
            found.append(f"GATEWAY_API_TOKEN has {len(token)} characters: use at least {MIN_TOKEN_LENGTH} "
                         "(e.g. `openssl rand -hex 32`)")
    if settings.auth_mode == "mlflow":
        if problem := admin_password_refusal(settings.mlflow_admin_username, settings.mlflow_admin_password):
            found.append(problem)
    if is_placeholder(settings.postgres_password):
        found.append(f"the PostgreSQL password (POSTGRES_PASSWORD in .env, PGPASSWORD here) is the placeholder "
                     f"{settings.postgres_password!r}: set a password of your own")
    return found


def admin_password_refusal(username: str, password: str | None) -> str | None:
    """Why the auth app's admin password will not do, or None. Checked before the tracking server first
    starts, since MLflow creates the admin then and never updates its password from the environment."""
    if not password:
        return ("GATEWAY_AUTH=mlflow needs MLFLOW_AUTH_ADMIN_PASSWORD: the tracking server's admin "
                f"({username}), created on its first start (MLflow has no default)")
    if is_placeholder(password) or len(password) < MIN_TOKEN_LENGTH:
        return (f"MLFLOW_AUTH_ADMIN_PASSWORD must be a password of your own of at least {MIN_TOKEN_LENGTH} "
                "characters (e.g. `openssl rand -hex 24`)")
    return None
