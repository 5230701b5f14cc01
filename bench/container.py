"""Build deploy/Dockerfile into an image and run it, with no container registry: prints JSON.

    .venv/bin/python -m bench.container [--profile cpu-lite] [--model-dir DIR] [--out bench/results/container_cpu.json]

As on a machine with no registry (as here): debootstrap makes a Debian 12 base filesystem (minbase), buildah
imports it as the base image, builds the Dockerfile on it from a bundle built now (`bundle.build --name dpp`: the
tiny test model unless --model-dir names another), and runs the server inside the image (`buildah run
--isolation chroot`, on this machine's network; podman's own runtime cannot set rlimits here). It then checks
what a container engine would rely on: /readyz and /augment answer, the server runs as uid 10001, the
HEALTHCHECK command succeeds, the logs go to standard output, and SIGTERM drains and ends the server.
Needs root, debootstrap and buildah (Debian packages), and Debian's mirror for debootstrap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.machine import describe

ROOT = Path(__file__).resolve().parent.parent
STORAGE = ["--storage-driver", "vfs"]  # works wherever overlay mounts are not allowed (inside a container)
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
BASE_IMAGE, IMAGE = "localhost/dpp-bench-base:bookworm", "localhost/dpp:bench"
TEXT = "快递员把包裹放在门口就走了，也没有打电话通知。"


def run(*command: str, timeout: float = 1800, **options) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **options)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def buildah(*args: str, timeout: float = 1800) -> str:
    return run("buildah", *STORAGE, *args, timeout=timeout).stdout.strip()


def timed(step: str, seconds: dict, fn, *args):
    started = time.monotonic()
    result = fn(*args)
    seconds[step] = round(time.monotonic() - started, 1)
    print(f"[{step}] {seconds[step]} s", file=sys.stderr, flush=True)
    return result


def base_image(work: Path) -> None:
    """A Debian 12 minbase filesystem, made by debootstrap, as an image."""
    rootfs = work / "rootfs"
    run("debootstrap", "--variant=minbase", SUITE, str(rootfs), MIRROR)
    container = buildah("from", "scratch")
    try:
        mount = Path(buildah("mount", container))
        run("cp", "-a", f"{rootfs}/.", str(mount))
        buildah("umount", container)
        buildah("commit", "--quiet", container, BASE_IMAGE)
    finally:
        buildah("rm", container)
        shutil.rmtree(rootfs, ignore_errors=True)


def bundle(model_dir: Path, profile: str, context: Path) -> None:
    run(sys.executable, "-m", "bundle.build", "--model-dir", str(model_dir), "--profile", profile, "--name", "dpp",
        "--out", str(context / "dpp.tar.gz"), "--compress-level", "1", cwd=ROOT)


def image(context: Path) -> None:
    # Docker's image format: OCI's has no HEALTHCHECK, and buildah would drop it.
    buildah("bud", "--isolation", "chroot", "--quiet", "--format", "docker", "--build-arg", f"BASE={BASE_IMAGE}",
            "-f", str(ROOT / "deploy" / "Dockerfile"), "-t", IMAGE, str(context))


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_and_check(work: Path, report: dict) -> None:
    container = buildah("from", IMAGE)
    port = free_port()
    try:
        config = json.loads(buildah("inspect", "--type", "container", container))["OCIv1"]["config"]
        report["image_config"] = {"user": config.get("User"), "workdir": config.get("WorkingDir"),
                                  "exposed": sorted(config.get("ExposedPorts", {})),
                                  "volumes": sorted(config.get("Volumes", {}))}
        healthcheck = json.loads(buildah("inspect", "--type", "image", IMAGE))["Docker"]["config"]["Healthcheck"]
        report["healthcheck"] = healthcheck["Test"]
        buildah("config", "--env", f"DPP_PORT={port}", "--env", "DPP_HOST=127.0.0.1", container)
        log = open(work / "server.out", "w")
        server = subprocess.Popen(["buildah", *STORAGE, "run", "--isolation", "chroot", container, "--",
                                   "./start_dpp.sh"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        while time.monotonic() - started < 300:
            try:
                if requests.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"the server in the image ended with {server.returncode}:\n"
                                 f"{(work / 'server.out').read_text()[-3000:]}")
            time.sleep(0.5)
        else:
            raise SystemExit("the server in the image was not ready within 300 s")
        report["ready_s"] = round(time.monotonic() - started, 1)
        readiness = requests.get(url + "/readyz", timeout=10).json()
        answer = requests.post(url + "/augment", json={"text": TEXT, "engine": "lexical", "seed": 1}, timeout=60)
        report["readyz"] = {"status": readiness["status"], "engines": readiness["engines"]}
        report["augment"] = {"status": answer.status_code, "variants": len(answer.json().get("augmented_texts", []))}
        # The HEALTHCHECK's own command, run inside the image as the engine would run it.
        health = [part.replace("${DPP_PORT}", str(port)) for part in healthcheck["Test"][1:]]
        report["healthcheck_exit"] = subprocess.run(["buildah", *STORAGE, "run", "--isolation", "chroot", container,
                                                     "--", *health], capture_output=True, timeout=60).returncode
        uid = run("buildah", *STORAGE, "run", "--isolation", "chroot", container, "--", "id", "-u").stdout.strip()
        report["uid"] = int(uid)
        # As `docker stop` does: SIGTERM to the container's main process, the server (start_dpp.sh exec'd it).
        # buildah itself would not pass the signal on.
        found = subprocess.run(["pgrep", "-f", "/opt/dpp/webui.py"], capture_output=True, text=True).stdout.split()
        if not found:
            raise SystemExit("the server's process in the image was not found")
        os.kill(int(found[0]), signal.SIGTERM)
        report["exit_after_sigterm"] = server.wait(timeout=60)
        output = (work / "server.out").read_text()
        report["logs_on_stdout"] = "dpp serving on" in output and "INFO app.service" in output
        report["drained"] = "drained: every accepted request was answered" in output
    finally:
        buildah("rm", container)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu-lite", choices=["cpu", "cpu-lite", "gpu"])
    parser.add_argument("--model-dir", type=Path, help="the model to bundle (default: the tiny test model)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    for tool in ("debootstrap", "buildah"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install -y debootstrap buildah")
    seconds: dict[str, float] = {}
    report: dict = {"benchmark": "container image from deploy/Dockerfile, built and run with buildah",
                    "machine": describe(), "date": time.strftime("%Y-%m-%d"), "profile": args.profile,
                    "seconds": seconds}
    with tempfile.TemporaryDirectory(prefix="dpp-container-") as temporary:
        work = Path(temporary)
        context = work / "context"
        context.mkdir()
        model_dir = args.model_dir
        if model_dir is None:
            from tests.tiny_model import build_tiny_models

            model_dir = build_tiny_models(work / "tiny")["modelscope"]
        try:
            timed("debootstrap and import the base", seconds, base_image, work)
            timed("build the bundle", seconds, bundle, model_dir, args.profile, context)
            report["bundle_mb"] = round((context / "dpp.tar.gz").stat().st_size / 2**20, 1)
            timed("build the image", seconds, image, context)
            report["image_size"] = json.loads(buildah("images", "--json", IMAGE))[0]["size"]  # as buildah says it
            timed("run and check", seconds, serve_and_check, work, report)
        finally:
            subprocess.run(["buildah", *STORAGE, "rmi", IMAGE, BASE_IMAGE], capture_output=True)
    report["ok"] = (report["augment"]["status"] == 200 and report["augment"]["variants"] > 0
                    and report["uid"] == 10001 and report["healthcheck_exit"] == 0
                    and report["exit_after_sigterm"] == 0 and report["logs_on_stdout"] and report["drained"])
    text = json.dumps(report, ensure_ascii=False, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", "utf-8")
    if not report["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
