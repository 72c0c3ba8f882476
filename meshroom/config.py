"""Settings: one table of options, read from MESHROOM_* variables and overridden by CLI flags.

The table drives the CLI flags, the environment variables and the README's
configuration table, so the three cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .auth import TokenKeys, generate_secret
from .auth.tokens import SYMMETRIC_ALGORITHMS
from .core import DuplicatePolicy, HubConfig
from .core.attendance import AttendanceConfig
from .core.limits import OriginPolicy
from .ice import DEFAULT_STUN_URLS, IceConfig

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """A setting that cannot work. The message is one line a user can act on."""


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(
        default=8765, metadata={"help": "port of the signaling WebSocket (/meetings)"}
    )
    http_port: int = field(
        default=8080,
        metadata={"help": "port of the HTTP API, health, metrics and Quart WebSocket; 0 = off"},
    )
    api_keys: str | None = field(
        default=None,
        metadata={"help": "comma-separated API keys for /api (Authorization: Bearer KEY)"},
    )
    api_key_file: str = field(
        default="meshroom.apikey",
        metadata={"help": "where the API key is read from, or created if no key is set"},
    )
    database_url: str = field(
        default="sqlite:///meshroom.db",
        metadata={"help": "SQLAlchemy URL: sqlite:///file.db or postgresql+psycopg://user@host/db"},
    )
    db_pool_size: int = field(default=10, metadata={"help": "database connections (not SQLite)"})
    auto_migrate: bool = field(
        default=False,
        metadata={"help": "upgrade an out-of-date database schema at start instead of refusing"},
    )
    attendance_heartbeat: float = field(
        default=15.0,
        metadata={"help": "seconds between last-seen stamps of live peers (crash recovery)"},
    )
    leave_retry_max: float = field(
        default=15.0,
        metadata={"help": "longest wait, seconds, between retries of unwritten attendance leaves"},
    )
    leave_flush_timeout: float = field(
        default=10.0,
        metadata={"help": "seconds shutdown waits to write attendance leaves still queued"},
    )
    secret: str | None = field(
        default=None,
        metadata={"help": "HS256 secret for access tokens (at least 32 bytes); see secret-file"},
    )
    secret_file: str = field(
        default="meshroom.secret",
        metadata={"help": "where the secret is read from, or created (mode 0600) if missing"},
    )
    jwt_algorithm: str = field(
        default="HS256",
        metadata={"help": "HS256, or RS256/ES256/EdDSA to verify with a public key"},
    )
    jwt_public_key_file: str | None = field(
        default=None,
        metadata={"help": "PEM public key that verifies tokens (asymmetric algorithms)"},
    )
    jwt_private_key_file: str | None = field(
        default=None,
        metadata={"help": "PEM private key for `meshroom token` (asymmetric algorithms)"},
    )
    jwt_audience: str = field(default="meshroom", metadata={"help": "required `aud` claim"})
    jwt_issuer: str = field(default="meshroom", metadata={"help": "required `iss` claim"})
    auth_timeout: float = field(
        default=10.0, metadata={"help": "seconds a new connection has to authenticate"}
    )
    close_timeout: float = field(
        default=5.0, metadata={"help": "seconds to flush and close a connection being removed"}
    )
    max_message_bytes: int = field(
        default=65536, metadata={"help": "largest client frame; bigger ones get FRAME_TOO_LARGE"}
    )
    outbox_size: int = field(
        default=2048, metadata={"help": "frames queued per peer before it counts as too slow"}
    )
    duplicate_policy: str = field(
        default="replace",
        metadata={"help": "same employee joins twice: replace (new wins) or reject (old stays)"},
    )
    heartbeat_interval: float = field(
        default=10.0,
        metadata={"help": "seconds of silence before a connection is pinged; 0 = no heartbeats"},
    )
    heartbeat_timeout: float = field(
        default=10.0,
        metadata={"help": "seconds a pinged connection has to answer, else it leaves (timeout)"},
    )
    resume_grace: float = field(
        default=15.0,
        metadata={"help": "seconds a dropped peer keeps its place for a resume; 0 = no resume"},
    )
    rate_limit: float = field(
        default=200.0,
        metadata={"help": "frames per second a connection may send on average; 0 = no limit"},
    )
    rate_burst: int = field(
        # A newcomer to a 50-peer mesh sends ~50 offers and a few hundred ICE candidates
        # in its first second; the burst allows that, and stays below outbox_size so one
        # sender alone cannot overflow a prompt reader's queue.
        default=1000, metadata={"help": "frames a connection may send at once (token bucket size)"}
    )
    max_room_peers: int = field(
        default=100, metadata={"help": "peers in one room (ROOM_FULL past it); 0 = no limit"}
    )
    max_connections: int = field(
        default=10000,
        metadata={"help": "WebSocket connections per process (HTTP 503 past it); 0 = no limit"},
    )
    allowed_origins: str = field(
        default="",
        metadata={"help": "comma-separated browser Origins allowed to connect; empty = any"},
    )
    tls_cert: str | None = field(
        default=None, metadata={"help": "PEM certificate (chain): serve wss:// and https://"}
    )
    tls_key: str | None = field(default=None, metadata={"help": "PEM private key of tls-cert"})
    shutdown_reconnect_after: float = field(
        default=5.0,
        metadata={"help": "reconnect hint of server:shutdown, seconds (each client: 1x-2x)"},
    )
    stun_urls: str = field(
        default=",".join(DEFAULT_STUN_URLS), metadata={"help": "comma-separated STUN URLs"}
    )
    turn_urls: str = field(default="", metadata={"help": "comma-separated TURN URLs"})
    turn_secret: str | None = field(
        default=None,
        metadata={"help": "coturn use-auth-secret: issue short-lived TURN credentials"},
    )
    turn_ttl: int = field(default=3600, metadata={"help": "lifetime of TURN credentials, seconds"})
    turn_username: str | None = field(default=None, metadata={"help": "static TURN username"})
    turn_credential: str | None = field(default=None, metadata={"help": "static TURN credential"})
    demo: bool = field(
        default=True,
        metadata={
            "help": "serve the demo meeting page at / and POST /demo/join (creates meetings "
            "without an API key); MESHROOM_DEMO=0 turns it off"
        },
    )
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR"})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then MESHROOM_<NAME> variables, then explicit overrides (CLI flags)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(env_name(f.name))
            if raw is not None:
                values[f.name] = _coerce(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def attendance_config(self) -> AttendanceConfig:
        for name in ("attendance_heartbeat", "leave_retry_max", "leave_flush_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{flag_name(name)[2:]} must be a positive number of seconds")
        return AttendanceConfig(
            heartbeat_interval=self.attendance_heartbeat,
            retry_max=self.leave_retry_max,
            retry_initial=min(0.5, self.leave_retry_max),
            flush_timeout=self.leave_flush_timeout,
        )

    def hub_config(self) -> HubConfig:
        try:
            policy = DuplicatePolicy(self.duplicate_policy)
        except ValueError:
            raise ConfigError(
                f"duplicate-policy must be 'replace' or 'reject', not {self.duplicate_policy!r}"
            ) from None
        self._check_limits()
        return HubConfig(
            auth_timeout=self.auth_timeout,
            close_timeout=self.close_timeout,
            outbox_size=self.outbox_size,
            duplicate_policy=policy,
            resume_grace=self.resume_grace,
            rate_limit=self.rate_limit,
            rate_burst=self.rate_burst,
            max_room_peers=self.max_room_peers,
            max_connections=self.max_connections,
            shutdown_reconnect_after=self.shutdown_reconnect_after,
            ice=IceConfig(
                stun_urls=_split(self.stun_urls),
                turn_urls=_split(self.turn_urls),
                turn_secret=self.turn_secret,
                turn_ttl_seconds=self.turn_ttl,
                turn_username=self.turn_username,
                turn_credential=self.turn_credential,
            ),
        )

    def _check_limits(self) -> None:
        for name in (
            "heartbeat_interval",
            "heartbeat_timeout",
            "resume_grace",
            "rate_limit",
            "rate_burst",
            "max_room_peers",
            "max_connections",
            "shutdown_reconnect_after",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{flag_name(name)[2:]} cannot be negative")
        if self.heartbeat_interval > 0 and not self.heartbeat_timeout > 0:
            raise ConfigError("heartbeat-timeout must be positive when heartbeats are on")
        if self.rate_limit > 0 and self.rate_burst < 1:
            raise ConfigError("rate-burst must be at least 1 when rate-limit is on")

    def origin_policy(self) -> OriginPolicy:
        return OriginPolicy(_split(self.allowed_origins))

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server TLS context from tls-cert and tls-key, or None when TLS is off."""
        if not self.tls_cert and not self.tls_key:
            return None
        if not (self.tls_cert and self.tls_key):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except FileNotFoundError as exc:
            raise ConfigError(f"cannot read the TLS file {exc.filename}: {exc.strerror}") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use the TLS certificate and key: {exc}") from None
        return context

    def token_keys(self, *, create_secret: bool = True) -> TokenKeys:
        """The keys that verify (and, where configured, sign) access tokens."""
        options = {"audience": self.jwt_audience, "issuer": self.jwt_issuer}
        try:
            if self.jwt_algorithm in SYMMETRIC_ALGORITHMS:
                secret = self.secret or self._secret_from_file(create=create_secret)
                return TokenKeys(self.jwt_algorithm, secret, secret, **options)  # type: ignore[arg-type]
            if not self.jwt_public_key_file:
                raise ConfigError(f"{self.jwt_algorithm} needs --jwt-public-key-file")
            public = _read(self.jwt_public_key_file, "public key")
            private = (
                _read(self.jwt_private_key_file, "private key")
                if self.jwt_private_key_file
                else None
            )
            return TokenKeys(self.jwt_algorithm, public, private, **options)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _secret_from_file(self, *, create: bool) -> str:
        return _secret_file(Path(self.secret_file), "token secret", "MESHROOM_SECRET", create)

    def api_key_list(self, *, create: bool = True) -> tuple[str, ...]:
        """The keys that authorise /api calls; one is generated and kept if none is set."""
        if self.api_keys:
            keys = _split(self.api_keys)
        else:
            keys = (_secret_file(Path(self.api_key_file), "API key", "MESHROOM_API_KEYS", create),)
        if any(len(key) < 16 for key in keys):
            raise ConfigError("API keys must be at least 16 characters long")
        return keys


def _secret_file(path: Path, what: str, variable: str, create: bool) -> str:
    """Read a secret kept in a file, or create the file (mode 0600) with a fresh one."""
    if path.exists():
        secret = _read(str(path), what).strip()
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s is readable by other users; chmod 600 it", path)
        return secret
    if not create:
        raise ConfigError(f"no {what}: set {variable} or create {path}")
    secret = generate_secret()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return _read(str(path), what).strip()
    except OSError as exc:
        raise ConfigError(f"cannot create the {what} file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    log.info("generated a new %s in %s", what, path)
    return secret


def env_name(field_name: str) -> str:
    return "MESHROOM_" + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _coerce(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind.startswith("bool"):
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{env_name(f.name)}={raw!r} is not true or false")
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        raise ConfigError(f"{env_name(f.name)}={raw!r} is not a number") from None
    return raw


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}") from None


def _table_flag(f: dataclasses.Field[Any]) -> str:
    name = flag_name(f.name)
    return f"{name}`, `--no-{name[2:]}" if str(f.type).startswith("bool") else name


def settings_table() -> str:
    """The Markdown table of every setting, as the README shows it."""
    lines = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(Settings):
        default = f.default
        shown = "(none)" if default is None else "(empty)" if default == "" else f"`{default}`"
        lines.append(
            f"| `{_table_flag(f)}` | `{env_name(f.name)}` | {shown} | {f.metadata['help']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(settings_table())
