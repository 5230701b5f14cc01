"""File jobs on a real Ray cluster (--job-executor ray): a head and a second node started here on loopback,
each a `ray start` of its own; servers and the CLI run as users run them.

A seeded 2,000-row job across both nodes equals the local executor's output row for row; a node killed in the
middle of a job still gives every row once (and the same file); the tiny mT5 runs on the actors from the
model path; and without Ray, choosing it says what to install.
"""

from __future__ import annotations

import collections
import csv
import io
import ipaddress
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, server_env, start_server
from tests.ray_cluster import DRIVER_ENV, LocalCluster
from tests.test_jobs import labelled
from tests.test_jobs_api import result, submit, wait_done

pytestmark = pytest.mark.ray

OPTIONS = {"text_col": "text", "label_col": "label", "seed": 11, "num_return_sequences": 3}


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(nodes=2) as running:
        yield running


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ray-in") / "评论.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "label", "note"])
        writer.writerows(labelled(2000))
    return path


def local_run(source: Path, tmp_path: Path, **env: str) -> list[dict]:
    """The same job with the local executor, through the CLI."""
    out = tmp_path / "local.csv"
    command = [sys.executable, "-m", "app.jobs", "augment", str(source), "-o", str(out), "--engine", "lexical",
               "--text-col", "text", "--label-col", "label", "--seed", str(OPTIONS["seed"]),
               "--num-return-sequences", str(OPTIONS["num_return_sequences"]), "--data-dir", str(tmp_path / "local"),
               "--log-dir", str(tmp_path / "logs")]
    done = subprocess.run(command, cwd=ROOT, env=server_env(**DRIVER_ENV, **env), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return list(csv.DictReader(io.StringIO(out.read_text("utf-8-sig"))))


def rows_of(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))


def listeners(pids: set[int]) -> list[str]:
    """The addresses the processes `pids` listen on (TCP)."""
    table = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in table.splitlines()
            if any(f"pid={pid}," in line for pid in pids)]


def loopback(address: str) -> bool:
    host = ipaddress.ip_address(address.rpartition(":")[0].strip("[]"))
    return host.is_loopback or bool(getattr(host, "ipv4_mapped", None) and host.ipv4_mapped.is_loopback)


def each_row_once(rows: list[dict], total: int) -> None:
    """Every source row, its variants numbered 0, 1, 2... once each, in file order."""
    by_row = collections.defaultdict(list)
    for row in rows:
        by_row[int(row["source_row"])].append(int(row["variant"]))
    assert list(by_row) == list(range(1, total + 1))
    assert all(variants == list(range(len(variants))) for variants in by_row.values())


def test_a_seeded_job_on_two_nodes_equals_the_local_executor_row_for_row(cluster, source, tmp_path):
    server = start_server(tmp_path, "--engine", "lexical", "--job-executor", "ray", "--ray-address", cluster.address,
                          **DRIVER_ENV)
    try:
        job = submit(server.url, source, **OPTIONS).json()
        seen = []
        deadline = time.monotonic() + 300
        while (now := requests.get(f"{server.url}/jobs/{job['id']}", timeout=10).json())["state"] != "done":
            assert now["state"] in ("queued", "running") and time.monotonic() < deadline, now
            seen.append(now["rows_done"])
            time.sleep(0.2)
        got = rows_of(result(server.url, job["id"], "csv"))
        listening = listeners({pid for node in cluster.nodes for pid in node.pids()})
    finally:
        server.stop()
    assert listening and all(loopback(address) for address in listening), listening
    assert now["rows_done"] == now["rows_total"] == 2000
    assert seen == sorted(seen) and any(0 < done < 2000 for done in seen)  # progress showed as it went
    # both nodes answered chunks (the note counts them per node)
    (note,) = [note for note in now["notes"] if note.startswith("在 Ray 集群上运行")]
    assert "2 个节点" in note
    per_node = [int(n) for n in note.split("本次各节点完成的块数：")[1].split("、")]
    assert len(per_node) == 2 and sum(per_node) == 40 and min(per_node) > 0
    want = local_run(source, tmp_path)
    each_row_once(got, 2000)
    assert got == want  # the same columns, rows, order and variants
    assert len(got) > 4000


def test_a_node_killed_mid_job_still_gives_every_row_once(source, tmp_path):
    with LocalCluster(nodes=2) as cluster:
        # small chunks, so that the job is still running when the node goes
        server = start_server(tmp_path, "--engine", "lexical", "--job-executor", "ray", "--ray-address",
                              cluster.address, DPP_JOB_CHUNK_ROWS="5", **DRIVER_ENV)
        try:
            job = submit(server.url, source, **OPTIONS).json()
            deadline = time.monotonic() + 300
            while (now := requests.get(f"{server.url}/jobs/{job['id']}", timeout=10).json())["rows_done"] < 200:
                assert now["state"] in ("queued", "running") and time.monotonic() < deadline, now
                time.sleep(0.05)
            cluster.nodes[1].kill()
            killed_at = requests.get(f"{server.url}/jobs/{job['id']}", timeout=10).json()["rows_done"]
            done = wait_done(server.url, job["id"], timeout=600)
            got = rows_of(result(server.url, job["id"], "csv"))
        finally:
            server.stop()
    assert killed_at < 2000, "the job ended before the node was killed: nothing was tested"
    assert done["state"] == "done" and done["rows_done"] == 2000, done
    each_row_once(got, 2000)
    assert got == local_run(source, tmp_path, DPP_JOB_CHUNK_ROWS="5")  # the same chunks, so the same seeds


def test_the_tiny_mt5_runs_on_the_actors_from_the_model_path(cluster, tiny_models, tmp_path):
    path = tmp_path / "small.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "label", "note"])
        writer.writerows(labelled(120))
    server = start_server(tmp_path, "--model-dir", str(tiny_models["huggingface"]), "--engine", "mt5",
                          "--job-executor", "ray", "--ray-address", cluster.address, **DRIVER_ENV)
    try:
        job = submit(server.url, path, text_col="text", label_col="label", seed=3, max_length=8,
                     num_return_sequences=2, label_check="off").json()
        done = wait_done(server.url, job["id"], timeout=600)
        got = rows_of(result(server.url, job["id"], "csv"))
    finally:
        server.stop()
    assert done["state"] == "done" and done["rows_done"] == 120, done
    each_row_once(got, 120)
    originals = {row["id"]: row for row in got if row["variant"] == "0"}
    assert all(row["label"] == originals[row["id"]]["label"] for row in got)  # variants keep their row's label
    assert sum(row["variant"] != "0" for row in got) == done["counts"]["variants"] > 0


def test_an_unreachable_cluster_stops_the_cli_with_what_to_do(source, tmp_path):
    out = tmp_path / "out.csv"
    done = subprocess.run([sys.executable, "-m", "app.jobs", "augment", str(source), "-o", str(out), "--engine",
                           "lexical", "--text-col", "text", "--data-dir", str(tmp_path / "data"), "--log-dir",
                           str(tmp_path / "logs"), "--job-executor", "ray", "--ray-address", "127.0.0.1:9"],
                          cwd=ROOT, env=server_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "127.0.0.1:9" in done.stderr and "--resume" in done.stderr and "Ray" in done.stderr
    assert not out.exists() and (tmp_path / "out.csv.dpp-job").exists()  # the job waits, resumable


HIDE_RAY = ("import importlib.util as u, runpy, sys; find = u.find_spec; "
            "u.find_spec = lambda name, *a: None if name == 'ray' else find(name, *a); "
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.mark.parametrize("program", [["webui.py", "--port", "7999"], ["-m", "app.jobs"]], ids=["server", "cli"])
def test_choosing_ray_where_it_is_not_installed_names_the_command(program, source, tmp_path):
    if program[0] == "-m":
        command = [sys.executable, "-c", HIDE_RAY.replace("runpy.run_path(sys.argv[0], run_name='__main__')",
                                                          "runpy.run_module('app.jobs', run_name='__main__')"),
                   "app.jobs", "augment", str(source), "-o", str(tmp_path / "o.csv"), "--text-col", "text"]
    else:
        command = [sys.executable, "-c", HIDE_RAY, *program]
    done = subprocess.run([*command, "--job-executor", "ray"], cwd=ROOT, env=server_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "./start_dpp.sh --setup-only --ray" in done.stderr
