"""The Ray actor of a job on a cluster (app/jobs/cluster.py): an entry point, as the CLI is, that loads the engines
of --engine once in its own process on a node, then answers chunks through a `Service`, as the local runner does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from pathlib import Path

from app.jobs.spec import JobSpec
from app.settings import ROOT, Settings


class ChunkWorker:
    """A Ray actor: the engines of --engine loaded once, then chunks through a `Service` as the local runner
    sends them."""

    def __init__(self, settings: Settings, spec: dict, check: bool, driver_root: str) -> None:
        os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
        import ray

        from app.engines import engine_loaders
        from app.service import Service
        from app.tasks import load_templates

        settings = _here(settings, Path(driver_root))
        self.service = Service(settings, load_templates(settings.templates_file))
        self.service.load(engine_loaders(settings))
        ready = self.service.readiness()
        if not ready.ready:
            raise RuntimeError(f"no engine loaded on this node: {ready.reason}")
        self.spec, self.check = JobSpec.from_dict(spec), check
        self.loop = asyncio.new_event_loop()
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from app.jobs.runner import ask

        answers = []
        for chunk, rows in zip(batch["chunk"], batch["rows"]):
            pairs = [(row, values) for row, values in json.loads(rows)]
            results = self.loop.run_until_complete(ask(self.service, self.spec, int(chunk), pairs, self.check))
            answers.append(json.dumps(results, ensure_ascii=False))
        return {"chunk": batch["chunk"], "results": np.array(answers, dtype=object),
                "node": np.array([self.node] * len(answers), dtype=object)}


def _here(settings: Settings, driver_root: Path) -> Settings:
    """The driver's settings with the app's own files (templates, lexicon, rules) found in this node's copy of the
    app; other paths (the model) are the same on every node."""
    moved = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if isinstance(value, Path) and value.is_relative_to(driver_root / "app"):
            moved[field.name] = ROOT / value.relative_to(driver_root)
    return dataclasses.replace(settings, **moved)
