"""The files the page and the Gradio API take and hand out.

Uploads are Gradio's: a path a client names is taken only from Gradio's upload folder, never from elsewhere
on the server. Downloads each get a folder of their own under one temporary directory, so that a file keeps
the name it is downloaded as; folders older than an hour are removed when the next file is made.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from gradio.utils import get_upload_folder

from app.errors import InvalidParameter

DOWNLOAD_DIR = Path(tempfile.gettempdir()) / "dpp-downloads"
DOWNLOAD_MAX_AGE_S = 3600


def download_path(name: str) -> Path:
    """A path for a new file named `name`, in a fresh folder; old folders are cleared first."""
    DOWNLOAD_DIR.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - DOWNLOAD_MAX_AGE_S
    for old in DOWNLOAD_DIR.iterdir():
        with contextlib.suppress(FileNotFoundError):  # another request may clear it at the same time
            if old.stat().st_mtime < cutoff:
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink()
    folder = DOWNLOAD_DIR / uuid.uuid4().hex[:12]
    folder.mkdir()
    return folder / name


def uploaded(path: object, field: str = "file") -> Path:
    """The path of a file uploaded through Gradio (the page's upload, gradio_client's handle_file)."""
    if not isinstance(path, str) or not path:
        raise InvalidParameter("请先上传文件", field=field)
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(Path(get_upload_folder()).resolve()) or not resolved.is_file():
        raise InvalidParameter("找不到上传的文件，请重新上传（gradio_client 请用 handle_file(路径) 传文件）", field=field)
    return resolved
