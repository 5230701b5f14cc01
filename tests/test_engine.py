"""The mT5 engine on the tiny real model: batching, seeds, and label scoring."""

import pytest
import torch

from app.engines.hf import HFEngine
from app.params import GenerationParams

PROMPTS = ["这款耳机的音质很好，佩戴也很舒适。", "好", "账户被冻结后需要携带身份证到网点办理。", "请问怎么修改收货地址？"]


@pytest.fixture(scope="module")
def engine(tiny_models):
    return HFEngine(tiny_models["huggingface"], device="cpu")


def test_generate_returns_one_list_per_prompt_in_order(engine):
    outputs = engine.generate(PROMPTS, GenerationParams(num_return_sequences=2, max_length=8, seed=1))
    assert len(outputs) == len(PROMPTS)
    assert all(len(texts) == 2 and all(isinstance(t, str) for t in texts) for texts in outputs)


def test_batched_generation_equals_one_by_one_under_greedy_decoding(engine):
    greedy = GenerationParams(do_sample=False, num_return_sequences=1, max_length=16)
    batched = engine.generate(PROMPTS, greedy)
    one_by_one = [engine.generate([prompt], greedy)[0] for prompt in PROMPTS]
    assert batched == one_by_one


def test_a_fixed_seed_reproduces_and_another_seed_differs(engine):
    params = GenerationParams(num_return_sequences=3, max_length=12, seed=42)
    first = engine.generate(PROMPTS[:2], params)
    assert engine.generate(PROMPTS[:2], params) == first
    assert engine.generate(PROMPTS[:2], params.with_changes(seed=43)) != first


def test_forced_length_produces_that_many_tokens(engine):
    params = GenerationParams(num_return_sequences=1, max_length=10, min_new_tokens=10, seed=0)
    text = engine.generate(["物流速度很快"], params)[0][0]
    assert text.strip()
    assert len(engine._tokenizer(text, add_special_tokens=False).input_ids) >= 5


def _stepwise_logprob(engine, prompt: str, candidate: str) -> float:
    """Decode one token at a time and add up log-probabilities of the candidate's tokens."""
    model, tokenizer = engine._model, engine._tokenizer
    encoded = tokenizer([prompt], return_tensors="pt")
    target = tokenizer([candidate], return_tensors="pt").input_ids[0]
    decoder_input = torch.tensor([[model.config.decoder_start_token_id]])
    total = 0.0
    with torch.inference_mode():
        for token in target:
            logits = model(**encoded, decoder_input_ids=decoder_input).logits[0, -1]
            total += logits.log_softmax(-1)[token].item()
            decoder_input = torch.cat([decoder_input, token.view(1, 1)], dim=1)
    return total


def test_batched_label_scores_equal_a_step_by_step_computation(engine):
    prompt = "文本分类。\n候选标签：物流,客服,价格。\n文本内容：物流速度很快"
    labels = ["物流", "客服态度", "价格有点贵"]
    scores = engine.score(prompt, labels)
    assert scores == pytest.approx([_stepwise_logprob(engine, prompt, label) for label in labels], abs=1e-4)
    assert all(score < 0 for score in scores)
