"""Entry point: parse flags, check the port, build the app, serve it with uvicorn."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys

from app.settings import SettingsError, default_of, env_name, load_settings, setting_fields


def parse_flags(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(
        prog="start_dpp.sh",
        description="dpp: Chinese text augmentation and zero-shot classification (UI and API on one port).",
        epilog="Every flag can also be set as a DPP_* environment variable (flags win). "
               "Launcher-only flags: --setup-only (prepare .venv and exit), --ray (also install Ray, for "
               "--job-executor ray), --dev (also install test packages and Ray).",
    )
    for f in setting_fields():
        if f.metadata["secret"]:
            continue  # environment only
        flag = "--" + f.name.replace("_", "-")
        default = default_of(f)
        text = f"{f.metadata['help']} (env {env_name(f.name)}, default {'off' if default is None else default})"
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_const", const=True, default=None, help=text)
        else:
            parser.add_argument(flag, default=None, metavar=f.name.upper(), help=text)
    return vars(parser.parse_args(argv))


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As uvicorn binds: connections of a server that just stopped (TIME_WAIT) do not hold the port,
        # a server still listening on it does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _exit_cleanly(signum, frame) -> None:
    raise SystemExit(0)


def main(argv: list[str]) -> int:
    try:
        settings = load_settings(parse_flags(argv), os.environ)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not port_is_free(settings.host, settings.port):
        print(f"error: port {settings.port} on {settings.host} is already in use; "
              f"stop the other process or pass --port", file=sys.stderr)
        return 1
    # Nothing may reach for a model hub or phone home, also when started without the launcher, and
    # whatever the environment says: the app only ever reads local files.
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
                      GRADIO_ANALYTICS_ENABLED="False", DO_NOT_TRACK="1")

    from app.auth import KeysError
    from app.logs import configure_logging
    from app.server import DrainingServer, create_app
    from app.tasks import TemplatesError

    log_file = configure_logging(None if settings.no_log_file else settings.log_dir, settings.log_level)
    try:
        app = create_app(settings)
    except (TemplatesError, KeysError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"dpp serving on http://{settings.host}:{settings.port} (logs: {log_file or 'standard output'})",
          flush=True)
    # SIGTERM drains (readiness 503, new work 503, accepted work finishes within --drain-seconds), then
    # the process ends with 0. A second signal stops it at once; uvicorn raises that one again after its
    # shutdown, which ends with 0 here too.
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, _exit_cleanly)
    DrainingServer(app, settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
