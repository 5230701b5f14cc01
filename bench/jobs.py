"""File jobs through a real server (issue 17): a job against a client loop, memory, fairness; one run.

    .venv/bin/python -m bench.jobs [--rows-lexical 10000] [--rows-ct2 64] [--rss-rows 1000,10000,100000]
                                   [--latency-seconds-lexical 20] [--latency-seconds-ct2 30] [--latency-rounds 2]
                                   [--engines lexical,mt5-ct2] [--label-check auto|off] [--server-flags "..."]
                                   [--out bench/results/jobs_cpu.json]

Each engine gets one server (webui.py, its own temporary data directory, gate on): `--engine lexical`, and
`--engine mt5-ct2` on the mT5-base-shaped checkpoint of bench.base_model (random weights) in its CTranslate2
int8 copy, with --resample-rounds 0 as in bench.serving (its outputs decode to empty text with the test
tokenizer, which would make the service sample again; with real weights the first round gives the variants).
Every request and job asks for 3 variants of at most 32 new tokens, unseeded, on the named engine.

1. throughput: a labelled CSV of N rows (columns id, text, label, domain; the sentences of bench.texts and
   tests/data, each with its row number, ten labels in turn) through POST /jobs, polled until done, against
   one client that loops over the same rows with POST /augment_batch, 50 texts a call, on the same server.
   The job checks labels where the engine can score (auto: mt5-ct2, not lexical); the client then sends the
   same labels and each text's label, so both arms do the same work. Rows per second of each (the job: from
   the upload's first byte to the poll that sees it done) and their ratio; the arms take turns going first
   over --throughput-rounds. The job's CSV result is checked: every source row 1..N, each output row with
   its source row's label and id.
2. memory (bench.job_memory, lexical): a fresh server per size in --rss-rows; its RSS before, and its peak
   while the job is uploaded and stored, runs, and is downloaded as CSV; the CLI's peak at each size.
3. fairness, on the same server after 1: one sequential client sends POST /augment (one text, no labels) for
   --latency-seconds-*, idle and while a big job runs (sized from the job's measured pace to outlast the
   window; cancelled after, and the engine call it had in flight waited out), the two in turn over
   --latency-rounds; p50/p95 of each and p95_during/p95_idle.

Measured side by side in one run: read the ratios. Random weights: only the time counts.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench import job_memory
from bench.job_files import (GENERATION, REQUEST_TIMEOUT_S, check_output, download, fail, job_view, make_rows,
                             sentences, served, stop_job, submit, wait_for, write_file)
from bench.live import latency_summary
from bench.machine import describe, emit
from bench.serving import model_dir
from bench.texts import LABELS

CLIENT_BATCH = 50
# CTranslate2 on 2 cores serves about one row a second with the label check (bench/results/jobs_cpu.json): 64
# rows (job chunks and client batches alike 50+14) keep the whole default run near 15 minutes there.
DEFAULT_ROWS = {"lexical": 10_000, "mt5-ct2": 64}
# A CTranslate2 request beside a job waits for the job's engine call in flight (several seconds): longer windows.
DEFAULT_LATENCY_S = {"lexical": 20.0, "mt5-ct2": 30.0}
DEFAULT_RSS_ROWS = (1_000, 10_000, 100_000)
BIG_JOB_MARGIN = 2.0  # the fairness job is sized to last this many times the window at the measured pace
BIG_JOB_MIN_ROWS, BIG_JOB_MAX_ROWS = 200, 100_000
WARM_TEXT = "预热：第一次调用分配缓冲区。"


def server_flags(engine: str, work: Path, extra: list[str]) -> list[str]:
    flags = ["--engine", engine, "--quality", "on", *extra]
    if engine == "mt5-ct2":
        flags += ["--model-dir", str(model_dir(work, with_ct2=True)), "--device", "cpu", "--resample-rounds", "0"]
    return flags


def checks_labels(engine: str, label_check: str) -> bool:
    """Whether a job on `engine` runs the label check: auto runs it where the engine scores (mt5-ct2)."""
    return label_check == "auto" and engine != "lexical"


def job_options(engine: str, label_check: str) -> dict:
    return {"kind": "augment", "text_col": "text", "label_col": "label", "label_check": label_check,
            "engine": engine, **GENERATION}


def client_arm(session: requests.Session, url: str, rows: list, engine: str, labelled: bool) -> dict:
    """The rows through /augment_batch, CLIENT_BATCH at a time, one call after another."""
    variants, dropped = 0, {}
    started = time.monotonic()
    for first in range(0, len(rows), CLIENT_BATCH):
        batch = rows[first:first + CLIENT_BATCH]
        body = {"texts": [row.text for row in batch], "engine": engine, **GENERATION}
        if labelled:
            body |= {"labels": LABELS, "text_labels": [row.label for row in batch]}
        response = session.post(url + "/augment_batch", json=body, timeout=REQUEST_TIMEOUT_S)
        fail(response, "POST /augment_batch")
        answer = response.json()
        if len(answer["results"]) != len(batch):
            raise RuntimeError(f"/augment_batch answered {len(answer['results'])} results for {len(batch)} texts")
        variants += sum(len(result["augmented_texts"]) for result in answer["results"])
        for reason, count in answer["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + count
    wall = time.monotonic() - started
    return {"wall_s": round(wall, 2), "rows_per_s": round(len(rows) / wall, 2), "variants": variants,
            "dropped": dropped}


def job_arm(session: requests.Session, url: str, path: Path, rows: int, options: dict, work: Path) -> dict:
    """The file through POST /jobs until done; the result checked."""
    started = time.monotonic()
    job = submit(session, url, path, options)
    submitted = time.monotonic()
    view, reported = wait_for(session, url, job["id"], ("done",))
    wall = time.monotonic() - started
    result = work / f"result-{job['id']}.csv"
    download(session, url, job["id"], result)
    checked = check_output(result, rows)
    result.unlink()
    fail(session.delete(f"{url}/jobs/{job['id']}", timeout=60), "DELETE /jobs/{id}")
    return {"wall_s": round(wall, 2), "rows_per_s": round(rows / wall, 2), "submit_s": round(submitted - started, 2),
            "rows_per_s_after_submit": round(rows / (wall - (submitted - started)), 2),
            "server_rows_per_second_last_seen": reported, "chunk_rows": view["options"]["chunk_rows"],
            "counts": view["counts"], "notes": view["notes"],
            "output": checked}


def throughput(session: requests.Session, url: str, engine: str, count: int, args: argparse.Namespace, work: Path,
               progress) -> dict:
    rounds, labelled = args.throughput_rounds, checks_labels(engine, args.label_check)
    rows = make_rows(count)
    path = write_file(rows, work / f"throughput-{engine}-{count}.csv")
    runs: dict[str, list[dict]] = {"job": [], "client": []}
    for round_number in range(rounds):
        order = ["job", "client"] if round_number % 2 == 0 else ["client", "job"]
        for arm in order:
            if arm == "job":
                runs[arm].append(job_arm(session, url, path, count, job_options(engine, args.label_check), work))
            else:
                runs[arm].append(client_arm(session, url, rows, engine, labelled))
            progress(f"{engine} throughput round {round_number} {arm}: {runs[arm][-1]['rows_per_s']} rows/s")
    path.unlink()
    job_rate = statistics.median(run["rows_per_s"] for run in runs["job"])
    client_rate = statistics.median(run["rows_per_s"] for run in runs["client"])
    return {"rows": count, "rounds": rounds, "client_batch": CLIENT_BATCH,
            "label_check": labelled, "job": runs["job"], "client": runs["client"],
            "median_rows_per_s": {"job": job_rate, "client": client_rate},
            "job_over_client": round(job_rate / client_rate, 3),
            "outputs_ok": all(run["output"]["ok"] for run in runs["job"])}


def _latencies(session: requests.Session, url: str, engine: str, seconds: float) -> list[float]:
    """A sequential /augment client for `seconds` (one request at least): each request's milliseconds."""
    pool = [text for _, text in sentences()]
    latencies, index = [], 0
    deadline = time.monotonic() + seconds
    while not latencies or time.monotonic() < deadline:
        body = {"text": f"{pool[index % len(pool)]}（单条{index}）", "engine": engine, **GENERATION}
        started = time.monotonic()
        response = session.post(url + "/augment", json=body, timeout=REQUEST_TIMEOUT_S)
        latencies.append((time.monotonic() - started) * 1000)
        fail(response, "POST /augment")
        index += 1
    return latencies


def fairness(session: requests.Session, url: str, engine: str, job_rate: float, seconds: float,
             args: argparse.Namespace, work: Path, progress) -> dict:
    """Single /augment latencies for `seconds` idle and as long beside a running job, in turn, over rounds."""
    rounds = args.latency_rounds
    big = int(min(BIG_JOB_MAX_ROWS, max(BIG_JOB_MIN_ROWS, job_rate * seconds * BIG_JOB_MARGIN)))
    path = write_file(make_rows(big), work / f"fairness-{engine}-{big}.csv")
    options = job_options(engine, args.label_check)
    idle, during, jobs = [], [], []
    for round_number in range(rounds):
        for arm in (["idle", "during"] if round_number % 2 == 0 else ["during", "idle"]):
            if arm == "idle":
                idle += _latencies(session, url, engine, seconds)
                continue
            job = submit(session, url, path, options)
            wait_for(session, url, job["id"], ("running",))
            before, opened = job_view(session, url, job["id"])["rows_done"], time.monotonic()
            measured = _latencies(session, url, engine, seconds)
            after, window = job_view(session, url, job["id"]), time.monotonic() - opened
            during += measured
            jobs.append({"window_s": round(window, 1), "rows_done_in_window": after["rows_done"] - before,
                         "job_rows_per_s_in_window": round((after["rows_done"] - before) / window, 2),
                         "still_running_at_end": after["state"] == "running", "requests": len(measured)})
            stop_job(session, url, job["id"])
            # The engine call the job had in flight runs to its end: wait for it, untimed, before the next window.
            _latencies(session, url, engine, 0.0)
        progress(f"{engine} fairness round {round_number}: {len(idle)} idle, {len(during)} during")
    path.unlink()
    idle_summary, during_summary = latency_summary(idle), latency_summary(during)
    return {"seconds_per_window": seconds, "rounds": rounds, "big_job_rows": big,
            "request": "1 text, " + ", ".join(f"{k} {v}" for k, v in GENERATION.items()),
            "idle": idle_summary, "during_job": during_summary, "jobs": jobs,
            "job_ran_through_every_window": all(one["still_running_at_end"] for one in jobs),
            "p50_during_over_idle": round(during_summary["p50_ms"] / idle_summary["p50_ms"], 2),
            "p95_during_over_idle": round(during_summary["p95_ms"] / idle_summary["p95_ms"], 2)}


def engine_run(engine: str, count: int, seconds: float, args: argparse.Namespace, work: Path, progress) -> dict:
    load_start = round(os.getloadavg()[0], 2)  # other work on the machine shows here: CTranslate2 suffers most
    flags = server_flags(engine, work, args.extra_flags)
    with served(work, flags) as server, requests.Session() as session:
        for body in ({"text": WARM_TEXT}, {"texts": [WARM_TEXT + str(i) for i in range(4)]}):  # untimed
            route = "/augment" if "text" in body else "/augment_batch"
            fail(session.post(server.url + route, json={**body, "engine": engine, **GENERATION},
                              timeout=REQUEST_TIMEOUT_S), route)
        progress(f"{engine} server ready (pid {server.process.pid})")
        measured = throughput(session, server.url, engine, count, args, work, progress)
        fair = fairness(session, server.url, engine, measured["median_rows_per_s"]["job"], seconds, args, work,
                        progress)
    return {"server_flags": " ".join(flag if not flag.startswith("/") else "<model>" for flag in flags),
            "load_average_1m": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
            "throughput": measured, "fairness": fair}


def _ct2_rows_note(throughput: dict) -> str:
    rate = throughput["median_rows_per_s"]["job"]
    check = "with" if throughput["label_check"] else "without"
    return (f": CTranslate2 on this CPU served {rate:.2f} rows/s ({check} the label check), so 10,000 rows would take "
            f"about {10_000 / rate / 3600:.1f} h per arm; the default keeps the whole run near 15 minutes")


def report(args: argparse.Namespace, engines: dict, memory: dict | None, started: float, load: tuple) -> dict:
    rows = {engine: one["throughput"]["rows"] for engine, one in engines.items()}
    notes = [f"{engine}: {count} rows, not 10,000, in the throughput part" + (
                 _ct2_rows_note(engines[engine]["throughput"]) if engine == "mt5-ct2" else " (--rows-lexical)")
             for engine, count in rows.items() if count < 10_000]
    if "mt5-ct2" in engines:
        notes.append("mt5-ct2: random weights with the test tokenizer decode to empty text, which the gate drops, so "
                     "its jobs write only variant 0 (the row itself)" + (
                         " and the label check scores only the originals (10 labels each)"
                         if engines["mt5-ct2"]["throughput"]["label_check"] else "")
                     + "; both arms pay the same engine calls. Output lengths are not forced through REST: random "
                     "weights almost never stop before max_length.")
    notes += [f"{engine}: the fairness job finished inside a window; its during_job figures are partly idle"
              for engine, one in engines.items() if not one["fairness"]["job_ran_through_every_window"]]
    notes += [f"{engine}: only {one['fairness']['during_job']['count']} requests during jobs: p95 is about the max"
              for engine, one in engines.items() if one["fairness"]["during_job"]["count"] < 20]
    ratios = {f"throughput_job_over_client_{engine}": one["throughput"]["job_over_client"]
              for engine, one in engines.items()}
    ratios |= {f"latency_p95_during_job_over_idle_{engine}": one["fairness"]["p95_during_over_idle"]
               for engine, one in engines.items()}
    if memory:
        ratios |= {"memory_server_job_peak_largest_over_smallest":
                   memory["summary"]["server_job_peak_largest_over_smallest"],
                   "memory_server_download_peak_largest_over_smallest":
                   memory["summary"]["server_download_peak_largest_over_smallest"],
                   "memory_cli_peak_largest_over_smallest": memory["summary"]["cli_peak_largest_over_smallest"]}
    return {
        "benchmark": "jobs: a file job against a client loop of /augment_batch, job memory, /augment latency beside "
                     "a job",
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
        "load_average_1m": {"start": round(load[0], 2), "end": round(os.getloadavg()[0], 2)},
        "model": "lexical: no weights; mt5-ct2: mT5-base-shaped, random weights, CTranslate2 int8",
        "request": f"3 variants, max_length 32, unseeded, gate on (server --quality on), engine named in every call; "
                   f"jobs: label_check {args.label_check}, text_col text, label_col label",
        "server_flags": args.extra_flags,
        "rows_used": rows,
        "rss_rows": memory["summary"]["sizes"] if memory else [],
        "engines": engines,
        "memory": memory,
        "ratios": ratios,
        "outputs_ok": all(one["throughput"]["outputs_ok"] for one in engines.values())
        and (memory is None or memory["summary"]["outputs_ok"]),
        "notes": notes,
        "run_seconds": round(time.monotonic() - started, 1),
    }


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="lexical,mt5-ct2", help="engines to measure, comma-separated")
    parser.add_argument("--rows-lexical", type=int, default=DEFAULT_ROWS["lexical"], help="throughput rows, lexical")
    parser.add_argument("--rows-ct2", type=int, default=DEFAULT_ROWS["mt5-ct2"], help="throughput rows, mt5-ct2")
    parser.add_argument("--throughput-rounds", type=int, default=1, help="job and client runs each (alternating)")
    parser.add_argument("--rss-rows", default=",".join(map(str, DEFAULT_RSS_ROWS)),
                        help="file sizes of the memory part, comma-separated (empty: skip it)")
    parser.add_argument("--latency-seconds-lexical", type=float, default=DEFAULT_LATENCY_S["lexical"],
                        help="each idle and during-job window, lexical")
    parser.add_argument("--latency-seconds-ct2", type=float, default=DEFAULT_LATENCY_S["mt5-ct2"],
                        help="each idle and during-job window, mt5-ct2")
    parser.add_argument("--latency-rounds", type=int, default=2, help="idle and during-job windows each")
    parser.add_argument("--label-check", choices=("auto", "off"), default="auto",
                        help="the jobs' label_check (auto: on mt5-ct2, where the client then sends the labels too)")
    parser.add_argument("--server-flags", default="", help="more webui.py flags for every server (e.g. --no-ui)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    args.extra_flags = shlex.split(args.server_flags)
    # SIGTERM as Ctrl-C: unwind, so that the servers and the CLI are stopped and the temporary files removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started, load = time.monotonic(), os.getloadavg()

    def progress(message: str) -> None:
        print(f"[jobs {time.monotonic() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    rows = {"lexical": args.rows_lexical, "mt5-ct2": args.rows_ct2}
    latency = {"lexical": args.latency_seconds_lexical, "mt5-ct2": args.latency_seconds_ct2}
    engines, memory = {}, None
    with tempfile.TemporaryDirectory(prefix="dpp-bench-jobs-") as scratch:
        work = Path(scratch)
        for engine in [name.strip() for name in args.engines.split(",") if name.strip()]:
            if engine not in rows:
                parser.error(f"--engines: {engine!r} is not lexical or mt5-ct2")
            engines[engine] = engine_run(engine, rows[engine], latency[engine], args, work, progress)
        if _sizes(args.rss_rows):
            memory = job_memory.measure(work, _sizes(args.rss_rows), args.extra_flags, progress)
    return emit(report(args, engines, memory, started, load), args.out)


if __name__ == "__main__":
    sys.exit(main())
