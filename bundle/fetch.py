"""Download the model on a connected machine, with ModelScope's or Hugging Face's own downloader.

    python -m bundle.fetch                                   # ModelScope, into models/
    python -m bundle.fetch --source huggingface --model-id OWNER/NAME [--endpoint https://mirror]

Without a network it stops within seconds and says so; the air-gapped server never runs this.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from app.engines.model_files import inspect_model_dir
from app.errors import ModelUnavailable
from app.settings import MODEL_ID, ROOT, Settings

SOURCES = ("modelscope", "huggingface")
ENDPOINTS = {"modelscope": "https://www.modelscope.cn", "huggingface": "https://huggingface.co"}
CONNECT_TIMEOUT_S = 5.0
FETCH_LOCK = Path(__file__).with_name("fetch.lock").relative_to(ROOT)


class FetchError(Exception):
    """The download cannot happen; the message says why and what to do instead."""


def endpoint_of(source: str, endpoint: str | None) -> str:
    if endpoint:
        return endpoint.rstrip("/")
    if source == "huggingface" and os.environ.get("HF_ENDPOINT"):
        return os.environ["HF_ENDPOINT"].rstrip("/")
    if source == "modelscope" and os.environ.get("MODELSCOPE_DOMAIN"):
        return "https://" + os.environ["MODELSCOPE_DOMAIN"].removeprefix("https://").rstrip("/")
    return ENDPOINTS[source]


def _address(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)


def connect_failure(url: str, timeout: float) -> str | None:
    """Resolve the host of `url` and open a TCP connection to it: None when that works, else why not."""
    try:
        with socket.create_connection(_address(url), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def check_reachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, and say what to do instead, on a machine with no network."""
    started = time.monotonic()
    reason = connect_failure(url, timeout)
    if reason is not None:
        host, port = _address(url)
        raise FetchError(
            f"cannot reach {host}:{port} ({reason}, after {time.monotonic() - started:.1f} s). bundle.fetch needs a "
            "machine with internet access. On an air-gapped server, unpack a bundle built elsewhere "
            "(python -m bundle.build), or copy a model directory there and pass --model-dir."
        )


def _downloader(source: str):
    if source == "modelscope":
        try:
            from modelscope import snapshot_download
        except ImportError as exc:
            raise FetchError(f"ModelScope's downloader is not installed ({exc}); install it with: "
                             f".venv/bin/python -m pip install -r {FETCH_LOCK}") from exc
        return snapshot_download
    os.environ["HF_HUB_OFFLINE"] = "0"  # the launcher sets it to 1; fetching is the one exception
    from huggingface_hub import snapshot_download

    return snapshot_download


def fetch(source: str, model_id: str, target: Path, *, revision: str | None = None,
          endpoint: str | None = None) -> Path:
    download = _downloader(source)
    url = endpoint_of(source, endpoint)
    check_reachable(url)
    print(f"[fetch] {model_id} from {url} into {target}", file=sys.stderr, flush=True)
    target.mkdir(parents=True, exist_ok=True)
    if source == "modelscope":
        download(model_id, revision=revision, local_dir=str(target))
    else:
        download(model_id, revision=revision, local_dir=target, endpoint=url)
    try:
        files = inspect_model_dir(target)
    except ModelUnavailable as exc:
        raise FetchError(f"the download finished but the directory is not a usable model: {exc}") from exc
    return files.directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bundle.fetch",
        description="Download the mT5 model into models/ on a connected machine (then: python -m bundle.build).",
    )
    parser.add_argument("--source", choices=SOURCES, default="modelscope",
                        help="where to download from (default: modelscope, where the model is published)")
    parser.add_argument("--model-id", help=f"model id (default for modelscope: {MODEL_ID}; required for huggingface)")
    parser.add_argument("--revision", help="branch, tag or commit (default: the source's default)")
    parser.add_argument("--endpoint", help="a mirror's address, e.g. https://hf-mirror.com (default: the source's own)")
    parser.add_argument("--out", type=Path, default=Settings().model_dir,
                        help="directory to download into (default: the app's --model-dir default)")
    args = parser.parse_args(argv)
    model_id = args.model_id or (MODEL_ID if args.source == "modelscope" else None)
    if model_id is None:
        parser.error("--source huggingface needs --model-id: the model is published on ModelScope, "
                     "give the id of a Hugging Face copy")
    try:
        directory = fetch(args.source, model_id, args.out, revision=args.revision, endpoint=args.endpoint)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(f"Model ready: {directory.resolve()}  (next: python -m bundle.build --model-dir {args.out} --profile cpu)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
