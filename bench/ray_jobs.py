"""File jobs on a Ray cluster against the local executor (issue 20): the lexical engine, one run.

    .venv/bin/python -m bench.ray_jobs [--rows 20000] [--rounds 2] [--out bench/results/ray_jobs_cpu.json]

One labelled CSV (bench.job_files' rows), one seeded augment job (3 variants), run through the CLI
(python -m app.jobs) three ways, in turn in each round: `local` (the local executor), `ray_1node` (a Ray
cluster of one node with one CPU: one actor) and `ray_2nodes` (two nodes of one CPU each: two actors), the
clusters started once on loopback (tests/ray_cluster.py) and kept for every round. Each run is timed twice:
`job_s`, the job's own run in the store (started to finished: what the executor costs), and `wall_s`, the
command from start to exit (Python, engine or actor start-up and the output file included: what a user
waits). The outputs must be byte for byte the same in every run (a seeded job writes the same file on Ray as
locally). On a 2-core machine two nodes cannot be faster than one: the ratios show Ray's overhead, and the
figures to extrapolate from.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app.jobs.store import JobStore
from app.settings import ROOT
from bench.job_files import make_rows, write_file
from bench.machine import describe, emit
from tests.ray_cluster import DRIVER_ENV, LocalCluster

ARMS = ("local", "ray_1node", "ray_2nodes")


def run_job(source: Path, work: Path, name: str, address: str | None) -> dict:
    """One job through the CLI; its timings, and the output's digest."""
    out, data = work / f"{name}.csv", work / f"data-{name}"
    command = [sys.executable, "-m", "app.jobs", "augment", str(source), "-o", str(out), "--engine", "lexical",
               "--text-col", "text", "--label-col", "label", "--seed", "7", "--num-return-sequences", "3",
               "--data-dir", str(data), "--log-dir", str(work / "logs")]
    if address:
        command += ["--job-executor", "ray", "--ray-address", address]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPP_")} | DRIVER_ENV | {"DPP_QUALITY": "on"}
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{name}: the job failed:\n{done.stderr[-3000:]}")
    (job,) = JobStore(data).list()
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    out.unlink()
    return {"wall_s": round(wall, 2), "job_s": round(job.finished - job.started, 2), "rows": job.rows_done,
            "sha256": digest, "notes": job.notes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ray_jobs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="dpp-bench-ray-"))
    source = write_file(make_rows(args.rows), work / "train.csv")
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    with LocalCluster(nodes=1) as one, LocalCluster(nodes=2) as two:
        addresses = {"local": None, "ray_1node": one.address, "ray_2nodes": two.address}
        starts = {"ray_1node": [round(n.start_seconds, 1) for n in one.nodes],
                  "ray_2nodes": [round(n.start_seconds, 1) for n in two.nodes]}
        for round_number in range(args.rounds):
            for arm in ARMS:
                result = run_job(source, work, f"{arm}-{round_number}", addresses[arm])
                runs[arm].append(result)
                print(f"[bench] round {round_number + 1} {arm}: job {result['job_s']} s, wall {result['wall_s']} s",
                      file=sys.stderr, flush=True)

    digests = {run["sha256"] for arm in ARMS for run in runs[arm]}
    rate = {arm: round(args.rows / statistics.median(run["job_s"] for run in runs[arm]), 1) for arm in ARMS}
    wall_rate = {arm: round(args.rows / statistics.median(run["wall_s"] for run in runs[arm]), 1) for arm in ARMS}
    report = {
        "benchmark": "ray_jobs",
        "machine": describe(),
        "engine": "lexical", "rows": args.rows, "rounds": args.rounds, "variants_per_row": 3,
        "nodes": {"ray_1node": "1 node, 1 CPU: one actor", "ray_2nodes": "2 nodes on this machine, 1 CPU each: "
                                                                          "two actors"},
        "node_start_s": starts,
        "rows_per_second_job": rate,
        "rows_per_second_wall": wall_rate,
        "ratios": {
            "ray_1node_vs_local_job": round(rate["ray_1node"] / rate["local"], 2),
            "ray_2nodes_vs_local_job": round(rate["ray_2nodes"] / rate["local"], 2),
            "ray_2nodes_vs_ray_1node_job": round(rate["ray_2nodes"] / rate["ray_1node"], 2),
            "ray_1node_vs_local_wall": round(wall_rate["ray_1node"] / wall_rate["local"], 2),
            "ray_2nodes_vs_local_wall": round(wall_rate["ray_2nodes"] / wall_rate["local"], 2),
        },
        "outputs_identical": len(digests) == 1,
        "runs": runs,
    }
    subprocess.run(["rm", "-rf", str(work)], check=False)
    emit(report, args.out)
    return 0 if report["outputs_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
