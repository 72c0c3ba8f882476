"""Settings: one model of options, read from MESHROOM_* variables and overridden by CLI flags.

The model drives the CLI flags, the environment variables and the README's
configuration table, so the three cannot drift apart. Every type, bound and
cross-field rule is checked when a :class:`Settings` is built, so a bad flag or
variable is reported in one line before any port is opened or database touched;
only the checks that read files (secrets, keys, TLS) wait until they are used.
"""

from __future__ import annotations

import contextvars
import logging
import os
import shlex
import ssl
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .auth import TokenKeys, generate_secret
from .auth.tokens import ASYMMETRIC_ALGORITHMS, MIN_SECRET_BYTES, SYMMETRIC_ALGORITHMS
from .core import DuplicatePolicy, HubConfig
from .core.attendance import AttendanceConfig
from .core.limits import OriginPolicy
from .ice import DEFAULT_STUN_URLS, IceConfig
from .webhooks import (
    ConfiguredEndpoint,
    DeliveryConfig,
    WebhookConfigError,
    parse_configured_endpoints,
)

if TYPE_CHECKING:
    from .cluster import ClusterConfig

log = logging.getLogger(__name__)

ENV_PREFIX = "MESHROOM_"
# What a user writes to turn a port that can be off, off: `--http-port off`.
OFF = "off"
MIN_API_KEY_LENGTH = 16
JWT_ALGORITHMS = tuple(sorted(SYMMETRIC_ALGORITHMS)) + tuple(sorted(ASYMMETRIC_ALGORITHMS))
# Settings whose value must never be echoed back in an error message (a database URL
# may hold a password).
_SECRET_SETTINGS = frozenset(
    {
        "api_keys",
        "secret",
        "turn_secret",
        "turn_credential",
        "database_url",
        "redis_url",
        "webhooks",
    }
)


class ConfigError(Exception):
    """A setting that cannot work. The message is one line a user can act on."""


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _port_or_off(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() == OFF:
        return None
    return value


def _empty_is_false(value: Any) -> Any:
    # `MESHROOM_DEMO=` (set but empty, as env files often leave it) has always meant off.
    return False if isinstance(value, str) and not value.strip() else value


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


Port = Annotated[int, Field(ge=0, le=65535)]
OptionalPort = Annotated[Port | None, BeforeValidator(_port_or_off)]
Flag = Annotated[bool, BeforeValidator(_empty_is_false)]
LogLevel = Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)]

# The environment `Settings(...)` reads: os.environ, unless `Settings.from_env` names another.
_ENVIRON: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "meshroom_settings_environ", default=None
)


def _environ() -> Mapping[str, str]:
    environ = _ENVIRON.get()
    return os.environ if environ is None else environ


@contextmanager
def _reading(environ: Mapping[str, str]) -> Iterator[None]:
    token = _ENVIRON.set(environ)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


class _MeshroomEnvironment(PydanticBaseSettingsSource):
    """MESHROOM_<NAME> for each setting, exactly: no other variable, no .env file.

    pydantic-settings' own env source reads os.environ only; this one reads the
    mapping `from_env` was given (tests pass `{}` to be independent of the shell).
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.environ.get(env_name(field_name)), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {
            name: self.environ[env_name(name)]
            for name in self.settings_cls.model_fields
            if env_name(name) in self.environ
        }


def _cross(setting: str, problem: str) -> PydanticCustomError:
    """A rule between settings; ``problem`` may name any setting as ``{name}``."""
    return PydanticCustomError("meshroom_cross", problem, {"setting": setting, "problem": problem})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=None,
        frozen=True,
        extra="forbid",
        validate_default=True,
        # A NaN timeout passes every bound check and then never fires.
        allow_inf_nan=False,
    )

    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: Port = Field(default=8765, description="port of the signaling WebSocket (/meetings)")
    http_port: OptionalPort = Field(
        default=8080,
        description="port of the HTTP API, health, metrics and Quart WebSocket; "
        "off = no HTTP listener, 0 = any free port",
    )
    api_keys: str | None = Field(
        default=None,
        description="comma-separated API keys for /api (Authorization: Bearer KEY)",
    )
    api_key_file: str = Field(
        default="meshroom.apikey",
        description="where the API key is read from, or created if no key is set",
    )
    database_url: str = Field(
        default="sqlite:///meshroom.db",
        description="SQLAlchemy URL: sqlite:///file.db or postgresql+psycopg://user@host/db",
    )
    db_pool_size: int = Field(default=10, ge=1, description="database connections (not SQLite)")
    auto_migrate: Flag = Field(
        default=False,
        description="upgrade an out-of-date database schema at start instead of refusing",
    )
    attendance_heartbeat: float = Field(
        default=15.0,
        gt=0,
        description="seconds between last-seen stamps of live peers (crash recovery)",
    )
    leave_retry_max: float = Field(
        default=15.0,
        gt=0,
        description="longest wait, seconds, between retries of unwritten attendance leaves",
    )
    leave_flush_timeout: float = Field(
        default=10.0,
        gt=0,
        description="seconds shutdown waits to write attendance leaves still queued",
    )
    attendance_journal: str = Field(
        default="meshroom.journal",
        description="local file keeping attendance the database did not take, replayed at "
        "start (crash during an outage); off = none",
    )
    secret: str | None = Field(
        default=None,
        description="HS256 secret for access tokens (at least 32 bytes); see secret-file",
    )
    secret_file: str = Field(
        default="meshroom.secret",
        description="where the secret is read from, or created (mode 0600) if missing",
    )
    jwt_algorithm: str = Field(
        default="HS256",
        description="HS256, or RS256/ES256/EdDSA to verify with a public key",
    )
    jwt_public_key_file: str | None = Field(
        default=None,
        description="PEM public key that verifies tokens (asymmetric algorithms)",
    )
    jwt_private_key_file: str | None = Field(
        default=None,
        description="PEM private key for `meshroom token` (asymmetric algorithms)",
    )
    jwt_audience: str = Field(default="meshroom", description="required `aud` claim")
    jwt_issuer: str = Field(default="meshroom", description="required `iss` claim")
    auth_timeout: float = Field(
        default=10.0, gt=0, description="seconds a new connection has to authenticate"
    )
    close_timeout: float = Field(
        default=5.0, gt=0, description="seconds to flush and close a connection being removed"
    )
    max_message_bytes: int = Field(
        default=65536, ge=1, description="largest client frame; bigger ones get FRAME_TOO_LARGE"
    )
    outbox_size: int = Field(
        default=2048, ge=1, description="frames queued per peer before it counts as too slow"
    )
    duplicate_policy: DuplicatePolicy = Field(
        default=DuplicatePolicy.REPLACE,
        description="same employee joins twice: replace (new wins) or reject (old stays)",
    )
    # Socket.IO's pingInterval / pingTimeout, as the seed ran with: at 5,000 idle peers the
    # heartbeat is most of the server's idle CPU, and it is proportional to its rate.
    heartbeat_interval: float = Field(
        default=25.0,
        ge=0,
        description="seconds of silence before a connection is pinged; 0 = no heartbeats",
    )
    heartbeat_timeout: float = Field(
        default=20.0,
        ge=0,
        description="seconds a pinged connection has to answer, else it leaves (timeout)",
    )
    resume_grace: float = Field(
        default=15.0,
        ge=0,
        description="seconds a dropped peer keeps its place for a resume; 0 = no resume",
    )
    kick_rejoin_block: float = Field(
        default=60.0,
        ge=0,
        description="seconds a kicked employee is refused (KICKED, 4005) before it may "
        "rejoin; 0 = at once",
    )
    rate_limit: float = Field(
        default=200.0,
        ge=0,
        description="frames per second a connection may send on average; 0 = no limit",
    )
    rate_burst: int = Field(
        # A newcomer to a 50-peer mesh sends ~50 offers and a few hundred ICE candidates
        # in its first second; the burst allows that, and stays below outbox_size so one
        # sender alone cannot overflow a prompt reader's queue.
        default=1000,
        ge=0,
        description="frames a connection may send at once (token bucket size)",
    )
    max_room_peers: int = Field(
        default=100, ge=0, description="peers in one room (ROOM_FULL past it); 0 = no limit"
    )
    max_connections: int = Field(
        default=10000,
        ge=0,
        description="WebSocket connections per process (HTTP 503 past it); 0 = no limit",
    )
    socketio_max_sessions: int = Field(
        default=10000,
        ge=0,
        description="Socket.IO (Engine.IO) sessions per process, long-polling ones included "
        "(HTTP 503 past it); 0 = no limit",
    )
    socketio_resume_memory: float = Field(
        default=120.0,
        ge=0,
        description="seconds the Socket.IO endpoint remembers a dropped connection's resume "
        "token for the client's reconnect; 0 = not at all",
    )
    allowed_origins: str = Field(
        default="",
        description="comma-separated browser Origins allowed to connect; empty = any",
    )
    tls_cert: str | None = Field(
        default=None, description="PEM certificate (chain): serve wss:// and https://"
    )
    tls_key: str | None = Field(default=None, description="PEM private key of tls-cert")
    shutdown_reconnect_after: float = Field(
        default=5.0,
        ge=0,
        description="reconnect hint of server:shutdown, seconds (each client: 1x-2x)",
    )
    stun_urls: str = Field(
        default=",".join(DEFAULT_STUN_URLS), description="comma-separated STUN URLs"
    )
    turn_urls: str = Field(default="", description="comma-separated TURN URLs")
    turn_secret: str | None = Field(
        default=None,
        description="coturn use-auth-secret: issue short-lived TURN credentials",
    )
    turn_ttl: int = Field(default=3600, gt=0, description="lifetime of TURN credentials, seconds")
    turn_username: str | None = Field(default=None, description="static TURN username")
    turn_credential: str | None = Field(default=None, description="static TURN credential")
    demo: Flag = Field(
        default=True,
        description="serve the demo meeting page at / and POST /demo/join (creates meetings "
        "without an API key); MESHROOM_DEMO=0 turns it off",
    )
    redis_url: str | None = Field(
        default=None,
        description="redis://host:port/db: run as one node of a cluster sharing this Redis "
        "(docs/cluster.md); unset = a single process",
    )
    node_id: str | None = Field(
        default=None,
        description="this node's name in the cluster (unique; default host-pid)",
    )
    node_ttl: float = Field(
        default=2.0,
        gt=0,
        description="seconds after a node stops renewing before its rooms go to other nodes",
    )
    redis_prefix: str = Field(
        default="meshroom", description="prefix of every Redis key and channel meshroom uses"
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="processes serving the same ports (one core each), coordinated as cluster "
        "nodes through redis-url",
    )
    reuse_port: Flag = Field(
        default=False,
        description="bind with SO_REUSEPORT so that processes share the ports (--workers sets it)",
    )
    webhooks: str | None = Field(
        default=None,
        description='webhook endpoints, a JSON list: [{"url": "https://…", "secret": '
        '"whsec_…", "eventTypes": […]}] (docs/webhooks.md)',
    )
    webhook_timeout: float = Field(
        default=10.0, gt=0, description="seconds a webhook endpoint has to answer (2xx)"
    )
    webhook_max_attempts: int = Field(
        default=20,
        ge=1,
        description="attempts per webhook delivery before it is dead (kept; `meshroom "
        "webhooks retry` sends it again)",
    )
    webhook_retry_initial: float = Field(
        default=5.0,
        gt=0,
        description="seconds before a failed webhook delivery is retried; doubled per "
        "attempt, ±20% jitter",
    )
    webhook_retry_max: float = Field(
        default=7200.0, gt=0, description="longest wait between webhook retries, seconds"
    )
    webhook_concurrency: int = Field(
        default=4,
        ge=1,
        description="webhook deliveries in flight per endpoint (a meeting's events still go "
        "one at a time, in order)",
    )
    webhook_poll_interval: float = Field(
        default=5.0,
        gt=0,
        description="seconds between looks for webhook deliveries other processes made due "
        "(the CLI's retry)",
    )
    webhook_retention_days: float = Field(
        default=7.0, ge=0, description="days delivered webhooks stay listed; 0 = forever"
    )
    log_level: LogLevel = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")

    # How the user gave each setting that came from a variable, so that errors found
    # later (reading a key file, say) name it the way the user wrote it too.
    _from_variables: frozenset[str] = PrivateAttr(default=frozenset())

    def __init__(self, **values: Any) -> None:
        """Defaults, then MESHROOM_* variables, then ``values``; ConfigError if any is bad."""
        environ = _environ()
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, given=values, environ=environ)) from None
        self._from_variables = frozenset(
            name for name in self.model_fields_set if name not in values
        )

    def named(self, name: str, *, like: str | None = None) -> str:
        """The setting as the user gave it: ``MESHROOM_RATE_LIMIT`` or ``--rate-limit``.

        One the user did not give is spelled like ``like``, the one that asks for it.
        """
        given = name in self.model_fields_set or like is None
        source = name if given else like
        return env_name(name) if source in self._from_variables else flag_name(name)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit values win over the environment; no .env file, no secrets directory.
        return init_settings, _MeshroomEnvironment(settings_cls, _environ())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then MESHROOM_<NAME> variables of ``environ`` (default: os.environ),
        then the overrides that are not None (CLI flags, app.config values).

        Raises:
            ConfigError: a value is of the wrong type, out of bounds or contradicts another.
        """
        with _reading(os.environ if environ is None else environ):
            return cls(**{k: v for k, v in overrides.items() if v is not None})

    @field_validator("jwt_algorithm")
    @classmethod
    def _known_algorithm(cls, value: str) -> str:
        if value not in JWT_ALGORITHMS:
            raise PydanticCustomError(
                "meshroom_choice",
                "must be one of {choices}",
                {"choices": ", ".join(JWT_ALGORITHMS)},
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        # Only the syntax: whether the driver is installed and the database reachable is
        # found when the store opens. Imported here: the URL is a database's concern.
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value)
        except ArgumentError:
            raise PydanticCustomError(
                "meshroom_url",
                "not a database URL (sqlite:///file.db or postgresql+psycopg://user@host/db)",
            ) from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None  # `MESHROOM_REDIS_URL=` (set but empty) means no cluster
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise PydanticCustomError(
                "meshroom_url", "not a Redis URL (redis://host:6379/0, rediss://, unix://)"
            )
        return value

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "|" in value or len(value) > 100):
            raise PydanticCustomError("meshroom_node_id", "must be 1-100 characters without '|'")
        return value

    @field_validator("api_keys")
    @classmethod
    def _long_api_keys(cls, value: str | None) -> str | None:
        if value and any(len(key) < MIN_API_KEY_LENGTH for key in _split(value)):
            raise PydanticCustomError(
                "meshroom_api_key",
                "each API key must be at least {length} characters long",
                {"length": MIN_API_KEY_LENGTH},
            )
        return value

    @field_validator("webhooks")
    @classmethod
    def _webhook_endpoints(cls, value: str | None) -> str | None:
        try:
            parse_configured_endpoints(value)
        except WebhookConfigError as exc:
            raise PydanticCustomError(
                "meshroom_webhooks", "{problem}", {"problem": str(exc)}
            ) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.heartbeat_interval > 0 and not self.heartbeat_timeout > 0:
            raise _cross(
                "heartbeat_timeout",
                "{heartbeat_timeout} must be positive when {heartbeat_interval} is on",
            )
        if self.rate_limit > 0 and self.rate_burst < 1:
            raise _cross("rate_burst", "{rate_burst} must be at least 1 when {rate_limit} is on")
        if self.webhook_retry_initial > self.webhook_retry_max:
            raise _cross(
                "webhook_retry_initial",
                "{webhook_retry_initial} cannot be longer than {webhook_retry_max}",
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            given = "tls_cert" if self.tls_cert else "tls_key"
            raise _cross(given, "TLS needs both {tls_cert} and {tls_key}")
        if (
            self.secret
            and self.jwt_algorithm in SYMMETRIC_ALGORITHMS
            and len(self.secret) < MIN_SECRET_BYTES
        ):
            raise _cross("secret", f"{{secret}} must be at least {MIN_SECRET_BYTES} bytes long")
        if self.workers > 1:
            if self.redis_url is None:
                raise _cross(
                    "workers", "{workers} above 1 needs {redis_url}: the workers are cluster nodes"
                )
            if self.port == 0 or self.http_port == 0:
                raise _cross(
                    "workers", "{workers} above 1 needs fixed ports ({port}, {http_port}), not 0"
                )
        return self

    def attendance_config(self) -> AttendanceConfig:
        return AttendanceConfig(
            heartbeat_interval=self.attendance_heartbeat,
            retry_max=self.leave_retry_max,
            retry_initial=min(0.5, self.leave_retry_max),
            flush_timeout=self.leave_flush_timeout,
        )

    def cluster_config(self) -> ClusterConfig | None:
        """The cluster node this process runs as, or None without ``redis_url``."""
        if self.redis_url is None:
            return None
        from .cluster import ClusterConfig, default_node_id

        return ClusterConfig(
            node_id=self.node_id or default_node_id(),
            prefix=self.redis_prefix,
            node_ttl=self.node_ttl,
        )

    def environment(self) -> dict[str, str]:
        """These settings as MESHROOM_* variables: what a child process needs to be built
        with the same settings (``--workers``)."""
        variables = {}
        for name, value in self.model_dump().items():
            if value is None:
                if name == "http_port":
                    variables[env_name(name)] = OFF
                continue
            if isinstance(value, bool):
                value = "1" if value else "0"
            variables[env_name(name)] = str(getattr(value, "value", value))
        return variables

    def webhook_endpoints(self) -> list[ConfiguredEndpoint]:
        """The endpoints of ``webhooks`` (checked when the settings were built)."""
        return parse_configured_endpoints(self.webhooks)

    def delivery_config(self) -> DeliveryConfig:
        return DeliveryConfig(
            timeout=self.webhook_timeout,
            max_attempts=self.webhook_max_attempts,
            retry_initial=self.webhook_retry_initial,
            retry_max=self.webhook_retry_max,
            concurrency=self.webhook_concurrency,
            poll_interval=self.webhook_poll_interval,
            retention=self.webhook_retention_days * 86400.0,
        )

    def journal_path(self) -> str | None:
        """The attendance journal's file, or None when it is off."""
        value = self.attendance_journal.strip()
        return None if value.lower() in (OFF, "") else value

    def hub_config(self) -> HubConfig:
        return HubConfig(
            auth_timeout=self.auth_timeout,
            close_timeout=self.close_timeout,
            outbox_size=self.outbox_size,
            duplicate_policy=self.duplicate_policy,
            resume_grace=self.resume_grace,
            rate_limit=self.rate_limit,
            rate_burst=self.rate_burst,
            max_room_peers=self.max_room_peers,
            max_connections=self.max_connections,
            shutdown_reconnect_after=self.shutdown_reconnect_after,
            kick_rejoin_block=self.kick_rejoin_block,
            ice=IceConfig(
                stun_urls=_split(self.stun_urls),
                turn_urls=_split(self.turn_urls),
                turn_secret=self.turn_secret,
                turn_ttl_seconds=self.turn_ttl,
                turn_username=self.turn_username,
                turn_credential=self.turn_credential,
            ),
        )

    def origin_policy(self) -> OriginPolicy:
        return OriginPolicy(_split(self.allowed_origins))

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server TLS context from tls-cert and tls-key, or None when TLS is off."""
        if not self.tls_cert or not self.tls_key:  # both or neither: checked when built
            return None
        for name, path in (("tls_cert", self.tls_cert), ("tls_key", self.tls_key)):
            # load_cert_chain's own error does not say which of the two files it was.
            _check_readable(path, "TLS", self.named(name))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use the TLS certificate and key: {_one_line(exc)}") from None
        return context

    def token_keys(self, *, create_secret: bool = True) -> TokenKeys:
        """The keys that verify (and, where configured, sign) access tokens."""
        options = {"audience": self.jwt_audience, "issuer": self.jwt_issuer}
        if self.jwt_algorithm in SYMMETRIC_ALGORITHMS:
            if self.secret:
                secret, origin = self.secret, self.named("secret")
            else:
                path = Path(self.secret_file)
                secret = _secret_file(
                    path,
                    "token secret",
                    env_name("secret"),
                    create_secret,
                    self.named("secret_file"),
                )
                origin = f"{path} ({self.named('secret_file')})"
            try:
                return TokenKeys(self.jwt_algorithm, secret, secret, **options)  # type: ignore[arg-type]
            except ValueError as exc:
                raise ConfigError(f"{origin}: {_one_line(exc)}") from None
        if not self.jwt_public_key_file:
            raise ConfigError(
                f"{self.named('jwt_algorithm')}={self.jwt_algorithm} needs "
                f"{self.named('jwt_public_key_file', like='jwt_algorithm')}"
            )
        public = _read(self.jwt_public_key_file, "public key", self.named("jwt_public_key_file"))
        private = (
            _read(self.jwt_private_key_file, "private key", self.named("jwt_private_key_file"))
            if self.jwt_private_key_file
            else None
        )
        try:
            return TokenKeys(self.jwt_algorithm, public, private, **options)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ConfigError(_one_line(exc)) from None

    def api_key_list(self, *, create: bool = True) -> tuple[str, ...]:
        """The keys that authorise /api calls; one is generated and kept if none is set."""
        if self.api_keys:
            return _split(self.api_keys)  # their length is checked when Settings is built
        path = Path(self.api_key_file)
        setting = self.named("api_key_file")
        key = _secret_file(path, "API key", env_name("api_keys"), create, setting)
        if len(key) < MIN_API_KEY_LENGTH:
            raise ConfigError(
                f"the API key in {path} ({setting}) must be at least "
                f"{MIN_API_KEY_LENGTH} characters long"
            )
        return (key,)


def _secret_file(path: Path, what: str, variable: str, create: bool, setting: str) -> str:
    """Read a secret kept in a file, or create the file (mode 0600) with a fresh one."""
    if path.exists():
        secret = _read(str(path), what, setting).strip()
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s is readable by other users; chmod 600 it", path)
        return secret
    if not create:
        raise ConfigError(f"no {what}: set {variable} or create {path}")
    secret = generate_secret()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return _read(str(path), what, setting).strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot create the {what} file {path} ({setting}): {exc.strerror}"
        ) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    log.info("generated a new %s in %s", what, path)
    return secret


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _check_readable(path: str, what: str, setting: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot read the {what} file {path} ({setting}): {exc.strerror}"
        ) from None


def _read(path: str, what: str, setting: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the {what} file {path} ({setting}): {exc.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"the {what} file {path} ({setting}) is not text") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --- One-line messages for validation errors ---------------------------------------------

_PROBLEMS = {
    "int_parsing": "not a whole number",
    "int_from_float": "not a whole number",
    "int_type": "not a whole number",
    "float_parsing": "not a number",
    "float_type": "not a number",
    "finite_number": "not a finite number",
    "bool_parsing": "not true or false (1/0, true/false, yes/no, on/off)",
    "bool_type": "not true or false (1/0, true/false, yes/no, on/off)",
    "string_type": "not text",
    "extra_forbidden": "not a setting",
}


def _problem(error: Mapping[str, Any]) -> str:
    kind: str = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    if kind in _PROBLEMS:
        return _PROBLEMS[kind]
    if kind == "greater_than_equal":
        return "cannot be negative" if ctx["ge"] == 0 else f"must be at least {ctx['ge']}"
    if kind == "greater_than":
        return "must be positive" if ctx["gt"] == 0 else f"must be more than {ctx['gt']}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}"
    if kind in ("enum", "literal_error"):
        return f"must be {ctx['expected']}"
    return str(error["msg"]).removeprefix("Value error, ")


def _describe(exc: ValidationError, *, given: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """Every problem of ``exc`` on one line, each naming the setting as the user wrote it:
    ``--rate-limit`` for a flag or keyword, ``MESHROOM_RATE_LIMIT`` for a variable."""

    def spelled(name: str, like: str | None = None) -> str:
        # A setting the user did not give is named the way they named the one they did.
        source = name if name in given or env_name(name) in environ else like or name
        from_environment = source not in given and env_name(source) in environ
        return env_name(name) if from_environment else flag_name(name)

    def shown(name: str, value: Any) -> str:
        text = str(value.value if isinstance(value, DuplicatePolicy) else value)
        return shlex.quote(text) if text.isprintable() else repr(text)

    parts = []
    for error in exc.errors(include_url=False):
        if error["type"] == "meshroom_cross":
            ctx = error["ctx"]
            setting = ctx["setting"]
            names = {name: spelled(name, like=setting) for name in Settings.model_fields}
            parts.append(ctx["problem"].format(**names))
            continue
        loc = error["loc"]
        name = str(loc[0]) if loc else "?"
        if name not in Settings.model_fields:
            parts.append(f"{flag_name(name)}: not a setting")
            continue
        problem = _problem(error)
        if name == "http_port" and error["type"] in ("int_parsing", "int_from_float"):
            problem = f"not a port number or {OFF}"
        if name in _SECRET_SETTINGS:
            parts.append(f"{spelled(name)}: {problem}")
        else:
            raw = given[name] if name in given else environ.get(env_name(name), error["input"])
            parts.append(f"{spelled(name)}={shown(name, raw)}: {problem}")
    return "; ".join(dict.fromkeys(parts)) or _one_line(exc)


def settings_table() -> str:
    """The Markdown table of every setting, as the README shows it."""
    lines = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for name, info in Settings.model_fields.items():
        flag = flag_name(name)
        if info.annotation is bool:
            flag = f"{flag}`, `--no-{flag[2:]}"
        default = info.default
        shown = (
            "(none)"
            if default is None
            else "(empty)"
            if default == ""
            else f"`{default.value if isinstance(default, DuplicatePolicy) else default}`"
        )
        lines.append(f"| `{flag}` | `{env_name(name)}` | {shown} | {info.description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(settings_table())
