"""`python -m app.jobs augment|classify IN -o OUT`: a file job run in this process, no server needed.

The same code as the server's jobs (checks, store, runner, service, gate), with a progress bar. The
job lives in the data directory like a server's; `OUT.dpp-job` names it until OUT is written, so
that `--resume` continues an interrupted run from its last finished chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import sys
from pathlib import Path

from app.errors import DppError, StoreUnavailable
from app.jobs.cluster import ClusterUnavailable
from app.jobs.export import OUTPUT_FORMATS, write_result
from app.jobs.manager import Jobs
from app.jobs.runner import JobStopped
from app.jobs.store import Job
from app.settings import SettingsError, load_settings

POLL_S = 0.5
STATE_SUFFIX = ".dpp-job"
# Server settings the CLI takes as flags; every other one is read from its DPP_* variable.
SETTING_FLAGS = ("model_dir", "data_dir", "device", "log_dir", "job_executor", "ray_address")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.jobs", description=(
        "Augment a labelled file (every row's variants keep its label) or label a file with zero-shot "
        "classification. Formats in: csv, tsv, xlsx, jsonl; out: csv, xlsx, jsonl (from OUT's suffix)."))
    parser.add_argument("kind", choices=("augment", "classify"))
    parser.add_argument("input", type=Path, metavar="IN")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT")
    parser.add_argument("--text-col", required=True, help="the column that holds the text")
    parser.add_argument("--label-col", help="the column that holds each row's label (kept; augment: checked)")
    parser.add_argument("--labels", help="candidate labels, separated by , ， or 、 (classify: required; augment: "
                                         "the label check's set, default the label column's values)")
    parser.add_argument("--label-check", choices=("auto", "on", "off"),
                        help="augment with --label-col: check each variant keeps its row's label (default auto: "
                             "when an mT5 engine is loaded)")
    parser.add_argument("--sheet", help="xlsx: the sheet to read (default the first)")
    parser.add_argument("--exclude-original", action="store_true", help="augment: write only the variants")
    parser.add_argument("--number-forms", action="store_true",
                        help="augment: an amount may change how it is written, never its value (三天 <-> 3天)")
    parser.add_argument("--multi-label", action="store_true", help="classify: every label over --threshold")
    parser.add_argument("--threshold", type=float, help="classify --multi-label: a label's own probability to pass")
    for name, kind in (("num_return_sequences", int), ("max_length", int), ("temperature", float),
                       ("top_k", int), ("top_p", float), ("seed", int), ("min_similarity", float),
                       ("max_similarity", float), ("min_length_ratio", float), ("max_length_ratio", float),
                       ("min_label_prob", float)):
        parser.add_argument("--" + name.replace("_", "-"), type=kind, help="as the REST field " + name)
    parser.add_argument("--quality", choices=("on", "off"), help="the quality gate (default on)")
    parser.add_argument("--engine", help="engines to load: auto, mt5, mt5-ct2 or lexical (as the server's --engine)")
    for name in SETTING_FLAGS:
        parser.add_argument("--" + name.replace("_", "-"), help=f"as the server's --{name.replace('_', '-')}")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run that writes OUT")
    return parser.parse_args(argv)


def options_of(args: argparse.Namespace) -> dict:
    """The job's options, named as REST's form fields."""
    names = ("kind", "text_col", "label_col", "labels", "label_check", "sheet", "multi_label", "threshold",
             "num_return_sequences", "max_length", "temperature", "top_k", "top_p", "seed", "quality",
             "min_similarity", "max_similarity", "min_length_ratio", "max_length_ratio", "min_label_prob")
    options = {name: getattr(args, name) for name in names}
    options["multi_label"] = args.multi_label or None
    options["number_forms"] = args.number_forms or None
    options["include_original"] = False if args.exclude_original else None
    return {name: value for name, value in options.items() if value is not None}


def write_output(jobs: Jobs, job: Job, path: Path) -> None:
    """Write the job's rows to `path` (format from its suffix) through a temporary file, then its report."""
    _, columns, rows = jobs.output(job.id)
    partial = path.with_name(path.name + ".part")
    write_result(path.suffix.lstrip(".").lower(), columns, rows, partial)
    os.replace(partial, path)
    with open(report_path(path), "w", encoding="utf-8") as sink:
        sink.writelines(jobs.report_chunks(job.id))


def report_path(path: Path) -> Path:
    return path.with_name(path.stem + ".report.json")


async def run_with_bar(jobs: Jobs, job: Job) -> Job:
    from tqdm import tqdm

    with tqdm(total=job.rows_total, initial=job.rows_done, unit="行", desc=job.kind, file=sys.stderr) as bar:
        work = asyncio.ensure_future(jobs.runner.run(job))
        while not work.done():
            await asyncio.wait({work}, timeout=POLL_S)
            now = await asyncio.to_thread(jobs.store.get, job.id)
            if now is not None:
                bar.update(now.rows_done - bar.n)
        return work.result()


def main(argv: list[str]) -> int:
    args = parse(argv)
    form = args.output.suffix.lstrip(".").lower()
    if form not in OUTPUT_FORMATS:
        print(f"error: OUT must end in .{', .'.join(OUTPUT_FORMATS)} (got {args.output.name})", file=sys.stderr)
        return 2
    if not args.input.is_file():
        print(f"error: no such file: {args.input}", file=sys.stderr)
        return 2
    flags = {name: getattr(args, name) for name in SETTING_FLAGS}
    flags["engine"] = args.engine
    try:
        settings = load_settings(flags, os.environ)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    from app.engines import engine_loaders
    from app.logs import configure_logging
    from app.service import Service
    from app.tasks import load_templates

    configure_logging(settings.log_dir, "WARNING")
    service = Service(settings, load_templates(settings.templates_file))
    jobs = Jobs(service, settings)
    state = args.output.with_name(args.output.name + STATE_SUFFIX)
    try:
        job = resumed(jobs, state) if args.resume else None
        if job is None and state.is_file() and not args.resume:
            print(f"error: {state} names an unfinished run for {args.output}: add --resume to continue it, "
                  "or delete that file to start again", file=sys.stderr)
            return 2
        service.load(engine_loaders(settings))
        if not service.readiness().ready:
            print(f"error: no engine loaded: {service.readiness().reason}", file=sys.stderr)
            return 1
        if job is None:
            job = jobs.submit(args.input, args.input.name, options_of(args), origin="cli")
            state.write_text(json.dumps({"id": job.id, "data_dir": str(settings.data_dir)}), "utf-8")
        if job.state != "done":
            job = asyncio.run(run_with_bar(jobs, job))
    except JobStopped:
        print(f"error: job {job.id} was cancelled or deleted while it ran", file=sys.stderr)
        return 1
    except StoreUnavailable as exc:
        print(f"error: {exc.__cause__}: the job store under --data-dir {settings.data_dir} cannot be used",
              file=sys.stderr)
        return 1
    except DppError as exc:
        where = f" ({exc.field})" if exc.field else ""
        print(f"error{where}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: run again with --resume to continue ({state})", file=sys.stderr)
        return 130
    except ClusterUnavailable as exc:
        print(f"error: cannot reach the cluster: {exc}\nStart it (README: \"File jobs on a Ray cluster\"), then run "
              f"again with --resume ({state})", file=sys.stderr)
        return 1
    except (OSError, sqlite3.Error) as exc:
        print(f"error: {exc}: run again with --resume to continue once it is fixed ({state})", file=sys.stderr)
        return 1
    if job.state != "done":
        print(f"error: job {job.id} {job.state}: {job.error}", file=sys.stderr)
        return 1
    write_output(jobs, job, args.output)
    with contextlib.suppress(OSError):
        state.unlink()
    summary(jobs.view(job), args.output)
    return 0


def resumed(jobs: Jobs, state: Path) -> Job | None:
    """The job `state` names, unless it is gone; a DppError when there is nothing to resume."""
    if not state.is_file():
        raise DppError(f"没有可继续的任务：{state} 不存在（不加 --resume 重新开始）")
    job = jobs.store.get(json.loads(state.read_text("utf-8"))["id"])
    if job is None:
        raise DppError(f"{state} 记录的任务已不在数据目录 {jobs.store.path.parent} 里（不加 --resume 重新开始）")
    if job.state in ("failed", "cancelled"):
        raise DppError(f"任务 {job.id} 已{'失败' if job.state == 'failed' else '取消'}，无法继续：{job.error}")
    return job


def summary(view: dict, output: Path) -> None:
    counts = view["counts"]
    print(f"done: {view['rows_done']} rows -> {output} (report: {report_path(output)})")
    print(json.dumps(counts, ensure_ascii=False))
    for note in view["notes"]:
        print("note:", note)
