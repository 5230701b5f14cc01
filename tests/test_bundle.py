"""The offline bundle end to end: build it from the tiny model, unpack it elsewhere, run it air-gapped.

The run happens as on a server with nothing installed: an empty environment whose PATH holds no
Python, no network (a fresh network namespace with only loopback), and the build machine's Python
and the checkout's .venv hidden under empty mounts.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from bundle.build import SYSTEM_LIBS
from bundle.progress import human_size
from tests.conftest import ROOT, launcher_tools, require_unshare

pytestmark = pytest.mark.bundle

LO_UP = """
import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH22x", b"lo", 0))[:18])[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", flags | 1))
"""


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def build_bundle(model_dir: Path, profile: str, out: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """Run bundle.build as users do (gzip level 1, for speed); return the one tarball and the run."""
    result = subprocess.run(
        [sys.executable, "-m", "bundle.build", "--model-dir", str(model_dir), "--profile", profile,
         "--out", str(out), "--compress-level", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    tarballs = list(out.glob("*.tar.gz"))
    assert len(tarballs) == 1 and not list(out.glob(".*")), list(out.iterdir())
    return tarballs[0], result


@pytest.fixture(scope="module")
def built(tiny_models, tmp_path_factory):
    """The tiny ModelScope checkpoint (pytorch_model.bin) packed as users pack the real one."""
    return build_bundle(tiny_models["modelscope"], "cpu", tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def bundle(built, tmp_path_factory) -> Path:
    """The tarball unpacked into a new directory, as on the target: `tar -xzf NAME.tar.gz`."""
    target = tmp_path_factory.mktemp("target")
    subprocess.run(["tar", "-xzf", str(built[0])], cwd=target, check=True)
    (top,) = target.iterdir()
    return top


def version_fields(top: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (top / "VERSION").read_text().splitlines())


def launcher(top: Path, *flags: str, tools: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["/usr/bin/env", "-i", f"PATH={tools}", "./start_dpp.sh", *flags], cwd=top,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tools(tmp_path_factory) -> Path:
    """A PATH with the few system programs the launcher uses, and no Python."""
    return launcher_tools(tmp_path_factory.mktemp("tools"))


def test_the_build_shows_progress_and_ends_with_path_and_size(built):
    tarball, result = built
    for step in ("[install torch]", "[install packages]", "[convert]", "[manifest]", "[compress]"):
        assert step in result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"Bundle ready: {tarball} ({human_size(tarball.stat().st_size)})"


def test_everything_is_under_one_top_folder(built, bundle):
    names = subprocess.run(["tar", "-tzf", str(built[0])], capture_output=True, text=True, check=True).stdout.split()
    assert {name.split("/")[0] for name in names} == {bundle.name}
    assert bundle.name == built[0].name.removesuffix(".tar.gz")


def test_version_records_the_build(bundle):
    fields = version_fields(bundle)
    assert fields["python"] == platform.python_version()
    assert fields["glibc"] == platform.libc_ver()[1]
    assert fields["arch"] == platform.machine()
    assert fields["torch"] == "2.13.0+cpu" and fields["torch_build"] == "cpu" and fields["profile"] == "cpu"
    assert fields["driver_min"] == "none" and fields["cuda_variant"] == "none"
    assert fields["model_id"] == "damo/nlp_mt5_zero-shot-augment_chinese-base"
    assert fields["model_dtype"] == "float16"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fields["build_date"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", fields["app_version"])


def test_the_manifest_lists_every_file_with_its_sha256(bundle):
    import hashlib

    entries = dict(reversed(line.split("  ", 1)) for line in (bundle / "MANIFEST").read_text().splitlines())
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"MANIFEST"}
    assert set(entries) == files
    for name in ("VERSION", "start_dpp.sh", "app/server.py", "python/bin/python3"):
        assert entries[name] == hashlib.sha256((bundle / name).read_bytes()).hexdigest()


def test_site_packages_are_exactly_the_lock(bundle):
    site = next((bundle / "python" / "lib").glob("python3.*")) / "site-packages"
    installed = {}
    for meta in site.glob("*.dist-info/METADATA"):
        text = meta.read_text("utf-8", errors="replace")
        name = re.search(r"^Name: (.+)$", text, re.M).group(1).strip()
        installed[_normal(name)] = re.search(r"^Version: (.+)$", text, re.M).group(1).strip()
    locked = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            locked[_normal(name)] = version.strip()
    locked["torch"] += "+cpu"
    assert installed == locked
    for dropped in ("bin", "torch/test", "torch/include", "pandas/tests", "numpy/_core/tests"):
        assert not (site / dropped).exists(), dropped
    assert not list(site.glob("pip*")) and not (bundle / "python" / "lib" / "python3.11" / "test").exists()


def test_the_weights_are_fp16_safetensors_with_tokenizer_and_config(bundle):
    model = bundle / "models" / "nlp_mt5_zero-shot-augment_chinese-base"
    assert {"config.json", "spiece.model", "model.safetensors"} <= {p.name for p in model.iterdir()}
    assert not list(model.glob("*.bin"))
    with safe_open(model / "model.safetensors", "pt") as weights:
        assert {str(weights.get_slice(n).get_dtype()) for n in weights.keys()} == {"F16"}


def test_bundled_binaries_need_nothing_but_glibc_and_the_bundle(bundle):
    python = bundle / "python"
    env = {"LD_LIBRARY_PATH": str(python / "lib"), "PATH": "/usr/bin:/bin"}
    elves = [python / "bin" / "python3"] + [p for p in python.rglob("*.so*") if p.is_file()]
    outside = set()
    for elf in elves:
        out = subprocess.run(["ldd", str(elf)], capture_output=True, text=True, env=env).stdout
        assert "not found" not in out, (elf, out)
        for name, _, path in (line.strip().partition(" => ") for line in out.splitlines()):
            path = path.split(" (")[0]
            if path.startswith("/") and not SYSTEM_LIBS.match(name) and not path.startswith(str(bundle)):
                outside.add(f"{name} => {path} (for {elf.name})")
    assert not outside
    assert (python / "lib" / "libssl.so.3").is_file() and (python / "lib" / "libffi.so.8").is_file()


def test_a_tampered_or_missing_file_is_named_by_verify(bundle, tools):
    clean = launcher(bundle, "--verify", "--setup-only", tools=tools)
    assert clean.returncode == 0, clean.stderr
    assert "All files match MANIFEST" in clean.stdout
    victim, gone = bundle / "app" / "tasks.py", bundle / "app" / "templates.json"
    original, kept = victim.read_bytes(), gone.read_bytes()
    try:
        victim.write_bytes(original + b"\n# changed\n")
        gone.unlink()
        result = launcher(bundle, "--verify", tools=tools)
        assert result.returncode == 4
        assert "app/tasks.py" in result.stderr and "app/templates.json" in result.stderr
        assert "app/server.py" not in result.stderr
        assert "dpp serving" not in result.stdout  # refused before starting
    finally:
        victim.write_bytes(original)
        gone.write_bytes(kept)


@pytest.mark.parametrize("field, value, words", [
    ("glibc", "9.99", ["glibc", "9.99", "older"]),
    ("arch", "riscv64", ["riscv64", os.uname().machine]),
])
def test_a_machine_the_bundle_was_not_built_for_is_refused(bundle, tools, field, value, words):
    path = bundle / "VERSION"
    original = path.read_text()
    try:
        path.write_text(re.sub(rf"^{field}=.*$", f"{field}={value}", original, flags=re.M))
        result = launcher(bundle, tools=tools)
    finally:
        path.write_text(original)
    assert result.returncode == 3
    assert all(word in result.stderr for word in words), result.stderr
    assert "dpp serving" not in result.stdout


@pytest.mark.parametrize("driver, flags, refused", [
    ("535.104.05", (), True), ("470.256.02", (), True), ("580.65.06", (), False), ("590.1", (), False),
    ("535.104.05", ("--device", "cpu"), False), ("535.104.05", ("--cpu-only",), False),
])
def test_a_cuda_bundle_on_an_older_driver_says_what_to_do_before_starting(bundle, tools, tmp_path, driver, flags,
                                                                          refused):
    path = bundle / "VERSION"
    original = path.read_text()
    gpu_tools = tmp_path / "tools"
    gpu_tools.mkdir()
    for tool in tools.iterdir():
        (gpu_tools / tool.name).symlink_to(tool.resolve())
    smi = gpu_tools / "nvidia-smi"  # a machine with an NVIDIA driver of this version
    smi.write_text(f"#!/bin/sh\ncase \"$*\" in *driver_version*) echo {driver} ;; *) echo 'NVIDIA H200' ;; esac\n")
    smi.chmod(0o755)
    try:
        path.write_text(re.sub(r"^driver_min=.*$", "driver_min=580.65.06", original, flags=re.M))
        result = launcher(bundle, "--setup-only", *flags, tools=gpu_tools)
    finally:
        path.write_text(original)
    if refused:
        assert result.returncode == 3, result.stderr
        assert all(word in result.stderr for word in ("580.65.06", driver, "--device cpu", "Upgrade the driver"))
        # a CUDA 12 bundle is named only where it would run (CUDA 12 needs 525.60.13)
        assert ("--cuda cu126" in result.stderr) == driver.startswith("535"), result.stderr
    else:
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("flag", ["--dev", "--ray"])
def test_the_checkout_only_flags_are_refused_in_a_bundle(bundle, tools, flag):
    result = launcher(bundle, flag, tools=tools)
    assert result.returncode == 3 and flag in result.stderr


def test_help_works_from_the_bundle(bundle, tools):
    result = launcher(bundle, "--help", tools=tools)
    assert result.returncode == 0 and "--model-dir" in result.stdout


class NetworkNamespace:
    """A namespace with only loopback, kept alive by a sleeping process that others enter."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "-n", "sleep", "900"])
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{self.holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "unshare never entered a new network namespace"
            time.sleep(0.02)
        self.run(sys.executable, "-c", LO_UP, check=True)

    def enter(self, *command: str) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-n", *command]

    def run(self, *command: str, **options) -> subprocess.CompletedProcess:
        return subprocess.run(self.enter(*command), capture_output=True, text=True, **options)

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


def test_air_gapped_run_serves_api_and_page_then_stops_cleanly(bundle, tools, tmp_path):
    require_unshare("-m", "-n")
    netns = NetworkNamespace()
    hidden = [sys.base_prefix, str(ROOT / ".venv")]
    output = tmp_path / "server.out"
    server = None
    try:
        dial_out = "import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)"
        outside = netns.run(sys.executable, "-c", dial_out)
        assert outside.returncode != 0 and "unreachable" in outside.stderr  # truly no network in there
        # Hide the build machine's Python, then start the bundle as its README says, with nothing set.
        script = ('bundle=$1; tools=$2; shift 2; for d in "$@"; do mount -t tmpfs tmpfs "$d" || exit 97; done; '
                  'cd "$bundle" && exec /usr/bin/env -i PATH="$tools" ./start_dpp.sh')
        with open(output, "wb") as sink:
            server = subprocess.Popen(netns.enter("unshare", "-m", "--", "sh", "-c", script, "sh", str(bundle),
                                                  str(tools), *hidden), stdout=sink, stderr=subprocess.STDOUT)
        report_path = tmp_path / "report.json"
        probe = netns.run(sys.executable, str(ROOT / "tests" / "bundle_probe.py"), "http://127.0.0.1:7860",
                          str(report_path), timeout=400)
        assert probe.returncode == 0, probe.stderr[-3000:] + output.read_text(errors="replace")[-3000:]
        maps = Path(f"/proc/{server.pid}/maps").read_text()
        report = json.loads(report_path.read_text("utf-8"))
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
        netns.close()
    log = output.read_text(errors="replace")
    assert code == 0, log[-3000:]
    # The process ran the bundle's own interpreter and libraries, nothing of the build machine's.
    assert str(bundle / "python" / "lib" / "libpython3.11.so.1.0") in maps
    assert not any(h in maps for h in hidden)
    assert "No CUDA device found: running on CPU" in log and "dpp serving on http://0.0.0.0:7860" in log
    assert (bundle / "logs" / "webui.log").is_file()

    ready = report["readyz"]
    assert ready["status"] == "ready" and ready["engine"] == "mt5"
    # The bundle's own weights: the log names their directory, /readyz (open to anyone) only its name.
    assert ready["model"] == "nlp_mt5_zero-shot-augment_chinese-base"
    own_weights = bundle / "models" / "nlp_mt5_zero-shot-augment_chinese-base"
    assert f"from {own_weights} (" in (bundle / "logs" / "webui.log").read_text("utf-8")
    augment = report["augment"]
    assert augment["status"] == 200, augment
    variants = augment["body"]["augmented_texts"]
    assert 1 <= len(variants) <= 2 and all(isinstance(v, str) and v.strip() for v in variants)
    # The bundle's app has the quality gate (asked off here: the tiny model's variants are noise).
    assert {"duplicate", "too_far", "label_changed"} <= set(augment["body"]["dropped"])
    assert [v["text"] for v in augment["body"]["variants"]] == variants

    page = report["page"]
    assert page["html_loads"] and page["css_refs"]  # the page does load scripts, styles and fonts
    assert page["external"] == []
    browser = report["browser"]
    assert browser["tabs_visible"] == {"单条增强": True, "批量增强": True}
    assert browser["requests"] > 10 and browser["external_requests"] == []


def test_the_port_check_works_from_the_bundle(bundle, tools):
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        result = launcher(bundle, "--port", str(taken.getsockname()[1]), tools=tools)
    assert result.returncode == 1 and "already in use" in result.stderr


def test_build_help_documents_every_option():
    result = subprocess.run([sys.executable, "-m", "bundle.build", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    for option in ("--model-dir", "--profile", "--cuda", "--out", "--name", "--model-id", "--torch-index",
                   "--pip-arg", "--compress-level", "--work-dir", "--keep-stage", "--force"):
        assert option in result.stdout


class RecordedPip:
    """Stands in for pip only: records what each install step would be asked for."""

    def __init__(self, build: str) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []
        self.build = build

    def install(self, requirements, site, step, extra, hint=""):
        self.calls.append((list(requirements), list(extra)))


@pytest.mark.parametrize("profile, build, torch_pin", [("cpu", "cpu", "torch===2.13.0+cpu"),
                                                       ("gpu", "cuda13.0", "torch===2.13.0")])
def test_each_profile_installs_the_lock_with_its_own_torch(monkeypatch, tmp_path, profile, build, torch_pin):
    import bundle.build as builder

    pip = RecordedPip(build)
    monkeypatch.setattr(builder, "_pip", pip.install)
    monkeypatch.setattr(builder, "torch_build", lambda site: pip.build)
    version, built = builder.install_packages(tmp_path, profile, "", ["--index-url=https://mirror.example/simple"])
    (torch_step, torch_extra), (rest, rest_extra) = pip.calls
    assert torch_step == [torch_pin] and built == build
    assert torch_extra == rest_extra == ["--index-url=https://mirror.example/simple"]
    locked = [line for line in (ROOT / "requirements.lock").read_text().splitlines()
              if "==" in line and not line.startswith("#") and not line.startswith("torch==")]
    gpu = [line for line in (ROOT / "bundle" / "gpu-cu130.lock").read_text().splitlines() if line and line[0] != "#"]
    assert rest == locked + (gpu if profile == "gpu" else [])
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.+-]+", line) for line in gpu)


def test_a_torch_of_the_wrong_build_stops_the_build(monkeypatch, tmp_path):
    import bundle.build as builder

    pip = RecordedPip("cuda13.0")
    monkeypatch.setattr(builder, "_pip", pip.install)
    monkeypatch.setattr(builder, "torch_build", lambda site: pip.build)
    with pytest.raises(builder.BuildError, match="cpu profile needs a CPU torch, but pip installed a cuda13.0"):
        builder.install_packages(tmp_path, "cpu", "", [])
    assert len(pip.calls) == 1  # nothing else installed after the wrong torch


def test_an_existing_tarball_is_refused_without_force(tiny_models, tmp_path):
    existing = tmp_path / "mine.tar.gz"
    existing.write_bytes(b"an earlier bundle")
    result = subprocess.run([sys.executable, "-m", "bundle.build", "--model-dir", str(tiny_models["huggingface"]),
                             "--profile", "cpu", "--out", str(existing)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert existing.read_bytes() == b"an earlier bundle" and list(tmp_path.iterdir()) == [existing]


def test_a_directory_without_a_model_is_refused_before_anything_is_installed(tmp_path):
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "bundle.build", "--model-dir", str(tmp_path / "nothing"),
                             "--profile", "cpu", "--out", str(tmp_path / "dist")], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert str(tmp_path / "nothing") in result.stderr and "[install" not in result.stderr
    assert time.monotonic() - started < 30
    assert not list((tmp_path / "dist").iterdir())
