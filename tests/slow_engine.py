"""webui.py with a slow echo engine in place of mT5, for tests of the request path under load.

    DPP_TEST_ENGINE_PAUSE_S=2 python -m tests.slow_engine --engine mt5 [webui flags]

Each engine call takes the pause, whatever its size, and answers each prompt with itself marked, so a
test sees that every request got exactly its own answer. Everything else (server, service, batcher,
Gradio) is the real one.
"""

from __future__ import annotations

import os
import sys
import time

import app.engines
import webui
from app.params import GenerationParams


class SlowEchoEngine:
    name, can_score, wants_raw_text, batch_size = "mt5", True, False, 16

    def __init__(self, pause_s: float) -> None:
        self.pause_s = pause_s

    def info(self) -> dict:
        return {"engine": self.name, "model": "slow-echo", "device": "cpu", "dtype": "n/a"}

    def generate(self, prompts: list[str], params: GenerationParams) -> list[list[str]]:
        time.sleep(self.pause_s)
        count = params.num_return_sequences if params.do_sample else 1
        return [[f"{prompt}·回声{i}" for i in range(count)] for prompt in prompts]

    def score(self, prompt: str, candidates: list[str]) -> list[float]:
        return self.score_batch([(prompt, candidates)])[0]

    def score_batch(self, items: list[tuple[str, list[str]]]) -> list[list[float]]:
        time.sleep(self.pause_s)
        return [[-float(rank) for rank in range(len(candidates))] for _, candidates in items]


def echoed(text: str, count: int) -> list[str]:
    """What the engine answers for `text` asked for `count` variants."""
    return [f"{text}·回声{i}" for i in range(count)]


if __name__ == "__main__":
    pause_s = float(os.environ.get("DPP_TEST_ENGINE_PAUSE_S", "2"))
    app.engines.load_engine = lambda settings, name: SlowEchoEngine(pause_s)  # what engine_loaders calls
    sys.exit(webui.main(sys.argv[1:]))
