"""The load-time check of our decoding loop: it passes the real loop, catches broken ones (the engine then
serves with `generate` and says why), and forgives a greedy divergence at a near tie. On CUDA where a GPU
is present, graphs included."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from app.engines import decoder_check, fast_decode
from app.engines.decoder_check import NEAR_TIE_MARGINS, PROBE_TOKENS, PROBES, check_decoder, greedy_agreement
from app.engines.fast_decode import FastDecoder
from app.engines.hf import HFEngine
from app.params import GenerationParams

PROMPTS = ["这款耳机的音质很好，佩戴也很舒适。", "好", "请问怎么修改收货地址？"]
# (device, dtype): float32 everywhere; on a GPU also bfloat16, what "auto" serves with there.
SETTINGS = [("cpu", "float32")] + ([("cuda", "float32"), ("cuda", "bfloat16")] if torch.cuda.is_available() else [])


class NudgedDecoder(FastDecoder):
    """Plausible but wrong: the first layer's self-attention output is 1% too strong."""

    def __init__(self, model, **options) -> None:
        super().__init__(model, **options)
        norm, qkv_weight, out_weight, *rest = self.blocks[0]
        self.blocks[0] = (norm, qkv_weight, out_weight * 1.01, *rest)


class UnmaskedDecoder(FastDecoder):
    """Attends to the prompts' padding, as a forgotten encoder mask would."""

    def _begin(self, input_ids, attention_mask, per_prompt, steps):
        return super()._begin(input_ids, torch.ones_like(attention_mask), per_prompt, steps)


class FailingDecoder(FastDecoder):
    """Raises in its step, as a kernel missing on the device would."""

    def _step(self, buffers):
        raise RuntimeError("no kernel image is available for execution on the device")


def load(tiny_models, device: str, dtype: str):
    directory = tiny_models["huggingface"]
    model = AutoModelForSeq2SeqLM.from_pretrained(directory, dtype=getattr(torch, dtype)).to(device).eval()
    return model, AutoTokenizer.from_pretrained(directory)


def run_check(model, tokenizer, decoder):
    return check_decoder(model, tokenizer, decoder, str(model.device), model.dtype)


@pytest.mark.parametrize("device, dtype", SETTINGS)
def test_the_real_loop_passes_with_every_greedy_token_compared(tiny_models, device, dtype):
    model, tokenizer = load(tiny_models, device, dtype)
    decoder = FastDecoder(model, use_graphs=True)  # as HFEngine builds it: graphs on CUDA, eager on a CPU
    check = run_check(model, tokenizer, decoder)
    assert check.passed and check.reason == ""
    assert 0 <= check.max_logprob_gap <= check.tolerance
    assert check.probes == len(PROBES)
    assert check.greedy_positions > len(PROBES) * PROBE_TOKENS // 2  # near ties may skip a few, not most
    if device == "cuda":  # the check replayed the captured graph that serving replays
        assert decoder.use_graphs and any(buffers.graph is not None for buffers in decoder.graphs.values())


@pytest.mark.parametrize("device, dtype", SETTINGS)
def test_an_engine_whose_loop_passes_serves_with_it_and_shows_the_figures(tiny_models, device, dtype):
    engine = HFEngine(tiny_models["huggingface"], device=device, dtype=dtype, decoder="fast")
    info = engine.info()
    assert info["decoder"].startswith("fast") and "decoder_fallback" not in info
    figures = info["decoder_check"]
    assert set(figures) == {"max_logprob_gap", "tolerance", "probes", "greedy_positions", "seconds"}
    assert figures["max_logprob_gap"] <= figures["tolerance"]
    assert "decoder_check" not in HFEngine(tiny_models["huggingface"], device=device, decoder="generate").info()


def test_the_probes_differ_in_length_so_padding_is_checked(tiny_models):
    _, tokenizer = load(tiny_models, "cpu", "float32")
    mask = tokenizer(list(PROBES), return_tensors="pt", padding=True).attention_mask
    assert len(PROBES) >= 2 and not bool(mask.all())


@pytest.mark.parametrize("broken", [NudgedDecoder, UnmaskedDecoder])
def test_a_loop_that_computes_slightly_wrong_fails_on_its_log_probs(tiny_models, broken):
    model, tokenizer = load(tiny_models, "cpu", "float32")
    with torch.inference_mode():  # plausible: its greedy text still starts as the real loop's
        encoded = tokenizer(list(PROBES), return_tensors="pt", padding=True)
        params = GenerationParams(num_return_sequences=1, max_length=8, do_sample=False)
        [wrong] = broken(model, use_graphs=False).generate(encoded.input_ids, encoded.attention_mask, params, 1)
        [right] = FastDecoder(model, use_graphs=False).generate(encoded.input_ids, encoded.attention_mask, params, 1)
    assert torch.equal(wrong[0, :1], right[0, :1])
    check = run_check(model, tokenizer, broken(model, use_graphs=False))
    assert not check.passed
    assert check.max_logprob_gap > check.tolerance
    assert "不一致" in check.reason and f"容差 {check.tolerance:g}" in check.reason


@pytest.mark.parametrize("broken", [NudgedDecoder, UnmaskedDecoder, FailingDecoder])
def test_an_engine_with_a_broken_loop_falls_back_to_generate_and_says_why(tiny_models, monkeypatch, caplog, broken):
    monkeypatch.setattr(fast_decode, "FastDecoder", broken)  # what HFEngine builds when the fast loop is chosen
    with caplog.at_level(logging.WARNING):
        engine = HFEngine(tiny_models["huggingface"], device="cpu", decoder="auto")
    info = engine.info()
    assert info["decoder"] == "generate" and "decoder_check" not in info
    reason = info["decoder_fallback"]
    assert reason.startswith("自带解码循环在 cpu 上") and reason.endswith("已改用 transformers generate")
    assert "/" not in reason  # no paths of this machine
    if broken is FailingDecoder:
        assert "RuntimeError" in reason and "raised during its check" in caplog.text
    assert "failed its check on cpu" in caplog.text and "tolerance 0.001" in caplog.text
    outputs = engine.generate(PROMPTS, GenerationParams(num_return_sequences=2, max_length=8, seed=1))
    assert [len(texts) for texts in outputs] == [2] * len(PROMPTS)


def test_a_loop_that_returns_nan_fails(tiny_models):
    class NanDecoder(FastDecoder):
        def _step(self, buffers):
            return super()._step(buffers) * float("nan")

    model, tokenizer = load(tiny_models, "cpu", "float32")
    check = run_check(model, tokenizer, NanDecoder(model, use_graphs=False))
    assert not check.passed and "nan" in check.reason


def crafted(margins: list[float], ours_second_at: int | None, vocab: int = 6, eos: int = 1):
    """Our tokens and reference logits over positions whose two best logits are `margins` apart; the end
    token has the largest logit everywhere (greedy decoding held it back). At `ours_second_at`, our token is
    the reference's second best."""
    logits = torch.zeros(1, len(margins), vocab)
    logits[0, :, eos] = 50.0
    best, second = 3, 4
    logits[0, :, best] = 10.0
    logits[0, :, second] = 10.0 - torch.tensor(margins)
    ours = torch.full((1, len(margins)), best)
    if ours_second_at is not None:
        ours[0, ours_second_at] = second
    return ours, logits, eos


def test_a_divergence_at_a_near_tie_is_skipped_and_the_positions_after_it_still_count():
    near_tie = NEAR_TIE_MARGINS["float32"]
    ours, logits, eos = crafted([3.0, near_tie / 2, 3.0, 3.0], ours_second_at=1)
    assert greedy_agreement(ours, logits, eos, near_tie) == (3, None)


def test_a_divergence_where_the_reference_was_sure_fails_at_that_position():
    near_tie = NEAR_TIE_MARGINS["float32"]
    ours, logits, eos = crafted([3.0, 2 * near_tie, 3.0], ours_second_at=1)
    assert greedy_agreement(ours, logits, eos, near_tie) == (1, (0, 1))
    ours, logits, eos = crafted([3.0, 3.0, 3.0], ours_second_at=None)
    ours[0, 2] = eos  # the held-back end token, although its logit is the largest, is never the greedy choice
    assert greedy_agreement(ours, logits, eos, near_tie) == (2, (0, 2))


def test_the_tolerances_cover_every_dtype_the_loop_serves():
    assert set(decoder_check.LOGPROB_TOLERANCES) == {"float32", "bfloat16"}
    assert decoder_check.LOGPROB_TOLERANCES["float32"] < decoder_check.LOGPROB_TOLERANCES["bfloat16"]
