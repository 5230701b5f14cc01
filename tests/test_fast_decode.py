"""Our decoding loop against transformers' `generate`: token for token in float32, on CPU here and on CUDA
(graphs included) where a GPU is present (bench/on_device.sh runs this file there)."""

from __future__ import annotations

import collections

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from app.engines import fast_decode
from app.engines.fast_decode import FastDecoder
from app.engines.hf import HFEngine
from app.params import GenerationParams

PROMPTS = [
    "这家店的菜很好吃，服务也周到。",
    "文本分类。\n候选标签：体育,财经,娱乐。\n文本内容：球队昨晚赢了比赛",
    "短",
    "为以下的文本生成标题：\n快递三天就到了，包装完好，客服回复及时。",
    "情感分析：物流太慢了",
]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# eager: exact shapes; reused: shapes rounded up and buffers kept between calls (what graphs need);
# graphs: the captured step (CUDA only).
MODES = ["eager", "reused", "graphs"]
# Sum of a label's token log-probabilities, GPU float32 against CPU float32 (no TF32 in matmuls).
GPU_SCORE_TOLERANCE = 1e-4


def greedy(max_length: int, min_new_tokens: int = 0) -> GenerationParams:
    return GenerationParams(num_return_sequences=1, max_length=max_length, min_new_tokens=min_new_tokens,
                            do_sample=False)


@pytest.fixture(scope="module", params=DEVICES)
def model_and_tokenizer(request, tiny_models):
    directory = tiny_models["modelscope"]
    model = AutoModelForSeq2SeqLM.from_pretrained(directory, dtype=torch.float32).to(request.param).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    with torch.inference_mode():
        encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True).to(request.param)
        tokens = model.generate(**encoded, max_new_tokens=24, do_sample=False)[:, 1:]
    # Random weights seldom say the real end token. Make a token the model does say, but not in every
    # row and not first, the end token, so that rows end at different steps and padding gets exercised.
    counts = collections.Counter(tokens[:, 1:].flatten().tolist())
    ending = next(token for token, _ in counts.most_common()
                  if token not in (0, 1) and 0 < int((tokens == token).any(-1).sum()) < len(PROMPTS))
    model.config.eos_token_id = model.generation_config.eos_token_id = ending
    return model, tokenizer


def decoder_for(model, mode: str) -> FastDecoder:
    if mode == "graphs" and model.device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    return FastDecoder(model, use_graphs=mode == "graphs", reuse_buffers=mode != "eager")


def reference(model, encoded, params: GenerationParams) -> torch.Tensor:
    output = model.generate(**encoded, max_new_tokens=params.max_length, min_new_tokens=params.min_new_tokens,
                            do_sample=False, temperature=None, top_k=None, top_p=None)
    return output[:, 1:]  # without the decoder start token


def same_tokens(a: torch.Tensor, b: torch.Tensor, pad: int) -> bool:
    width = max(a.shape[1], b.shape[1])
    return torch.equal(torch.nn.functional.pad(a, (0, width - a.shape[1]), value=pad),
                       torch.nn.functional.pad(b, (0, width - b.shape[1]), value=pad))


@pytest.mark.parametrize("mode", MODES)
def test_greedy_equals_generate_token_for_token(model_and_tokenizer, mode):
    model, tokenizer = model_and_tokenizer
    decoder = decoder_for(model, mode)
    ended_early = 0
    # Several calls in a row with other batch sizes and prompt lengths: reused buffers keep the last
    # call's keys and values, which must never leak into the next.
    for prompts, params in [(PROMPTS, greedy(24)), (PROMPTS[:3], greedy(10)), (PROMPTS[2:3], greedy(9)),
                            (PROMPTS[1:], greedy(24, min_new_tokens=12)), (PROMPTS, greedy(40))]:
        with torch.inference_mode():
            encoded = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
            expected = reference(model, encoded, params)
            [got] = decoder.generate(encoded.input_ids, encoded.attention_mask, params, 1)
        assert same_tokens(got, expected, model.config.pad_token_id), (prompts, params)
        assert not (got[:, :params.min_new_tokens] == model.config.eos_token_id).any()
        ended_early += int((got == model.config.eos_token_id).any(-1).sum())
    assert ended_early, "no row ended before max_length: the end-token handling went untested"


@pytest.mark.parametrize("mode", MODES)
def test_a_pass_larger_than_the_cache_budget_runs_in_chunks(model_and_tokenizer, monkeypatch, mode):
    model, tokenizer = model_and_tokenizer
    decoder = decoder_for(model, mode)
    params = greedy(16)
    with torch.inference_mode():
        encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True).to(model.device)
        # Room for 3 prompts' keys and values (16 of their own, one per prompt token): passes of 3 exact
        # prompts, or of 1 where shapes are rounded up (prompts to 1, 4, 16, ...; prompt tokens to 64, ...).
        source = encoded.input_ids.shape[1]
        budget = 3 * (16 + source) * fast_decode.kv_bytes(model.config, model.dtype)
        monkeypatch.setattr(fast_decode, "CACHE_BUDGET_BYTES", budget)
        assert decoder.prompts_per_call(16, 1, source) == 3
        assert decoder.prompts_per_call(16, 1, 4 * source) < 3 < decoder.prompts_per_call(16, 1, source // 4)
        chunks = decoder.generate(encoded.input_ids, encoded.attention_mask, params, 1)
        expected = reference(model, encoded, params)
    assert [len(chunk) for chunk in chunks] == ([3, 2] if mode == "eager" else [1] * 5)
    assert all(decoder.cache_bytes(shape) <= budget for shape in decoder.graphs)
    pad = model.config.pad_token_id
    joined = torch.cat([torch.nn.functional.pad(chunk, (0, 16 - chunk.shape[1]), value=pad) for chunk in chunks])
    assert same_tokens(joined, expected, pad)


@pytest.mark.parametrize("mode", ["reused", "graphs"])
def test_buffers_kept_between_calls_stay_within_their_budget(model_and_tokenizer, monkeypatch, mode):
    """Calls of many shapes keep the most recent shapes' buffers, within KEPT_BYTES and MAX_GRAPHS; what a
    call needs evicts the least recently used, and a kept shape is reused as it is."""
    model, tokenizer = model_and_tokenizer
    decoder = decoder_for(model, mode)
    # Room for the buffers of 16 and of 128 new tokens (one prompt, up to 64 prompt tokens) together.
    monkeypatch.setattr(fast_decode, "KEPT_BYTES", sum(decoder.buffer_bytes(fast_decode._Shape(1, 1, 64, steps))
                                                       for steps in (16, 128)))
    with torch.inference_mode():
        encoded = tokenizer(PROMPTS[:1], return_tensors="pt", padding=True).to(model.device)
        first_buffers = {}
        for steps in (16, 32, 16, 64, 16, 128):
            decoder.generate(encoded.input_ids, encoded.attention_mask, greedy(steps), 1)
            assert decoder.kept_bytes() <= fast_decode.KEPT_BYTES and len(decoder.graphs) <= fast_decode.MAX_GRAPHS
            latest, buffers = list(decoder.graphs.items())[-1]
            assert latest.steps == steps  # the call's own shape, most recently used
            first_buffers.setdefault(steps, buffers)
    # 16 new tokens came back often enough to stay, on the same buffers; 32 and 64 went for 128's room.
    assert [shape.steps for shape in decoder.graphs] == [16, 128]
    assert next(iter(decoder.graphs.values())) is first_buffers[16]


@pytest.mark.parametrize("mode", MODES)
def test_sampling_with_one_candidate_left_is_greedy(model_and_tokenizer, mode):
    """top_k=1 leaves one choice: the sampling path then walks the greedy path, row for row."""
    model, tokenizer = model_and_tokenizer
    decoder = decoder_for(model, mode)
    with torch.inference_mode():
        encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True).to(model.device)
        expected = reference(model, encoded, greedy(20))
        params = GenerationParams(num_return_sequences=3, max_length=20, temperature=1.5, top_k=1)
        [got] = decoder.generate(encoded.input_ids, encoded.attention_mask, params, 3)
    assert got.shape[0] == 3 * len(PROMPTS)
    assert same_tokens(got, expected.repeat_interleave(3, dim=0), model.config.pad_token_id)


@pytest.mark.parametrize("mode", MODES)
def test_sampling_gives_each_prompt_its_own_variants_reproducibly(model_and_tokenizer, mode):
    model, tokenizer = model_and_tokenizer
    decoder = decoder_for(model, mode)
    params = GenerationParams(num_return_sequences=4, max_length=16, min_new_tokens=16, temperature=1.5)

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        with torch.inference_mode():
            encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True).to(model.device)
            [got] = decoder.generate(encoded.input_ids, encoded.attention_mask, params, 4)
        return got

    first = run(7)
    assert first.shape == (4 * len(PROMPTS), 16)
    assert not (first == model.config.eos_token_id).any()  # min_new_tokens holds the end back
    assert torch.equal(first, run(7))
    assert not torch.equal(first, run(8))
    # A prompt's variants differ from each other: each row samples on its own.
    for prompt in range(len(PROMPTS)):
        assert len({tuple(row) for row in first[4 * prompt:4 * prompt + 4].tolist()}) > 1


@pytest.mark.parametrize("top_k, top_p", [(50, 0.9), (0, 0.7), (5, 1.0), (20, 0.3)])
def test_sampling_keeps_the_tokens_transformers_keeps(top_k, top_p):
    """Over many draws, the tokens sampled are exactly those that transformers' top-k and top-p warpers
    leave, each about as often as their renormalised probability."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 400, generator=generator) * 3
    params = GenerationParams(temperature=0.7, top_k=top_k, top_p=top_p)
    warped = logits / params.temperature
    if top_k:
        warped = TopKLogitsWarper(top_k)(None, warped)
    warped = TopPLogitsWarper(top_p)(None, warped)
    expected = warped.softmax(-1)[0]
    torch.manual_seed(0)
    draws = fast_decode._sample(logits.expand(20000, -1), params)
    frequencies = torch.bincount(draws, minlength=400).double() / len(draws)
    assert set(draws.tolist()) <= set(expected.nonzero().flatten().tolist())
    assert (frequencies - expected.double()).abs().max() < 0.02


def test_engine_serves_through_the_fast_decoder(tiny_models):
    fast = HFEngine(tiny_models["huggingface"], device="cpu", decoder="fast")
    plain = HFEngine(tiny_models["huggingface"], device="cpu", decoder="generate")
    assert fast.info()["decoder"] == "fast" and plain.info()["decoder"] == "generate"
    assert HFEngine(tiny_models["huggingface"], device="cpu").info()["decoder"] == "fast"  # auto
    params = greedy(24)
    assert fast.generate(PROMPTS, params) == plain.generate(PROMPTS, params)
    sampled = fast.generate(PROMPTS[:2], GenerationParams(num_return_sequences=3, max_length=12, seed=3))
    assert [len(outputs) for outputs in sampled] == [3, 3]
    assert sampled == fast.generate(PROMPTS[:2], GenerationParams(num_return_sequences=3, max_length=12, seed=3))


def test_a_fast_decoder_that_fails_its_warm_up_leaves_generate(tiny_models, caplog):
    engine = HFEngine(tiny_models["huggingface"], device="cpu", decoder="fast")

    class Broken:
        def generate(self, *args):
            raise RuntimeError("no kernel image is available for execution on the device")

    engine._fast = Broken()
    engine._warm_up()
    assert engine.info()["decoder"] == "generate"
    assert "RuntimeError" in engine.info()["decoder_fallback"]
    assert "failed its warm-up" in caplog.text
    assert len(engine.generate(PROMPTS[:2], greedy(8))) == 2


def test_float16_stays_with_generate(tiny_models):
    engine = HFEngine(tiny_models["fp16"], device="cpu", dtype="float16", decoder="fast")
    assert engine.info()["decoder"] == "generate"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_label_scores_on_the_gpu_agree_with_the_cpu(tiny_models):
    """Scoring in float32 on CUDA gives the CPU's log-probabilities within GPU_SCORE_TOLERANCE."""
    cpu = HFEngine(tiny_models["modelscope"], device="cpu")
    gpu = HFEngine(tiny_models["modelscope"], device="cuda", dtype="float32")
    labels = ["体育", "财经", "娱乐", "科技", "物流慢", "物流"]
    for prompt in PROMPTS:
        assert gpu.score(prompt, labels) == pytest.approx(cpu.score(prompt, labels), abs=GPU_SCORE_TOLERANCE)


def test_mt5_base_in_bfloat16_takes_64_short_prompts_per_pass_and_bounds_long_ones():
    """The sizes the budgets were set for, on the real model's shape (meta tensors: no weights are made)."""
    from transformers import MT5Config, MT5ForConditionalGeneration

    from bench.base_model import BASE_SHAPE

    with torch.device("meta"):
        model = MT5ForConditionalGeneration(MT5Config(**BASE_SHAPE)).to(torch.bfloat16)
    decoder = FastDecoder(model, use_graphs=False, reuse_buffers=True)
    # 64 texts of up to 64 tokens, 3 variants of 32 tokens each: one pass, and its buffers are kept.
    assert fast_decode._prompt_bucket_within(decoder.prompts_per_call(32, 3, 64)) == 64
    assert decoder.buffer_bytes(fast_decode._Shape(64, 3, 64, 32)) <= fast_decode.KEPT_BYTES
    # The longest prompts (512 tokens) with the longest outputs (512 new tokens): fewer prompts per pass,
    # never more keys and values than the budget.
    for steps, source in [(128, 512), (512, 512), (512, 64)]:
        prompts = fast_decode._prompt_bucket_within(decoder.prompts_per_call(steps, 3, source))
        assert decoder.cache_bytes(fast_decode._Shape(prompts, 3, source, steps)) <= fast_decode.CACHE_BUDGET_BYTES
