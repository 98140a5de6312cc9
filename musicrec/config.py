"""Settings both sides read: parsed once from the environment (and an optional ``.env``), then frozen.

The offline indexer and the service share the variables that name the same thing (where the
artefacts live, the Kafka topic, the Spotify credentials, the log level and format), so they are
parsed here, once, with one default each. This module sits above both sides and imports neither:
the indexer reads ``OfflineSettings``, and the service's ``Settings`` (musicrec/service/settings.py)
extends ``CommonSettings`` with what only serving needs.

Nothing runs at import time: whoever starts a command calls ``from_env()``, so a test builds its
settings from a plain dict instead of patching ``os.environ``. Every value is validated up front
and every problem is reported at once, naming the variable and the bad value (secrets masked).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Final, Mapping, TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values

if TYPE_CHECKING:
    from musicrec.data.spotify import SpotifyConfig

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS: Final = ("text", "json")
MASK: Final = "***"
DEFAULT_KAFKA_TOPIC: Final = "music-events"
DEFAULT_SPOTIFY_API_URL: Final = "https://api.spotify.com/v1/"
DEFAULT_SPOTIFY_TOKEN_URL: Final = "https://accounts.spotify.com/api/token"
SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

T = TypeVar("T")


class SettingsError(ValueError):
    """A variable is missing its expected shape; the message names each variable and bad value."""


@dataclass(frozen=True)
class KafkaSecurity:
    """How the service's producer and the indexer's consumer authenticate to Kafka.

    Credentials go in these fields, which aiokafka sends over SASL, never in the bootstrap
    servers: ``user:pass@host`` there reached the service's and aiokafka's log lines in clear.
    """

    protocol: str = "PLAINTEXT"
    mechanism: str = "PLAIN"
    username: str = ""
    password: str = field(default="", repr=False)

    def problems(self) -> list[str]:
        """What does not fit together, one message per problem (empty when usable)."""
        sasl = self.protocol.startswith("SASL_")
        if sasl and not (self.username and self.password):
            return [f"KAFKA_SECURITY_PROTOCOL={self.protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"]
        if not sasl and (self.username or self.password):
            return ["KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD need KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT or SASL_SSL"]
        return []

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaProducer``/``AIOKafkaConsumer``."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context()  # the system's CAs
        if self.protocol.startswith("SASL_"):
            kwargs |= {"sasl_mechanism": self.mechanism, "sasl_plain_username": self.username,
                       "sasl_plain_password": self.password}
        return kwargs


def has_credentials(bootstrap_servers: str) -> bool:
    """True when a ``user:pass@host:port`` (or ``user@host``) entry carries credentials it must not."""
    return any("@" in part for part in bootstrap_servers.split(","))


@dataclass(frozen=True, repr=False)
class CommonSettings:
    """The variables the indexer and the service both read (the environment name is the field's, upper-cased)."""

    artifacts_dir: Path = Path("artifacts")
    """A version directory, or a root holding versions and a ``current`` link."""
    kafka_bootstrap_servers: str = ""
    """Comma-separated ``host:port`` list; empty means no Kafka (events stay in a bounded buffer)."""
    kafka_topic: str = DEFAULT_KAFKA_TOPIC
    kafka_security_protocol: str = "PLAINTEXT"
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; credentials go in the SASL settings, never in the servers."""
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    spotipy_client_id: str = ""
    spotipy_client_secret: str = ""
    spotify_api_url: str = DEFAULT_SPOTIFY_API_URL
    spotify_token_url: str = DEFAULT_SPOTIFY_TOKEN_URL
    log_level: str = "INFO"
    log_format: str = "text"

    @property
    def kafka_enabled(self) -> bool:
        return bool(self.kafka_bootstrap_servers.strip())

    @property
    def kafka_security(self) -> "KafkaSecurity":
        return KafkaSecurity(self.kafka_security_protocol, self.kafka_sasl_mechanism, self.kafka_sasl_username,
                             self.kafka_sasl_password)

    def spotify_config(self, **overrides: Any) -> "SpotifyConfig":
        """The Spotify client's config; SpotifyAuthError when a credential is missing."""
        from musicrec.data.spotify import SpotifyConfig

        return SpotifyConfig.checked(self.spotipy_client_id, self.spotipy_client_secret, api_url=self.spotify_api_url,
                                     token_url=self.spotify_token_url, **overrides)

    def masked(self) -> dict[str, Any]:
        """The settings as a plain dict, safe to log: tokens, secrets and URL passwords masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS:
                value = MASK if value else ""
            elif f.name == "redis_url":
                value = mask_url(value)
            elif f.name == "kafka_bootstrap_servers":
                value = ",".join(mask_url(part) for part in value.split(",")) if value else ""
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.masked().items())
        return f"{type(self).__name__}({inner})"


SECRET_FIELDS: Final = frozenset({"admin_token", "spotipy_client_secret", "kafka_sasl_password", "api_keys",
                                  "cookie_secret"})

COMMON_HELP: Final = {
    "ARTIFACTS_DIR": "a version folder, or a root of versions with a `current` link",
    "KAFKA_BOOTSTRAP_SERVERS": "Kafka host:port[,…] where listener events go; empty: no Kafka",
    "KAFKA_TOPIC": "the listener-event topic",
    "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    "KAFKA_SASL_MECHANISM": "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with SASL_*)",
    "KAFKA_SASL_USERNAME": "Kafka SASL user (credentials never go in KAFKA_BOOTSTRAP_SERVERS)",
    "KAFKA_SASL_PASSWORD": "Kafka SASL password (never logged)",
    "SPOTIPY_CLIENT_ID": "Spotify app client id (client-credentials; online mode and --spotify-playlist)",
    "SPOTIPY_CLIENT_SECRET": "Spotify app client secret (never logged)",
    "SPOTIFY_API_URL": "Spotify Web API base URL (a proxy, or a test double)",
    "SPOTIFY_TOKEN_URL": "Spotify token endpoint",
    "LOG_LEVEL": f"one of {', '.join(LOG_LEVELS)}",
    "LOG_FORMAT": "text (one line per record) or json (one JSON object per line)",
}
"""What each shared variable means: shown by ``musicrec <command> --help`` and checked against .env.example."""


class OfflineSettings(CommonSettings):
    """What the offline indexer reads from the environment (the same parsing as the service's)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> "OfflineSettings":
        p = EnvParser(read_env(environ, env_file))
        settings = cls(**parse_common(p))
        p.raise_errors()
        return settings


def read_env(environ: Mapping[str, str] | None, env_file: str | Path | None) -> dict[str, str]:
    """``environ`` (default ``os.environ``) over the values in ``env_file``.

    The environment wins over the file so a deployment can override a checked-in ``.env``;
    a missing file is fine (production usually has none).
    """
    values: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ if environ is None else environ)
    return values


def mask_url(url: str) -> str:
    """Replace the password in ``scheme://user:password@host`` (or ``user:password@host``) with ***."""
    if "@" not in url:
        return url
    head, sep, tail = url.rpartition("@")
    scheme, has_scheme, userinfo = head.partition("://")
    if not has_scheme:
        scheme, userinfo = "", head
    user, has_password, _ = userinfo.partition(":")
    # Without a colon the lone part may still be a password (``redis://secret@host``): mask it too.
    masked_info = f"{user}:{MASK}" if has_password else MASK
    return f"{scheme}{has_scheme}{masked_info}{sep}{tail}"


class EnvParser:
    """Reads each variable once, converting and range-checking it, and collects every error."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = values
        self.errors: list[str] = []

    def get(self, name: str, default: T, convert: Callable[[str], T], check: Callable[[T], bool] | None = None,
            expected: str = "", *, show: Callable[[str], str] = repr) -> T:
        raw = self.values.get(name)
        if raw is None:
            return default
        raw = raw.strip()
        shown = show(raw)
        try:
            value = convert(raw)
        except ValueError:
            self.errors.append(f"{name} must be {expected}, got {shown}")
            return default
        if check is not None and not check(value):
            self.errors.append(f"{name} must be {expected}, got {shown}")
            return default
        return value

    def raise_errors(self) -> None:
        if self.errors:
            raise SettingsError("invalid settings: " + "; ".join(self.errors))


def parse_common(p: EnvParser) -> dict[str, Any]:
    """The shared variables as keyword arguments for a CommonSettings subclass (errors collected in ``p``)."""
    values = _parse_common_values(p)
    p.errors.extend(KafkaSecurity(values["kafka_security_protocol"], values["kafka_sasl_mechanism"],
                                  values["kafka_sasl_username"], values["kafka_sasl_password"]).problems())
    return values


def _parse_common_values(p: EnvParser) -> dict[str, Any]:
    d = CommonSettings()
    return dict(
        artifacts_dir=Path(p.get("ARTIFACTS_DIR", str(d.artifacts_dir), str, bool, "a non-empty path")),
        kafka_bootstrap_servers=p.get("KAFKA_BOOTSTRAP_SERVERS", d.kafka_bootstrap_servers, str, valid_bootstrap,
                                      "empty or a comma-separated list of host:port, without credentials "
                                      "(those go in KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD)",
                                      show=lambda raw: repr(",".join(mask_url(x) for x in raw.split(",")))),
        kafka_topic=p.get("KAFKA_TOPIC", d.kafka_topic, str, valid_topic,
                          "a Kafka topic name (1..249 of letters, digits, '.', '_', '-')"),
        kafka_security_protocol=p.get("KAFKA_SECURITY_PROTOCOL", d.kafka_security_protocol, str.upper,
                                      lambda v: v in SECURITY_PROTOCOLS, f"one of {', '.join(SECURITY_PROTOCOLS)}"),
        kafka_sasl_mechanism=p.get("KAFKA_SASL_MECHANISM", d.kafka_sasl_mechanism, str.upper,
                                   lambda v: v in SASL_MECHANISMS, f"one of {', '.join(SASL_MECHANISMS)}"),
        kafka_sasl_username=p.get("KAFKA_SASL_USERNAME", d.kafka_sasl_username, str),
        kafka_sasl_password=p.values.get("KAFKA_SASL_PASSWORD", d.kafka_sasl_password),  # as given: not stripped
        spotipy_client_id=p.get("SPOTIPY_CLIENT_ID", d.spotipy_client_id, str),
        spotipy_client_secret=p.get("SPOTIPY_CLIENT_SECRET", d.spotipy_client_secret, str),
        spotify_api_url=p.get("SPOTIFY_API_URL", d.spotify_api_url, _with_slash, _http_url, "an http(s) URL"),
        spotify_token_url=p.get("SPOTIFY_TOKEN_URL", d.spotify_token_url, str, _http_url, "an http(s) URL"),
        log_level=p.get("LOG_LEVEL", d.log_level, str.upper, lambda v: v in LOG_LEVELS, f"one of {', '.join(LOG_LEVELS)}"),
        log_format=p.get("LOG_FORMAT", d.log_format, str.lower, lambda v: v in LOG_FORMATS,
                         f"one of {', '.join(LOG_FORMATS)}"),
    )


def finite_float(raw: str) -> float:
    value = float(raw)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(raw)
    return value


def boolean(raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(raw)


def valid_bootstrap(value: str) -> bool:
    if not value:
        return True
    if has_credentials(value):  # credentials belong in KAFKA_SASL_USERNAME/PASSWORD, sent over SASL
        return False
    for part in value.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not (host and sep and port.isdigit() and 1 <= int(port) <= 65535):
            return False
    return True


def valid_topic(value: str) -> bool:
    return 0 < len(value) <= 249 and all(c.isascii() and (c.isalnum() or c in "._-") for c in value)


def _http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _with_slash(value: str) -> str:
    """The API URL as a base: relative paths are joined onto it, so it must end in '/'."""
    return value if value.endswith("/") else value + "/"


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS has one (containers, taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def env_help_lines(settings: CommonSettings, help_texts: Mapping[str, str]) -> list[str]:
    """``NAME (default: value)  meaning`` per variable, for an argparse epilog."""
    defaults = settings.masked()
    lines = []
    for name, text in help_texts.items():
        default = defaults.get(name.lower(), "")
        shown = "auto" if default is None else str(default).lower() if isinstance(default, bool) else (default or "empty")
        lines.append(f"  {name:<24} {text} (default: {shown})")
    return lines
