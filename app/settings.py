"""Every default and limit of the app, read once: flags > DPP_* environment > defaults."""

from __future__ import annotations

import importlib.util
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "damo/nlp_mt5_zero-shot-augment_chinese-base"
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
ROOT_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ENGINES = ("mt5", "mt5-ct2", "lexical")
CT2_DIR_NAME = "ctranslate2"  # where `python -m bundle.convert --ct2` puts the CTranslate2 model
ENGINE_CHOICES = ("auto", *ENGINES)
DECODERS = ("auto", "fast", "generate")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
JOB_EXECUTORS = ("local", "ray")
RAY_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9._-]+:\d{1,5})$")


class SettingsError(ValueError):
    """A flag or DPP_* variable has a value the app cannot use."""


def _opt(default: Any, help: str, *, secret: bool = False, **extra: Any) -> Any:
    """A setting; `kind=` where the default (None) does not tell the type; a `secret` is read from the environment
    only (a flag would show it in the process list) and never printed."""
    return field(default=default, repr=not secret, metadata={"help": help, "secret": secret, **extra})


@dataclass(frozen=True, kw_only=True)
class Settings:
    host: str = _opt("0.0.0.0", "address to listen on")
    port: int = _opt(7860, "port for the UI and the API")
    model_dir: Path = _opt(
        ROOT / "models" / "nlp_mt5_zero-shot-augment_chinese-base",
        "local model directory (ModelScope or Hugging Face layout)",
    )
    engine: str = _opt("auto", "auto (mt5-ct2 on CPU when converted, else mt5; lexical besides), mt5, mt5-ct2 "
                               "or lexical")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    cpu_only: bool = _opt(False, "never use a GPU (same as --device cpu)")
    dtype: str = _opt("auto", "compute dtype: auto, float32, bfloat16, float16")
    decoder: str = _opt("auto", "mt5 decoding: fast (our static-cache loop; CUDA graphs on a GPU), generate "
                                "(transformers' generate), or auto (fast where the model and dtype allow)")
    log_dir: Path = _opt(ROOT / "logs", "where webui.log is written (rotated daily, 7 kept)")
    log_level: str = _opt("INFO", "DEBUG, INFO, WARNING or ERROR")
    no_log_file: bool = _opt(False, "log to standard output only, no webui.log (in a container, whose runtime "
                                    "collects the output)")
    templates_file: Path = _opt(
        ROOT / "app" / "templates.json", "prompt templates, editable without touching code"
    )
    lexicon_file: Path = _opt(
        ROOT / "app" / "data" / "synonyms_reviewed.tsv", "reviewed synonym swaps for the lexical engine"
    )
    rules_file: Path = _opt(
        ROOT / "app" / "data" / "rules_reviewed.tsv",
        "reviewed rewrites of function words and small constructions for the lexical engine",
    )
    max_text_chars: int = _opt(1000, "longest accepted text, in characters")
    max_batch_texts: int = _opt(50, "most texts in one batch request")
    max_labels: int = _opt(50, "most candidate labels in one classification (at least 2)")
    max_label_chars: int = _opt(30, "longest accepted label, in characters")
    multi_label_threshold: float = _opt(
        0.5, "multi_label: a label is returned when its own probability reaches this (0-1)"
    )
    max_body_bytes: int = _opt(1_048_576, "largest accepted request body, in bytes")
    max_input_tokens: int = _opt(512, "prompt tokens kept; longer prompts are truncated")
    max_batch_size: int = _opt(0, "most prompts in one engine call, across the requests it serves; 0: the "
                                  "engine's own (64 for mt5 on a GPU, 16 otherwise)")
    batch_wait_ms: float = _opt(5.0, "longest wait for concurrent requests to join a short engine call")
    max_queue: int = _opt(64, "most requests waiting for the model, from every surface (REST, page, Gradio API); "
                              "more get a 503 with Retry-After")
    max_request_tokens: int = _opt(65536, "most tokens one request may ask for: texts x variants x max_length; "
                                          "more is a 422 work_too_large")
    no_coalescing: bool = _opt(False, "run every request in its own engine calls (turns dynamic batching off)")
    resample_rounds: int = _opt(2, "extra sampling rounds to replace variants the quality gate dropped")
    quality: str = _opt("on", "the quality gate: on (every check below) or off (only exact repeats are removed)")
    min_similarity: float = _opt(0.4, "gate: a variant whose character similarity to its text is lower is "
                                      "dropped as too_far (0-1; calibrated: python -m bench.gate_calibration)")
    max_similarity: float = _opt(0.99, "gate: a variant whose character similarity is higher is dropped as "
                                       "too_close (0-1; near copies that change only particles or punctuation "
                                       "are dropped whatever this is)")
    min_length_ratio: float = _opt(0.5, "gate: a variant shorter than this share of its text is too_far")
    max_length_ratio: float = _opt(2.0, "gate: a variant longer than this many times its text is too_far")
    min_label_prob: float = _opt(0.0, "gate, with labels and the text's label: a variant whose label probability "
                                      "is lower is dropped as label_changed (besides another label winning)")
    request_timeout_s: float = _opt(300.0, "longest time from a request's arrival to its answer before a 504")
    drain_seconds: float = _opt(25.0, "on SIGTERM: readiness turns 503, new work gets 503, and work in flight "
                                      "has this long to finish before the process exits 0")
    no_ui: bool = _opt(False, "serve the REST API only: no page, no Gradio API, gradio is not imported")
    data_dir: Path = _opt(ROOT / "data", "where file jobs live (SQLite, created on first use)")
    job_retention_days: float = _opt(7.0, "finished, failed and cancelled file jobs are deleted after this many days")
    max_file_bytes: int = _opt(100 * 1_048_576, "largest file a job accepts, in bytes")
    max_file_rows: int = _opt(100_000, "most data rows in a job's file")
    job_chunk_rows: int = _opt(50, "rows a file job sends to the model at a time; a job resumes from its last "
                                   "finished chunk")
    job_executor: str = _opt("local", "where file jobs run: local (this process's engines) or ray (a Ray "
                                      "cluster, --ray-address; needs ./start_dpp.sh --setup-only --ray)")
    ray_address: str = _opt("auto", "--job-executor ray: the cluster's head, HOST:PORT as `ray start --head` "
                                    "prints it, or auto (RAY_ADDRESS, or the cluster this machine is a node of)")
    ray_actors: int = _opt(0, "--job-executor ray: model copies (Ray actors) a job runs on; 0: one per GPU of the "
                              "cluster, or one per node where it has none")
    ray_actor_cpus: float = _opt(1.0, "--job-executor ray, on CPU nodes: cores each actor reserves (and its "
                                      "engine's threads)")
    api_keys_file: Path | None = _opt(None, "file of API keys, one per line (# starts a comment): when set, every "
                                            "route but /healthz and /readyz needs a key (REST: Authorization: "
                                            "Bearer KEY or X-API-Key: KEY), and the page asks for one", kind=Path)
    api_key: str = _opt("", "one API key, alone or besides --api-keys-file (environment only)", secret=True)
    root_path: str = _opt("", "the sub-path a reverse proxy serves dpp under (e.g. /dpp), the proxy removing it "
                              "before passing requests on; the page, its assets, the REST routes, /openapi.json and "
                              "gradio_client then work under it")
    metrics_open: bool = _opt(False, "with API keys, /metrics answers without one (for a Prometheus that has "
                                     "none); without keys it is open anyway")
    rate_limit: float = _opt(0.0, "requests a second each API key may send (each client address, without keys); "
                                  "more get a 429 with Retry-After; 0: no limit")
    rate_burst: int = _opt(20, "requests above --rate-limit a client may send at once")
    trusted_proxies: str = _opt("", "addresses or networks (comma separated, e.g. 10.0.0.5,10.1.0.0/16) of reverse "
                                    "proxies whose X-Forwarded-For and X-Forwarded-Proto are believed; nobody's else")

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise SettingsError(f"port must be 1-65535, got {self.port}")
        if not DEVICE_PATTERN.match(self.device):
            raise SettingsError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.engine not in ENGINE_CHOICES:
            raise SettingsError(f"engine must be one of {', '.join(ENGINE_CHOICES)}, got {self.engine!r}")
        if self.dtype not in DTYPES:
            raise SettingsError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.decoder not in DECODERS:
            raise SettingsError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise SettingsError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        for name in ("max_text_chars", "max_batch_texts", "max_label_chars", "max_body_bytes",
                     "max_input_tokens", "max_queue", "max_request_tokens", "max_file_bytes", "max_file_rows",
                     "job_chunk_rows"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_batch_size < 0:
            raise SettingsError(f"max_batch_size must be 0 (the engine's own) or more, got {self.max_batch_size}")
        if self.max_labels < 2:
            raise SettingsError(f"max_labels must be at least 2, got {self.max_labels}")
        if not 0 < self.multi_label_threshold < 1:
            raise SettingsError(f"multi_label_threshold must be between 0 and 1, got {self.multi_label_threshold}")
        if self.resample_rounds < 0:
            raise SettingsError(f"resample_rounds must be 0 or more, got {self.resample_rounds}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise SettingsError(f"batch_wait_ms must be 0-1000, got {self.batch_wait_ms}")
        if self.request_timeout_s <= 0:
            raise SettingsError(f"request_timeout_s must be positive, got {self.request_timeout_s}")
        if self.job_retention_days <= 0:
            raise SettingsError(f"job_retention_days must be positive, got {self.job_retention_days}")
        if self.root_path and not ROOT_PATH.match(self.root_path):
            raise SettingsError(f"root_path must be empty or a path such as /dpp or /tools/dpp (a leading /, no "
                                f"trailing /), got {self.root_path!r}")
        if self.rate_limit < 0:
            raise SettingsError(f"rate_limit must be 0 (no limit) or more, got {self.rate_limit}")
        if self.rate_burst < 1:
            raise SettingsError(f"rate_burst must be at least 1, got {self.rate_burst}")
        for proxy in self.proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise SettingsError(f"trusted_proxies: {proxy!r} is not an address or a network") from None
        if self.job_executor not in JOB_EXECUTORS:
            raise SettingsError(f"job_executor must be {' or '.join(JOB_EXECUTORS)}, got {self.job_executor!r}")
        if self.job_executor == "ray" and importlib.util.find_spec("ray") is None:
            raise SettingsError("job_executor ray needs Ray, which is not installed here: run ./start_dpp.sh "
                                "--setup-only --ray (it installs requirements-ray.lock), on every node too")
        if not RAY_ADDRESS.match(self.ray_address):
            raise SettingsError(f"ray_address must be auto or HOST:PORT (the head's, as ray start --head prints "
                                f"it), got {self.ray_address!r}")
        if self.ray_actors < 0 or self.ray_actor_cpus <= 0:
            raise SettingsError(f"ray_actors must be 0 or more and ray_actor_cpus positive, got {self.ray_actors} "
                                f"and {self.ray_actor_cpus}")
        if self.drain_seconds < 0:
            raise SettingsError(f"drain_seconds must be 0 or more, got {self.drain_seconds}")

        if self.quality not in ("on", "off"):
            raise SettingsError(f"quality must be on or off, got {self.quality!r}")
        for low, high in (("min_similarity", "max_similarity"), ("min_length_ratio", "max_length_ratio")):
            bound = 1.0 if low == "min_similarity" else 100.0
            if not 0 <= getattr(self, low) <= getattr(self, high) <= bound:
                raise SettingsError(f"{low} and {high} must satisfy 0 <= {low} <= {high} <= {bound:g}, got "
                                    f"{getattr(self, low)} and {getattr(self, high)}")
        if not 0 <= self.min_label_prob <= 1:
            raise SettingsError(f"min_label_prob must be 0-1, got {self.min_label_prob}")

    @property
    def keyed(self) -> bool:
        """Whether API keys are asked for (app/auth.py reads them)."""
        return self.api_keys_file is not None or bool(self.api_key.strip())

    @property
    def proxies(self) -> list[str]:
        """The trusted proxies' addresses and networks, as listed."""
        return [proxy.strip() for proxy in self.trusted_proxies.split(",") if proxy.strip()]

    @property
    def effective_device(self) -> str:
        return "cpu" if self.cpu_only else self.device

    @property
    def ct2_dir(self) -> Path:
        return self.model_dir / CT2_DIR_NAME


def setting_fields() -> list[Any]:
    return list(fields(Settings))


def default_of(f: Any) -> Any:
    return f.default if f.default is not MISSING else None


def env_name(name: str) -> str:
    return "DPP_" + name.upper()


def _coerce(f: Any, raw: Any) -> Any:
    kind = f.metadata.get("kind") or type(default_of(f))
    if isinstance(raw, kind) and kind is not bool:
        return raw
    text = str(raw).strip()
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(text)
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if issubclass(kind, Path):
            return Path(text).expanduser().resolve() if text or default_of(f) is not None else None
        return text
    except ValueError:
        raise SettingsError(f"{f.name} ({env_name(f.name)}): cannot read {text!r} as {kind.__name__}") from None


def load_settings(flags: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """Pick each setting from flags, then DPP_* variables, then the default (a secret: the variable only)."""
    picked = {}
    for f in fields(Settings):
        raw = None if f.metadata["secret"] else flags.get(f.name)
        if raw is None:
            raw = env.get(env_name(f.name))
        if raw is not None:
            picked[f.name] = _coerce(f, raw)
    return Settings(**picked)
