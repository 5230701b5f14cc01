"""Operator logs: logs/webui.log rotated daily (7 kept); every line carries the request id."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from contextvars import ContextVar
from pathlib import Path

request_id: ContextVar[str] = ContextVar("request_id", default="-")

FORMAT = "%(asctime)s %(levelname)s %(name)s rid=%(request_id)s %(message)s"
LOG_FILE = "webui.log"
DAYS_KEPT = 7


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure_logging(log_dir: Path | None, level: str) -> Path | None:
    """Send the app's logs to the console and to a daily-rotated file under `log_dir`; returns the file's path.
    With no `log_dir` (in a container), to standard output only, where the container's runtime collects them."""
    formatter = logging.Formatter(FORMAT)
    handlers: list[logging.Handler] = []
    path = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / LOG_FILE
        handlers.append(logging.handlers.TimedRotatingFileHandler(
            path, when="midnight", backupCount=DAYS_KEPT, encoding="utf-8", errors="backslashreplace"
        ))
    handlers.append(logging.StreamHandler(sys.stderr if log_dir is not None else sys.stdout))
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_dpp", False):
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        handler._dpp = True
        handler.setFormatter(formatter)
        handler.addFilter(_RequestIdFilter())
        root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's access log repeats what our one line per request says, without the request id.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    return path
