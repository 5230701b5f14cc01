"""Constrained zero-shot classification (10 labels) against free generation, in one run on this CPU.

    .venv/bin/python -m bench.classify [--rounds 6] [--device cpu] [--out bench/results/classify_cpu.json]

On a GPU machine: `python -m bench.classify --device cuda --out bench/results/classify_gpu.json`.

The mT5-base-shaped checkpoint of bench.base_model (random weights, float32) answers the same
texts in four arms, interleaved within each round after one untimed warm-up round:

- constrained: Service.classify(texts=[text], labels) - one encoder pass, the 10 label sequences
  scored in one batched decoder pass (the product path);
- free_generation: the model card's way, greedy generation on the same classification prompt.
  Random weights never stop on their own, so the answer length is forced (min = max new tokens)
  to what a trained model would write: the label's token count with its end token, averaged over
  the 10 labels and rounded up (forced_tokens.mean);
- free_generation_longest: the same, forced to the longest label's token count (free generation's
  pessimistic side, and what the card's way costs when the model answers the longest label);
- one_label_at_a_time: HFEngine.score(prompt, [label]) once per label, 10 encoder passes (what the
  batched scoring replaces).

And for many prompts at once (engine calls of up to the batch size's prompts, HFEngine.score_batch),
timed per batch in the same run:

- batch_together: Service.classify(texts=all bench texts, labels), one engine call for them all;
- batch_one_by_one: the same texts, one Service.classify call each (what a call per text costs);
- multi_label_together: Service.classify([text], labels, multi_label=True), the 10 label-vs-partner
  prompts in one engine call;
- multi_label_one_by_one: those 10 prompts scored one engine call each.

Times are per text, or per batch for the batch arms. Machines are noisy: read the ratios of medians,
not the absolute numbers. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from app.classify import PARTNER_LABELS
from app.engines.hf import HFEngine
from app.service import Service
from app.settings import Settings
from app.tasks import load_templates
from bench.base_model import build_base_model
from bench.machine import describe, emit, run_interleaved
from bench.texts import LABELS, TEXTS


def free_generation(engine: HFEngine, prompt: str, tokens: int) -> list[str]:
    """Greedy decoding that writes exactly `tokens` new tokens, as HFEngine.generate runs it.

    The model is called directly because the public API's floor for max_length is 8 tokens,
    longer than a label."""
    with torch.inference_mode():
        output = engine._model.generate(**engine._encode([prompt]), max_new_tokens=tokens, min_new_tokens=tokens,
                                        do_sample=False, num_return_sequences=1, temperature=None, top_k=None,
                                        top_p=None)
    return engine._tokenizer.batch_decode(output, skip_special_tokens=True)


def summary(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values), 1),
            "p90_ms": round(statistics.quantiles(values, n=10, method="inclusive")[-1], 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.classify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds over all texts (after one warm-up)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    model = build_base_model()
    engine = HFEngine(model, device=args.device)
    settings = Settings(model_dir=model, engine="mt5", device=args.device)
    templates = load_templates(settings.templates_file)
    service = Service(settings, templates)
    service.load({"mt5": lambda: engine})

    label_tokens = [len(engine._tokenizer(label).input_ids) for label in LABELS]  # with the end token
    forced = {"mean": math.ceil(statistics.mean(label_tokens)), "longest": max(label_tokens)}
    joined = ",".join(LABELS)
    prompts = {text: templates.render("classification", labels=joined, text=text) for text in TEXTS}
    # The batched pass must score each label as a pass of its own would: a check of the shared
    # cross-attention and prefix reuse on this device, before any timing.
    batched = engine.score(prompts[TEXTS[0]], LABELS)
    single = [engine.score(prompts[TEXTS[0]], [label])[0] for label in LABELS]
    gap = max(abs(a - b) for a, b in zip(batched, single))
    arms = {
        "constrained": lambda text: asyncio.run(service.classify([text], LABELS)),
        "free_generation": lambda text: free_generation(engine, prompts[text], forced["mean"]),
        "free_generation_longest": lambda text: free_generation(engine, prompts[text], forced["longest"]),
        "one_label_at_a_time": lambda text: [engine.score(prompts[text], [label]) for label in LABELS],
    }

    times = run_interleaved(arms, TEXTS, args.rounds)
    partner = {label: next(p for p in PARTNER_LABELS if p != label) for label in LABELS}
    pair_prompts = {text: [templates.render("classification", labels=f"{label},{partner[label]}", text=text)
                           for label in LABELS] for text in TEXTS}
    batch_arms = {
        "batch_together": lambda texts: asyncio.run(service.classify(texts, LABELS)),
        "batch_one_by_one": lambda texts: [asyncio.run(service.classify([text], LABELS)) for text in texts],
        "multi_label_together": lambda texts: asyncio.run(service.classify(texts[:1], LABELS, multi_label=True)),
        "multi_label_one_by_one": lambda texts: [engine.score(prompt, [label, partner[label]])
                                                 for prompt, label in zip(pair_prompts[texts[0]], LABELS)],
    }
    times.update(run_interleaved(batch_arms, [list(TEXTS)], args.rounds))

    arm_stats = {name: summary(values) for name, values in times.items()}
    median = {name: stats["median_ms"] for name, stats in arm_stats.items()}
    report = {
        "benchmark": "classify_cpu: constrained classification (10 labels) vs free generation",
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": "mT5-base-shaped, random weights",
        "device": engine.info()["device"],
        "dtype": engine.info()["dtype"],
        "max_logprob_gap_batched_vs_single": gap,
        "labels": LABELS,
        "label_tokens": dict(zip(LABELS, label_tokens)),
        "texts": len(TEXTS),
        "rounds": args.rounds,
        "forced_tokens": forced,
        "arms": arm_stats,
        "ratios": {
            "constrained_over_free_generation": round(median["constrained"] / median["free_generation"], 2),
            "constrained_over_free_generation_longest":
                round(median["constrained"] / median["free_generation_longest"], 2),
            "one_label_at_a_time_over_constrained": round(median["one_label_at_a_time"] / median["constrained"], 2),
            "batch_one_by_one_over_together": round(median["batch_one_by_one"] / median["batch_together"], 2),
            "multi_label_one_by_one_over_together":
                round(median["multi_label_one_by_one"] / median["multi_label_together"], 2),
        },
        "note": "Random weights: the outputs are noise, only the time counts. Times are per text (one "
                "request); the arms ran interleaved in one run, so read the ratios of medians. Token "
                "counts come from the checkpoint's test tokenizer, not the real mT5 vocabulary.",
    }
    return emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
