"""mT5 through transformers and torch: the reference engine, on GPU or CPU."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from app.engines.decoder_check import FALLBACK, check_decoder
from app.engines.model_files import inspect_model_dir
from app.errors import ModelUnavailable
from app.params import GenerationParams

log = logging.getLogger(__name__)

# Cross-attention keys and values that one scoring pass may copy out to its candidates' rows: prompts
# with more candidates or longer text are scored in several passes.
SCORE_BUDGET_BYTES = 256 * 2**20
# Weights that transformers recreates from others when missing from a checkpoint.
_DERIVED_KEYS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def _import_torch():
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ModelUnavailable(
            f"mT5 引擎需要 torch 和 transformers（{exc}）：请用 ./start_dpp.sh 按 requirements.lock 安装"
        ) from exc
    return torch, transformers


def pick_device(torch, requested: str) -> str:
    """Resolve 'auto' to cuda:0 when a GPU is usable, else cpu; refuse a GPU that is not there."""
    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailable(f"请求的设备 {requested} 不可用：未检测到 CUDA")
    return "cuda:0" if requested == "cuda" else requested


def pick_dtype(torch, device: str, requested: str):
    """Float32 on CPU; bfloat16 on GPUs that support it, float32 on those that do not."""
    if requested != "auto":
        return getattr(torch, requested)
    if device == "cpu":
        return torch.float32
    # T5 activations overflow in float16 (garbage or <unk> output); bfloat16 keeps float32's range.
    # Emulated bfloat16 (T4, V100) is slower than float32, so only native support counts.
    with torch.cuda.device(device):
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native else torch.float32


class HFEngine:
    """Loads a local T5/mT5 checkpoint and answers `generate` and `score` in batches."""

    name = "mt5"
    can_score = True
    wants_raw_text = False

    def __init__(self, model_dir: Path, *, device: str = "auto", dtype: str = "auto",
                 max_input_tokens: int = 512, decoder: str = "auto") -> None:
        torch, transformers = _import_torch()
        files = inspect_model_dir(model_dir)
        started = time.monotonic()
        self._torch = torch
        self._device = pick_device(torch, device)
        self._dtype = pick_dtype(torch, self._device, dtype)
        self._max_input_tokens = max_input_tokens
        try:
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            model, loading = transformers.AutoModelForSeq2SeqLM.from_pretrained(
                model_dir, local_files_only=True, dtype=self._dtype, output_loading_info=True
            )
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, EOFError) as exc:
            raise ModelUnavailable(f"模型目录 {model_dir} 的权重无法加载：{_one_line(exc)}") from exc
        _check_complete(model_dir, loading)
        self._model = model.to(self._device).eval()
        # A GPU decodes 64 prompts (192 rows of variants) in about the time of one; a CPU's time grows with rows.
        self.batch_size = 64 if self._device.startswith("cuda") else 16
        self._fast = self._fast_decoder(decoder)
        self._decoder_fallback: str | None = None  # why the fast loop was chosen but does not serve
        self._decoder_check: dict | None = None
        if self._fast is not None:
            self._check_fast_decoder()
        if self._fast is not None and self._device.startswith("cuda"):
            self._warm_up()
        self._files = files
        self._load_seconds = time.monotonic() - started
        self.generated_tokens = 0  # output tokens so far, end tokens included (the metrics read it)
        # The operator's log names the directory in full; /readyz and the page, open to anyone, only its name.
        log.info("Model loaded successfully on %s in %.1f s from %s (dtype=%s layout=%s)", self._device,
                 self._load_seconds, files.directory, str(self._dtype).removeprefix("torch."), files.layout)

    def _fast_decoder(self, decoder: str):
        """Our decoding loop (app/engines/fast_decode.py) unless `generate` is asked for or the model
        is outside what it serves: then None, and transformers' `generate` decodes."""
        from app.engines import fast_decode

        if decoder == "generate":
            return None
        if not fast_decode.supports(self._model, self._dtype):
            report = log.warning if decoder == "fast" else log.info
            report("The fast decoder does not serve %s in %s; using transformers' generate",
                   self._model.config.model_type, self._dtype)
            return None
        return fast_decode.FastDecoder(self._model, use_graphs=True)

    def _check_fast_decoder(self) -> None:
        """Serve with our loop only if it agrees with transformers here, on this device and dtype
        (app/engines/decoder_check.py); otherwise with `generate`, saying why in `info()`."""
        check = check_decoder(self._model, self._tokenizer, self._fast, self._device, self._dtype)
        figures = check.figures()
        if check.passed:
            self._decoder_check = figures
            log.info("The fast decoder agrees with transformers on %s: max log-prob gap %s (tolerance %g), "
                     "%d greedy positions, %.2f s", self._device, figures["max_logprob_gap"], check.tolerance,
                     check.greedy_positions, check.seconds)
            return
        log.warning("The fast decoder failed its check on %s: max log-prob gap %s (tolerance %g), "
                    "%d greedy positions agreed; using transformers' generate", self._device,
                    figures["max_logprob_gap"], check.tolerance, check.greedy_positions)
        self._fast = None
        self._decoder_fallback = check.reason

    def _warm_up(self) -> None:
        """Decode one default request (captures its CUDA graph, so the first client's is fast). Should our
        loop fail on this GPU and torch, serving goes on with `generate` rather than failing requests."""
        try:
            self.generate(["预热"], GenerationParams())
        except Exception as exc:  # noqa: BLE001 - any failure of the fast path leaves the plain one
            log.exception("The fast decoder failed its warm-up on %s; using transformers' generate", self._device)
            self._fast = None
            self._decoder_fallback = f"自带解码循环在 {self._device} 上预热出错（{type(exc).__name__}），{FALLBACK}"

    def info(self) -> dict:
        details = {
            "engine": self.name,
            "model": str(self._files.directory),
            "layout": self._files.layout,
            "device": self._device,
            "dtype": str(self._dtype).removeprefix("torch."),
            "decoder": "generate" if self._fast is None else self._fast.info()["decoder"],
            "load_seconds": round(self._load_seconds, 2),
        }
        if self._decoder_fallback is not None:
            details["decoder_fallback"] = self._decoder_fallback
        elif self._fast is not None and self._decoder_check is not None:
            details["decoder_check"] = self._decoder_check
        if self._device.startswith("cuda"):
            details["gpu_memory_peak_bytes"] = self._torch.cuda.max_memory_reserved(self._device)
        return details

    def _encode(self, prompts: list[str]):
        return self._tokenizer(
            prompts, return_tensors="pt", padding=True, truncation=True, max_length=self._max_input_tokens
        ).to(self._device)

    def generate(self, prompts: list[str], params: GenerationParams) -> list[list[str]]:
        torch = self._torch
        per_prompt = params.num_return_sequences if params.do_sample else 1
        with torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            encoded = self._encode(prompts)
            if self._fast is not None:
                chunks = self._fast.generate(encoded.input_ids, encoded.attention_mask, params, per_prompt)
            else:
                chunks = [self._model.generate(**encoded, **_generate_options(params, per_prompt))]
        # Each row starts with the decoder's start token, which is the pad token, as is what follows its end.
        self.generated_tokens += sum(int((chunk != self._tokenizer.pad_token_id).sum()) for chunk in chunks)
        texts = [text for chunk in chunks for text in self._tokenizer.batch_decode(chunk, skip_special_tokens=True)]
        return [texts[i * per_prompt:(i + 1) * per_prompt] for i in range(len(prompts))]

    def score(self, prompt: str, candidates: list[str]) -> list[float]:
        """Sum of token log-probabilities of each candidate (with its end token) after `prompt`."""
        return self.score_batch([(prompt, candidates)])[0]

    def score_batch(self, items: list[tuple[str, list[str]]]) -> list[list[float]]:
        """`score` for many prompts, each with its own candidates, in few passes.

        The prompts go through the encoder together and their candidates through the decoder as one
        padded batch, as far as SCORE_BUDGET_BYTES of cross-attention keys and values allows (one
        prompt's candidates share its keys and values as views, whatever their number). The
        vocabulary projection runs once per distinct prefix of a prompt's candidates (labels share
        their first tokens), never on padding.
        """
        from app.engines.fast_decode import kv_bytes

        lengths = [len(ids) for ids in self._tokenizer([prompt for prompt, _ in items], truncation=True,
                                                       max_length=self._max_input_tokens).input_ids]
        per_row_token = kv_bytes(self._model.config, self._dtype)
        results: list[list[float]] = []
        group: list[tuple[str, list[str]]] = []
        rows = longest = 0
        for item, length in zip(items, lengths):
            rows, longest = rows + len(item[1]), max(longest, length)
            if group and rows * longest * per_row_token > SCORE_BUDGET_BYTES:
                results.extend(self._score_group(group))
                group, rows, longest = [], len(item[1]), length
            group.append(item)
        if group:
            results.extend(self._score_group(group))
        return results

    def _score_group(self, items: list[tuple[str, list[str]]]) -> list[list[float]]:
        torch = self._torch
        candidates = [candidate for _, group in items for candidate in group]
        owner_list = [number for number, (_, group) in enumerate(items) for _ in group]
        with torch.inference_mode():
            encoded = self._encode([prompt for prompt, _ in items])
            hidden = self._model.get_encoder()(**encoded).last_hidden_state
            targets = self._tokenizer(candidates, return_tensors="pt", padding=True).input_ids.to(self._device)
            inputs = self._model._shift_right(targets)
            owners = torch.tensor(owner_list, device=self._device)
            states = self._decoder_states(hidden, encoded.attention_mask, inputs, owners)
            # A position's state depends only on its prompt and the tokens before it (causal attention).
            rows, positions = (targets != self._tokenizer.pad_token_id).nonzero(as_tuple=True)
            prefixes: dict[tuple[int, ...], int] = {}
            firsts: list[tuple[int, int]] = []
            slots = []
            for row, position in zip(rows.tolist(), positions.tolist()):
                key = (owner_list[row], *inputs[row, :position + 1].tolist())
                if key not in prefixes:
                    prefixes[key] = len(firsts)
                    firsts.append((row, position))
                slots.append(prefixes[key])
            first_rows, first_positions = torch.tensor(firsts, device=self._device).unbind(-1)
            logprobs = self._model.lm_head(states[first_rows, first_positions]).float().log_softmax(-1)
            picked = logprobs[torch.tensor(slots, device=self._device), targets[rows, positions]]
            totals = torch.zeros(len(candidates), dtype=torch.float64, device=self._device)
            totals = totals.index_add_(0, rows, picked.double()).tolist()
        bounds = [0]
        for _, group in items:
            bounds.append(bounds[-1] + len(group))
        return [totals[start:stop] for start, stop in zip(bounds, bounds[1:])]

    def _decoder_states(self, hidden, attention_mask, inputs, owners):
        """Decoder states for continuations of encoded prompts; row r continues prompt owners[r].

        The prompts' cross-attention keys and values are computed once, by one decoder step over the
        prompts, and then given to their rows: as views where there is one prompt, instead of once
        per candidate.
        """
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        decoder, config, count = self._model.get_decoder(), self._model.config, inputs.shape[0]
        warm = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
        start = inputs[:1, :1].expand(hidden.shape[0], 1)
        decoder(input_ids=start, encoder_hidden_states=hidden, encoder_attention_mask=attention_mask,
                past_key_values=warm, use_cache=True)
        cross = warm.cross_attention_cache

        def per_row(tensor):
            if tensor.shape[0] == 1:
                return tensor.expand(count, *tensor.shape[1:])
            return tensor.index_select(0, owners)

        for layer in cross.layers:
            layer.keys, layer.values = per_row(layer.keys), per_row(layer.values)
        return decoder(
            input_ids=inputs,
            encoder_hidden_states=per_row(hidden),
            encoder_attention_mask=per_row(attention_mask),
            past_key_values=EncoderDecoderCache(DynamicCache(config=config), cross),
            use_cache=True,
        ).last_hidden_state


def _generate_options(params: GenerationParams, per_prompt: int) -> dict:
    options = {
        "max_new_tokens": params.max_length,
        "min_new_tokens": params.min_new_tokens,
        "num_return_sequences": per_prompt,
        "do_sample": params.do_sample,
    }
    if params.do_sample:
        return {**options, "temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p}
    return {**options, "temperature": None, "top_k": None, "top_p": None}


def _check_complete(model_dir: Path, loading: dict) -> None:
    missing = [k for k in loading.get("missing_keys", ()) if not k.endswith(_DERIVED_KEYS)]
    mismatched = list(loading.get("mismatched_keys", ()))
    if missing or mismatched:
        detail = f"缺少 {len(missing)} 个张量（如 {missing[0]}）" if missing else f"{len(mismatched)} 个张量形状不符"
        raise ModelUnavailable(f"模型目录 {model_dir} 的权重与 config.json 不匹配：{detail}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"
