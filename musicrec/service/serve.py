"""``musicrec serve`` (and ``python -m musicrec.service``): check everything, then run uvicorn.

Start-up fails fast and briefly: bad settings, and artefacts that are missing or do not match
their manifest, end the command with one line naming the problem and exit code 2, before uvicorn
starts a worker (a worker's failed lifespan is a screenful of ExceptionGroup per worker, and with
several workers uvicorn's parent then exits 0). Options given here override the environment
variable of the same meaning, for the workers too.

uvicorn runs on uvloop + httptools (without uvloop a request costs far more CPU with workers;
the httptools protocol is musicrec.service.protocol's, which limits a request head's size and time),
with the one log format of musicrec/logs.py in the parent and in every worker, and with
prometheus_client's multiprocess directory set up so /metrics sums every worker's figures.
"""
from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from contextlib import contextmanager
from typing import Iterator, MutableMapping

from musicrec.config import env_help_lines
from musicrec.service.settings import SERVICE_HELP, Settings, SettingsError

log = logging.getLogger("musicrec.serve")
OVERRIDES = {"host": "HOST", "port": "PORT", "workers": "WORKERS", "artifacts": "ARTIFACTS_DIR"}
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
VERIFIED_ENV = "MUSICREC_VERIFIED_ARTIFACTS"
"""Set by ``musicrec serve`` for its workers: the fingerprint of the version it has just verified."""


def epilog() -> str:
    lines = env_help_lines(Settings(), SERVICE_HELP)
    return ("environment (also read from ./.env; an option given here wins):\n" + "\n".join(lines) + "\n  "
            f"{METRICS_DIR_ENV:<24} where workers keep their metrics (default: a fresh temporary directory; "
            "emptied at start)")


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to listen on (default: $HOST, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default: $PORT, else 8000)")
    p.add_argument("--workers", help="worker processes, or auto: one per usable core (default: $WORKERS, else auto)")
    p.add_argument("--artifacts", type=Path, metavar="DIR",
                   help="a version directory, or a root with `current` (default: $ARTIFACTS_DIR, else artifacts)")


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    text = "serve the API and the web pages with uvicorn (checks settings and artefacts first)"
    p = sub.add_parser("serve", help=text, description=text[0].upper() + text[1:] + ".", epilog=epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_serve_arguments(p)
    return p


def check_artifacts(settings: Settings) -> tuple[str, str]:
    """Load and verify the artefacts the workers will load: (what they are, their fingerprint).

    ArtifactError names what is wrong. The workers inherit the fingerprint (``VERIFIED_ENV``) and
    load that version without hashing its files again: the checksums were just compared here, and
    the arrays are still checked there.
    """
    from musicrec.index.artifacts import fingerprint, load_artifacts

    artifacts = load_artifacts(settings.artifacts_dir)
    return (f"{artifacts.model_version} ({artifacts.manifest.n_tracks} tracks"
            + (", SYNTHETIC DEMO catalog" if artifacts.manifest.demo else "") + f") at {artifacts.path}",
            fingerprint(artifacts.path))


@contextmanager
def metrics_dir(environ: MutableMapping[str, str]) -> Iterator[Path]:
    """The multiprocess metrics directory, emptied (a previous run's files would be summed in); a fresh
    temporary one, removed afterwards, unless PROMETHEUS_MULTIPROC_DIR names one."""
    given = environ.get(METRICS_DIR_ENV)
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="musicrec-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    environ[METRICS_DIR_ENV] = str(path)
    try:
        yield path
    finally:
        if not given:
            shutil.rmtree(path, ignore_errors=True)


def cmd_serve(args: argparse.Namespace) -> int:
    from musicrec import logs
    from musicrec.index.artifacts import ArtifactError

    for option, variable in OVERRIDES.items():
        value = getattr(args, option, None)
        if value is not None:
            os.environ[variable] = str(value)  # the workers read the environment, so set it there
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_level, settings.log_format)
        checked, os.environ[VERIFIED_ENV] = check_artifacts(settings)
    except (SettingsError, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("settings: %s; %d worker(s)", settings.masked(), settings.worker_count)
    log.info("artefacts: %s", checked)
    if not settings.cookie_secret:
        # One random secret for every worker of this start (each would otherwise make its own, and a
        # cookie signed by one would be a stranger to the others); the workers inherit the environment.
        os.environ["COOKIE_SECRET"] = secrets.token_urlsafe(32)
        log.warning("COOKIE_SECRET is not set: listener cookies are signed with a random secret for this start "
                    "only (after a restart every browser is a new listener); set COOKIE_SECRET to keep them")
    import uvicorn

    with metrics_dir(os.environ):
        uvicorn.run("musicrec.service.asgi:create_from_env", factory=True, host=settings.host, port=settings.port,
                    workers=settings.worker_count, loop="uvloop",
                    # httptools, with limits on a request head's size and time (musicrec/service/protocol.py)
                    http="musicrec.service.protocol:GuardedHttpToolsProtocol",
                    log_level=settings.log_level.lower(), log_config=logs.log_config(settings.log_level, settings.log_format),
                    access_log=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m musicrec.service", description=__doc__.splitlines()[0],
                                epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_serve_arguments(p)
    return cmd_serve(p.parse_args(argv))
