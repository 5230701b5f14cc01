"""mT5 through CTranslate2: the fast CPU path (int8 by default), with no torch at run time.

The model directory is what `python -m bundle.convert --ct2 SRC` writes: CTranslate2's `model.bin`,
`config.json` and vocabulary, and the tokenizer as one `tokenizer.json` (read by `tokenizers`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from app.errors import ModelUnavailable
from app.params import GenerationParams

log = logging.getLogger(__name__)

CT2_FILES = ("model.bin", "config.json", "tokenizer.json")
CONVERT_HINT = "请先运行 python -m bundle.convert --ct2 模型目录（见 README「CPU fast path」）"


class CT2Engine:
    """Answers `generate` and `score` in batches with a CTranslate2 translator."""

    name = "mt5-ct2"
    can_score = True
    wants_raw_text = False
    batch_size = 16

    def __init__(self, model_dir: Path, *, device: str = "cpu", compute_type: str = "default",
                 max_input_tokens: int = 512, threads: int = 0) -> None:
        try:
            import ctranslate2
            import tokenizers
        except ImportError as exc:
            raise ModelUnavailable(f"mt5-ct2 引擎需要 ctranslate2 和 tokenizers（{exc}）") from exc
        missing = [name for name in CT2_FILES if not (model_dir / name).is_file()]
        if missing:
            raise ModelUnavailable(f"CTranslate2 模型目录 {model_dir} 缺少 {', '.join(missing)}；{CONVERT_HINT}")
        started = time.monotonic()
        self._ct2 = ctranslate2
        self._dir = model_dir
        self._device = "cuda" if device.startswith("cuda") else "cpu"
        self._compute_type = compute_type
        self._threads = threads or len(os.sched_getaffinity(0))
        try:
            self._tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            self._tokenizer.no_padding()
            # Like transformers' truncation=True: the end token stays, the text is cut.
            self._tokenizer.enable_truncation(max_input_tokens)
            self._translator = self._new_translator()
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelUnavailable(f"CTranslate2 模型 {model_dir} 无法加载：{' '.join(str(exc).split())[:300]}；"
                                   f"{CONVERT_HINT}") from exc
        self._load_seconds = time.monotonic() - started
        self.generated_tokens = 0  # output tokens so far (the metrics read it)
        log.info("Model loaded successfully on %s in %.1f s from %s (CTranslate2 %s, compute %s)", self._device,
                 self._load_seconds, self._dir, ctranslate2.__version__, self._translator.compute_type)

    def _new_translator(self):
        """A translator built on a thread of its own that ends with the build. Built on a long-lived
        thread (the main thread, a batcher worker), the loading threads it leaves behind keep that
        thread's CPU share busy: generation on 2 cores took 1.25 s instead of 0.62 s."""
        built: dict = {}

        def build() -> None:
            try:
                built["translator"] = self._ct2.Translator(str(self._dir), device=self._device,
                                                           compute_type=self._compute_type, intra_threads=self._threads)
            except Exception as exc:  # noqa: BLE001 - handed to the caller below
                built["error"] = exc

        builder = threading.Thread(target=build, name="dpp-ct2-load")
        builder.start()
        builder.join()
        if "error" in built:
            raise built["error"]
        return built["translator"]

    def info(self) -> dict:
        return {
            "engine": self.name,
            "model": str(self._dir),
            "layout": "ctranslate2",
            "device": self._device,
            "dtype": self._translator.compute_type,
            "load_seconds": round(self._load_seconds, 2),
        }

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each prompt, with its end token, cut at max_input_tokens."""
        return [encoding.ids for encoding in self._tokenizer.encode_batch(prompts)]

    def _tokens(self, ids: list[int]) -> list[str]:
        return [self._tokenizer.id_to_token(i) for i in ids]

    def _ids(self, tokens: list[str]) -> list[int]:
        # The model's vocabulary is padded past the tokenizer's (250,112 rows for 250,100 tokens);
        # a padding row has no text, as with transformers' decode.
        ids = (self._tokenizer.token_to_id(token) for token in tokens)
        return [i for i in ids if i is not None]

    def _translate(self, sources: list[list[str]], translator=None, **options) -> list[list[int]]:
        results = (translator or self._translator).translate_batch(sources, beam_size=1, max_input_length=0,
                                                                   **options)
        return [self._ids(result.hypotheses[0]) for result in results]

    def greedy_ids(self, ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuation ids of already encoded prompts (without the end token)."""
        return self._translate([self._tokens(row) for row in ids], max_decoding_length=max_new_tokens)

    def generate(self, prompts: list[str], params: GenerationParams) -> list[list[str]]:
        per_prompt = params.num_return_sequences if params.do_sample else 1
        # Each requested sequence is its own row: CTranslate2 samples rows independently.
        sources = [self._tokens(ids) for ids in self.encode(prompts) for _ in range(per_prompt)]
        options = {"max_decoding_length": params.max_length, "min_decoding_length": params.min_new_tokens}
        if params.do_sample:
            # top_k 0 means no top-k cut in our API and in CTranslate2 alike.
            options.update(sampling_topk=params.top_k, sampling_topp=params.top_p,
                           sampling_temperature=params.temperature)
        translator = None
        if params.do_sample and params.seed is not None:
            # CTranslate2 seeds a worker thread's generator once, at its first draw
            # (OpenNMT/CTranslate2#1757), so a seed only holds in a new translator, whose new worker
            # starts from it. Loading the file again and a new translator's first call cost about 1.1 s
            # for mT5-base on 2 cores, paid by seeded requests only.
            self._ct2.set_random_seed(params.seed)
            translator = self._new_translator()
        ids = self._translate(sources, translator, **options)
        self.generated_tokens += sum(map(len, ids))
        texts = self._tokenizer.decode_batch(ids, skip_special_tokens=True)
        return [texts[i * per_prompt:(i + 1) * per_prompt] for i in range(len(prompts))]

    def score(self, prompt: str, candidates: list[str]) -> list[float]:
        """Sum of token log-probabilities of each candidate (with its end token) after `prompt`."""
        return self.score_batch([(prompt, candidates)])[0]

    def score_batch(self, items: list[tuple[str, list[str]]]) -> list[list[float]]:
        """`score` for many prompts, each with its own candidates, in one call of the translator."""
        prompts = [self._tokens(ids) for ids in self.encode([prompt for prompt, _ in items])]
        sources = [prompts[number] for number, (_, group) in enumerate(items) for _ in group]
        # CTranslate2 adds the end token to each target itself.
        targets = [self._tokens(ids[:-1]) for ids in self.encode([c for _, group in items for c in group])]
        totals = iter([float(sum(result.log_probs))
                       for result in self._translator.score_batch(sources, targets, max_input_length=0)])
        return [[next(totals) for _ in group] for _, group in items]
