"""File jobs on a Ray cluster (--job-executor ray): a job's unfinished chunks as a Ray Data pipeline.

The job stays where it is: in this process's store, watched by the same page, REST routes and CLI. Its
unfinished chunks become a dataset, `map_batches` runs them on an actor pool (one engine per actor: one GPU
each where the cluster has GPUs, else `--ray-actor-cpus` cores on each node), and the answers come back in
chunk order to the runner, which commits each chunk and its progress as the local runner does. A chunk is
the local runner's chunk, with the same rows and the same seed, so a seeded job writes the same file either
way. A node that dies takes its actors with it: Ray restarts them on the nodes left and runs the lost blocks
again, and a chunk that comes back twice is committed once.

Ray is optional (requirements-ray.lock); nothing here imports it until a job runs on it. The actors import
this checkout's `app` package, sent with the job (a Ray runtime environment), so the nodes need dpp's
packages (./start_dpp.sh --setup-only --ray) and the model at the same path, not the same checkout.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator

from app.errors import DppError
from app.jobs.store import Job, JobStore
from app.settings import ROOT, Settings

log = logging.getLogger(__name__)

CHUNKS_PER_BLOCK = 2  # what a node that dies loses and Ray runs again; small, as a chunk is seconds of model time
NAMESPACE = "dpp"
NOTE = "在 Ray 集群上运行"  # how a job's note about the cluster begins (one such note per job)
CONNECT_TIMEOUT_S = 5.0
ACTORS_READY_WITHIN_S = 900  # a model over NFS on a cold node can take minutes to load


class ClusterUnavailable(Exception):
    """The cluster cannot be reached now: the job stays unfinished and is tried again later."""


class ClusterJobFailed(DppError):
    """The pipeline failed on the cluster (an engine that cannot load there, a chunk that keeps failing)."""


class RayCluster:
    """The cluster a process's jobs run on, connected at the first job."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.nodes_used: collections.Counter[str] = collections.Counter()  # the last job: chunks by node id
        self._lock = threading.Lock()

    def connect(self):
        """The `ray` module, connected to --ray-address (blocking; once per process)."""
        import ray

        with self._lock:
            if not ray.is_initialized():
                address = self.settings.ray_address
                if address != "auto":  # ray.init waits minutes for a head that is not there; a socket says at once
                    host, _, port = address.removeprefix("ray://").rpartition(":")
                    try:
                        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
                    except (OSError, ValueError) as exc:
                        raise ClusterUnavailable(f"Ray cluster {address}: {exc}") from exc
                try:
                    ray.init(address=self.settings.ray_address, namespace=NAMESPACE, log_to_driver=False,
                             logging_level=logging.WARNING, runtime_env={"py_modules": [str(ROOT / "app")]})
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise ClusterUnavailable(f"Ray cluster {self.settings.ray_address}: {exc}") from exc
        return ray

    def describe(self) -> str:
        """The cluster as a job's note says it: nodes, and GPUs or cores (blocking)."""
        ray = self.connect()
        nodes = [node for node in ray.nodes() if node["Alive"]]
        total = ray.cluster_resources()
        gpus = int(total.get("GPU", 0))
        return (f"{NOTE}：{len(nodes)} 个节点，" +
                (f"{gpus} 块 GPU" if gpus else f"{int(total.get('CPU', 0))} 个 CPU 核"))

    async def chunks(self, job: Job, check: bool, store: JobStore) -> AsyncIterator[tuple[int, list]]:
        """(chunk, results) for each unfinished chunk of `job`, in order, each once."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def emit(item: tuple) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        threading.Thread(target=self._stream, args=(job, check, store, emit, stop), daemon=True,
                         name=f"ray-job-{job.id}").start()
        self.nodes_used = collections.Counter()
        expected, early = job.chunks_done, {}
        try:
            while True:
                kind, value = await queue.get()
                if kind == "error":
                    raise value
                if kind == "end":
                    if expected < job.chunks_total:  # cannot happen unless Ray lost a block silently
                        raise ClusterJobFailed(f"Ray 集群少返回了第 {expected + 1} 块结果；请重新提交任务")
                    return
                chunk, results, node = value
                if chunk < expected or chunk in early:
                    continue  # a block that ran twice (its node died after answering): committed once
                early[chunk] = results, node
                while expected in early:
                    results, node = early.pop(expected)
                    self.nodes_used[node] += 1
                    yield expected, results
                    expected += 1
        finally:
            stop.set()  # the pipeline stops after the batch in hand

    def _stream(self, job: Job, check: bool, store: JobStore, emit, stop: threading.Event) -> None:
        """In a thread of its own: run the pipeline and hand each batch's chunks to `emit`."""
        try:
            ray = self.connect()
            from ray.data import ActorPoolStrategy, DataContext

            spec = job.spec
            first = job.chunks_done * spec.chunk_rows + 1
            rows = store.input_rows(job.id, first, job.rows_total)
            items = [{"chunk": job.chunks_done + i // spec.chunk_rows,
                      "rows": json.dumps(rows[i:i + spec.chunk_rows], ensure_ascii=False)}
                     for i in range(0, len(rows), spec.chunk_rows)]
            if not items:
                emit(("end", None))
                return
            actors, resources = self._pool(ray)
            context = DataContext.get_current()
            context.execution_options.preserve_order = True
            context.enable_progress_bars = False
            # Every actor loads its engines before the first chunk goes out, so that the first one ready does not
            # take the whole job meanwhile; the pool may shrink later, when a node dies.
            context.wait_for_min_actors_s = ACTORS_READY_WITHIN_S
            dataset = ray.data.from_items(items, override_num_blocks=-(-len(items) // CHUNKS_PER_BLOCK))
            from app.jobs.actor import ChunkWorker

            dataset = dataset.map_batches(
                ChunkWorker, batch_size=1, compute=ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors),
                fn_constructor_kwargs={"settings": self.settings, "spec": spec.as_dict(), "check": check,
                                       "driver_root": str(ROOT)},
                **resources)  # Ray Data restarts a pool's actors, and retries their work, without end by default
            log.info("job %s on Ray: %d chunks, up to %d actors (%s)", job.id, len(items), actors, resources)
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
                for chunk, results, node in zip(batch["chunk"], batch["results"], batch["node"]):
                    emit(("chunk", (int(chunk), [tuple(pair) for pair in json.loads(results)], str(node))))
                if stop.is_set():
                    return
            emit(("end", None))
        except ClusterUnavailable as exc:
            emit(("error", exc))
        except Exception as exc:  # noqa: BLE001 - whatever Ray raises ends this job, with its reason
            log.exception("job %s failed on the Ray cluster", job.id)
            emit(("error", ClusterJobFailed(f"Ray 集群上运行出错：{type(exc).__name__}: "
                                            f"{' '.join(str(exc).split())[:300]}")))

    def _pool(self, ray) -> tuple[int, dict]:
        """How many actors, and what each reserves: a GPU each where there are GPUs, else cores on each node."""
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus:
            return self.settings.ray_actors or gpus, {"num_gpus": 1}
        nodes = sum(1 for node in ray.nodes() if node["Alive"])
        return self.settings.ray_actors or nodes, {"num_cpus": self.settings.ray_actor_cpus}
