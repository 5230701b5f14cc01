"""The load-time proof that our decoding loop (FastDecoder) agrees with transformers on the device it serves on.

HFEngine runs `check_decoder` after loading: a fast loop that disagrees, or fails, leaves the engine on
transformers' `generate`, with the reason in `info()`. torch is imported inside, as in hf.py."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from app.params import GenerationParams

log = logging.getLogger(__name__)

# Fixed probes of different lengths (so padding and the encoder mask are exercised): the card's
# classification format and a plain sentence, as augmentation sends it.
PROBES = (
    "文本分类。\n候选标签：体育,财经,娱乐。\n文本内容：球队昨晚赢了比赛",
    "这家店的菜很好吃。",
)
# New tokens per probe, all of them decoded: the end token is held back (min_new_tokens) so every position
# is compared whatever the model would say. Eight is the fewest a request may ask for; each costs one decoder
# step in each of the two passes of our loop (about 65 ms for mT5-base on a 2-core CPU).
PROBE_TOKENS = 8
# Log-probs are compared at our tokens and at the reference's LOGPROB_TOP_K most probable tokens of each
# position: the tokens that sampling with the default top_k draws from. The rest of the vocabulary, never
# chosen, would only add the rounding noise of very unlikely tokens.
LOGPROB_TOP_K = 50
# Largest allowed |log-prob difference| per compute dtype.
# float32: both paths do the same float32 arithmetic in another order (fused projections, SDPA against T5's
# explicit softmax): 6e-6 apart on the mT5-base-shaped model, 1.4e-6 on the tests' tiny one, while faults
# seen on those (no padding mask: 5.4; no position bias: 0.03; one layer's attention output 1% off: 0.013)
# stay far above 1e-3.
# bfloat16: 8 significant bits. Each path rounds its activations to them in different places (our fused
# QKV and SDPA against T5's separate projections and float32 softmax), and each rounds its own logits: a
# logit of 32 to 64, which a trained mT5 reaches, is kept in steps of 0.25, so that last rounding alone may
# set the same token a full step apart, before the differences of 24 layers add theirs. 0.5 allows for that;
# A fault of the mask or a cache slot moves log-probs by units (no padding mask: 5.4 above); a subtler one
# (the position bias: 0.03 on random weights, whose attention hardly depends on position) is expected to
# move a trained model's by more, but is only certain to be caught in float32. The random-weight models give
# no measure of bfloat16's noise (their bfloat16 logits came out bit for bit equal on a CPU): the gap a GPU
# measures is recorded (info()["decoder_check"], bench/results) to revisit this figure.
LOGPROB_TOLERANCES = {"float32": 1e-3, "bfloat16": 0.5}
# Greedy tokens may part where the reference's two best logits are closer than this: if each path is off
# by up to the tolerance in opposite directions, a gap of twice the tolerance can flip their order.
NEAR_TIE_MARGINS = {name: 2 * tolerance for name, tolerance in LOGPROB_TOLERANCES.items()}
FALLBACK = "已改用 transformers generate"


@dataclass(frozen=True)
class DecoderCheck:
    """What the check found; `reason` (Chinese, for users) is empty when it passed."""

    passed: bool
    reason: str
    max_logprob_gap: float | None  # None when the fast path failed before giving log-probs
    tolerance: float
    probes: int
    greedy_positions: int  # positions whose greedy tokens were compared and agreed
    seconds: float

    def figures(self) -> dict:
        """The measured figures, JSON-able, for `info()` and the log."""
        gap = None if self.max_logprob_gap is None else float(f"{self.max_logprob_gap:.3g}")
        return {"max_logprob_gap": gap, "tolerance": self.tolerance, "probes": self.probes,
                "greedy_positions": self.greedy_positions, "seconds": round(self.seconds, 2)}


def check_decoder(model, tokenizer, fast, device: str, dtype) -> DecoderCheck:
    """Decode PROBES greedily with `fast` as it serves, then hold its tokens against the model's own forward
    over the same tokens: log-probs (teacher-forced, through `fast`'s step again) and greedy choices.

    Greedy tokens equal transformers' `generate` exactly when, at every position, our token is the model's
    argmax given the tokens before it; checking that on one parallel forward, rather than running `generate`
    as well, saves about 0.6 s of 2.0 (mT5-base on a 2-core CPU). Any exception during the check is a
    failure, never an error of the load."""
    import torch

    started = time.monotonic()
    dtype_name = str(dtype).removeprefix("torch.")
    tolerance, near_tie = LOGPROB_TOLERANCES[dtype_name], NEAR_TIE_MARGINS[dtype_name]
    params = GenerationParams(num_return_sequences=1, max_length=PROBE_TOKENS, min_new_tokens=PROBE_TOKENS,
                              do_sample=False)

    def result(reason: str, gap: float | None, positions: int) -> DecoderCheck:
        return DecoderCheck(not reason, reason, gap, tolerance, len(PROBES), positions, time.monotonic() - started)

    try:
        with torch.inference_mode():
            encoded = tokenizer(list(PROBES), return_tensors="pt", padding=True).to(device)
            [greedy] = fast.generate(encoded.input_ids, encoded.attention_mask, params, 1)
            ours = fast.teacher_forced(encoded.input_ids, encoded.attention_mask, greedy)
            reference = model(**encoded, decoder_input_ids=model._shift_right(greedy)).logits.float()
            gap = logprob_gap(reference, ours, greedy)
            # Greedy decoding held the end token back at every position (min_new_tokens): so does the reference.
            positions, parted = greedy_agreement(greedy, reference, model.config.eos_token_id, near_tie)
    except Exception as exc:  # noqa: BLE001 - any failure of the fast path leaves the plain one
        log.exception("The fast decoder raised during its check on %s", device)
        return result(f"自带解码循环在 {device} 上自检出错（{type(exc).__name__}），{FALLBACK}", None, 0)
    if not gap <= tolerance:  # written so that NaN fails
        return result(f"自带解码循环在 {device} 上与 transformers 不一致（对数概率最大偏差 {gap:.3g}，"
                      f"容差 {tolerance:g}），{FALLBACK}", gap, positions)
    if parted is not None:
        row, position = parted
        return result(f"自带解码循环在 {device} 上与 transformers 不一致（第 {row + 1} 条探测文本的第 "
                      f"{position + 1} 个词元不是贪心解码应选的词元，且不是近似并列），{FALLBACK}", gap, positions)
    return result("", gap, positions)


def logprob_gap(reference, ours, targets) -> float:
    """Largest |log-prob difference| at the target tokens and the reference's LOGPROB_TOP_K best tokens."""
    reference, ours = reference.log_softmax(-1), ours.log_softmax(-1)
    top = reference.topk(min(LOGPROB_TOP_K, reference.shape[-1]), dim=-1).indices
    at_targets, at_top = ((reference.gather(-1, columns) - ours.gather(-1, columns)).abs().max()
                          for columns in (targets.unsqueeze(-1), top))
    return float(at_targets.maximum(at_top))  # maximum, not max(): a NaN must survive to fail the check


def greedy_agreement(ours, reference, held_back: int, near_tie: float) -> tuple[int, tuple[int, int] | None]:
    """Hold our greedy tokens [rows, positions] against the reference's logits [rows, positions, vocab] given
    our tokens before each position, token `held_back` excluded: (positions that agreed, the first (row,
    position) where our token is not the reference's best although its two best logits are at least
    `near_tie` apart, or None).

    A position where they differ at a near tie is skipped, not failed: rounding may pick either token there.
    The positions after it are still compared, since the reference read our tokens, not its own."""
    best = reference.index_fill(-1, ours.new_tensor([held_back]), float("-inf")).topk(2, dim=-1)
    wanted_rows = best.indices[..., 0].tolist()
    margin_rows = (best.values[..., 0] - best.values[..., 1]).tolist()
    agreed = 0
    for row, (chosen, wanted, gaps) in enumerate(zip(ours.tolist(), wanted_rows, margin_rows)):
        for position, (a, b, margin) in enumerate(zip(chosen, wanted, gaps)):
            if a == b:
                agreed += 1
            elif margin >= near_tie:
                return agreed, (row, position)
    return agreed, None
