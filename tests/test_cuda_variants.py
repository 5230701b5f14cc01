"""The gpu bundle for a chosen CUDA variant: the lock of its CUDA libraries, and which torch the build installs.

The PyTorch index is not reachable from these machines, so the tests serve a stand-in on loopback, laid out as
the real ones are: a torch index (/whl/cu126/, holding torch-2.13.0+cu126 only) and a package index
(/pypi/simple/, the CUDA libraries torch requires and a package of requirements.lock). The wheels are small
but real wheels that pip resolves and installs; pip itself is the real one, with the machine's pip
configuration switched off.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import re
import subprocess
import sys
import threading
import zipfile
from functools import partial
from pathlib import Path

import pytest

import bundle.build as builder
import bundle.cuda as cuda_module
from bundle.cuda import DRIVER_FLOORS, PYPI_VARIANT, pins_beyond, variant
from tests.conftest import ROOT

LOCKED = {line.split("==")[0]: line.split("==")[1] for line in (ROOT / "requirements.lock").read_text().splitlines()
          if "==" in line and not line.startswith("#")}
TORCH = LOCKED["torch"]


def wheel(folder: Path, name: str, version: str, requires: list[str] = (), files: dict[str, str] | None = None) -> Path:
    """A pure-Python wheel that pip installs like any other."""
    files = dict(files or {})
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    files[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                 + "".join(f"Requires-Dist: {r}\n" for r in requires))
    files[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def simple_index(root: Path, wheels: list[Path]) -> None:
    """A PEP 503 index of `wheels` under `root` (root/<name>/index.html)."""
    by_name: dict[str, list[Path]] = {}
    for path in wheels:
        by_name.setdefault(re.sub(r"[-_.]+", "-", path.name.split("-")[0]).lower(), []).append(path)
    for name, paths in by_name.items():
        (root / name).mkdir(parents=True)
        links = "".join(f'<a href="{p.name}">{p.name}</a>\n' for p in paths)
        (root / name / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
        for path in paths:
            path.rename(root / name / path.name)


def torch_wheel(folder: Path, local: str, cuda: str) -> Path:
    return wheel(folder, "torch", f"{TORCH}+{local}",
                 ["nvidia-cuda-runtime-cu12==12.6.77", "nvidia-cudnn-cu12==9.5.1.17", "filelock"],
                 {"torch/__init__.py": f"__version__ = '{TORCH}+{local}'\n",
                  "torch/version.py": f"from typing import Optional\n__version__ = '{TORCH}+{local}'\n"
                                      f"cuda: Optional[str] = {cuda}\n"})


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    """http://127.0.0.1:PORT/whl/cu126 (torch) and http://127.0.0.1:PORT/pypi/simple (everything else)."""
    served = tmp_path_factory.mktemp("served")
    staging = tmp_path_factory.mktemp("wheels")
    simple_index(served / "whl" / "cu126", [torch_wheel(staging, "cu126", "'12.6'")])
    simple_index(served / "whl" / "cu128-mislabelled", [torch_wheel(staging, "cu128", "'12.6'")])
    simple_index(served / "pypi" / "simple", [
        wheel(staging, "nvidia-cuda-runtime-cu12", "12.6.77"),
        wheel(staging, "nvidia-cudnn-cu12", "9.5.1.17", ["nvidia-cublas-cu12"]),
        wheel(staging, "nvidia-cublas-cu12", "12.6.3.3"),
        wheel(staging, "nvidia-cublas-cu12", "12.6.4.1"),
        wheel(staging, "filelock", LOCKED["filelock"]),
        wheel(staging, "filelock", "99.0.0"),  # newer than the lock: the constraints must keep the locked one
    ])
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield {"torch": f"{base}/whl/cu126", "mislabelled": f"{base}/whl/cu128-mislabelled",
           "pypi": f"--index-url={base}/pypi/simple", "served": served}
    server.shutdown()


@pytest.fixture(autouse=True)
def plain_pip(monkeypatch, tmp_path):
    """pip as on a fresh machine: no pip.conf, no PIP_* settings; bundle/ untouched (locks go to tmp_path)."""
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setattr(cuda_module, "LOCK_DIR", tmp_path)


def torch_only_pip(monkeypatch) -> list[tuple[list[str], list[str]]]:
    """pip installs torch for real; the ~70 packages of requirements.lock after it are only recorded."""
    real_pip, later = builder._pip, []
    monkeypatch.setattr(builder, "_pip", lambda reqs, site, step, extra, hint="": (
        real_pip(reqs, site, step, extra, hint) if step == "install torch" else later.append((reqs, extra))))
    return later


def lock_pins(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def test_the_lock_pins_every_cuda_library_torch_needs_and_nothing_of_requirements_lock(indexes, tmp_path):
    out = tmp_path / "gpu-cu126.lock"
    result = subprocess.run([sys.executable, "-m", "bundle.cuda", "lock", "cu126", "--torch-index", indexes["torch"],
                             f"--pip-arg={indexes['pypi']}", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # torch's exact pins, the newest cuBLAS that cuDNN's open requirement allows; not torch, not filelock
    assert lock_pins(out) == ["nvidia-cublas-cu12==12.6.4.1", "nvidia-cuda-runtime-cu12==12.6.77",
                              "nvidia-cudnn-cu12==9.5.1.17"]
    header = out.read_text()
    assert f"torch==={TORCH}+cu126" in header and "525.60.13" in header and indexes["torch"] in header
    assert "python -m bundle.cuda lock cu126" in header and "--cuda cu126" in header
    assert "3 packages pinned" in result.stdout and "525.60.13" in result.stdout


def test_the_build_makes_a_missing_lock_then_installs_that_torch_and_those_pins(indexes, tmp_path, monkeypatch):
    cu126 = variant("cu126")
    lock = builder.ensure_cuda_lock(cu126, indexes["torch"], [indexes["pypi"]])
    assert lock == tmp_path / "gpu-cu126.lock" and len(lock_pins(lock)) == 3
    mtime = lock.stat().st_mtime_ns
    assert builder.ensure_cuda_lock(cu126, "http://127.0.0.1:9/unused", []) == lock  # made once, then kept
    assert lock.stat().st_mtime_ns == mtime

    later, site = torch_only_pip(monkeypatch), tmp_path / "site"
    version, built = builder.install_packages(site, "gpu", indexes["torch"], [indexes["pypi"]], cu126)
    assert (version, built) == (f"{TORCH}+cu126", "cuda12.6")
    assert f"__version__ = '{TORCH}+cu126'" in (site / "torch" / "version.py").read_text()
    assert not list(site.glob("nvidia*"))  # --no-deps: the CUDA libraries come from the lock, pinned
    ((rest, extra),) = later
    assert rest == [f"{k}=={v}" for k, v in LOCKED.items() if k != "torch"] + lock_pins(lock)
    assert extra == [indexes["pypi"]]
    assert cu126.driver_min == DRIVER_FLOORS["12"] == "525.60.13"


def test_a_torch_index_serving_another_cuda_build_stops_the_build(indexes, tmp_path, monkeypatch):
    # the index answers torch===X+cu128 with a wheel whose torch was built for CUDA 12.6
    cu128, later = variant("cu128"), torch_only_pip(monkeypatch)
    with pytest.raises(builder.BuildError, match=r"--cuda cu128 needs a CUDA 12.8 torch, but pip installed a "
                                                 r"cuda12.6 build; point pip at the right wheel with --torch-index"):
        builder.install_packages(tmp_path / "site", "gpu", indexes["mislabelled"], [indexes["pypi"]], cu128)
    assert later == []  # nothing else installed after the wrong torch


def test_air_gapped_build_machine_takes_the_wheels_from_a_folder(indexes, tmp_path, monkeypatch):
    """The index unreachable, the wheels downloaded elsewhere into one folder: --pip-arg=--find-links=DIR."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    for path in indexes["served"].rglob("*.whl"):
        if "cu128" not in path.name:
            (folder / path.name).write_bytes(path.read_bytes())
    offline = ["--no-index", f"--find-links={folder}"]
    lock = builder.ensure_cuda_lock(variant("cu126"), "http://127.0.0.1:9/whl/cu126", offline)
    assert lock_pins(lock) == ["nvidia-cublas-cu12==12.6.4.1", "nvidia-cuda-runtime-cu12==12.6.77",
                               "nvidia-cudnn-cu12==9.5.1.17"]
    later = torch_only_pip(monkeypatch)
    version, built = builder.install_packages(tmp_path / "site", "gpu", "", offline, variant("cu126"))
    assert (version, built) == (f"{TORCH}+cu126", "cuda12.6") and later[0][1] == offline


def test_an_unreachable_index_says_where_the_torch_comes_from_and_what_to_do(tmp_path):
    with pytest.raises(cuda_module.LockError) as caught:
        cuda_module.make_lock(variant("cu126"), "http://127.0.0.1:9/whl/cu126", ["--no-index"], tmp_path / "x.lock")
    message = str(caught.value)
    assert f"torch==={TORCH}+cu126" in message and "http://127.0.0.1:9/whl/cu126" in message
    assert "--torch-index" in message and "--find-links" in message
    assert not (tmp_path / "x.lock").exists()


@pytest.mark.parametrize("name, cuda, index, floor, requirement", [
    (PYPI_VARIANT, "13.0", "", "580.65.06", f"torch==={TORCH}"),
    ("cu126", "12.6", "https://download.pytorch.org/whl/cu126", "525.60.13", f"torch==={TORCH}+cu126"),
    ("CU128", "12.8", "https://download.pytorch.org/whl/cu128", "525.60.13", f"torch==={TORCH}+cu128"),
    ("cu118", "11.8", "https://download.pytorch.org/whl/cu118", "450.80.02", f"torch==={TORCH}+cu118"),
])
def test_each_variant_names_its_torch_index_and_driver_floor(name, cuda, index, floor, requirement):
    chosen = variant(name)
    assert (chosen.cuda, chosen.torch_index(), chosen.driver_min) == (cuda, index, floor)
    assert chosen.torch_requirement(TORCH) == requirement


@pytest.mark.parametrize("argument, words", [("12.6", "cu<major><minor>"), ("cu102", "CUDA 10 is not known")])
def test_a_variant_the_build_cannot_serve_is_a_usage_error(argument, words, tiny_models, tmp_path):
    result = subprocess.run([sys.executable, "-m", "bundle.build", "--model-dir", str(tiny_models["huggingface"]),
                             "--profile", "gpu", "--cuda", argument, "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and words in result.stderr and "usage:" in result.stderr
    assert not list(tmp_path.iterdir())


def test_cuda_is_refused_for_a_cpu_profile(tiny_models, tmp_path):
    result = subprocess.run([sys.executable, "-m", "bundle.build", "--model-dir", str(tiny_models["huggingface"]),
                             "--profile", "cpu-lite", "--cuda", "cu126", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--cuda" in result.stderr and "--profile gpu" in result.stderr
    assert not list(tmp_path.iterdir())


def test_the_committed_pypi_lock_is_the_resolvers_and_pins_exactly():
    pins = lock_pins(ROOT / "bundle" / f"gpu-{PYPI_VARIANT}.lock")
    assert pins and all(re.fullmatch(r"[a-z0-9-]+==[\w.+-]+", line) for line in pins)
    names = {line.split("==")[0] for line in pins}
    assert "torch" not in names and not names & {re.sub(r"[-_.]+", "-", k).lower() for k in LOCKED}
    assert "nvidia-cuda-runtime" in names  # CUDA 13's runtime, as PyPI's torch needs
    assert "python -m bundle.cuda lock cu130" in (ROOT / "bundle" / f"gpu-{PYPI_VARIANT}.lock").read_text()


def test_pip_choosing_another_version_of_a_locked_package_is_an_error():
    report = {"install": [{"metadata": {"name": "Filelock", "version": "0.1"}}]}
    with pytest.raises(cuda_module.LockError, match=r"pip chose Filelock 0.1, but requirements.lock pins"):
        pins_beyond(report, [f"filelock=={LOCKED['filelock']}"])
