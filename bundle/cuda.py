"""The CUDA variants of the gpu bundle: which torch build, from which index, with which CUDA libraries, and the
oldest NVIDIA driver each runs on.

    python -m bundle.cuda lock cu126      # write bundle/gpu-cu126.lock (needs the torch index, or --pip-arg)

PyPI's torch is one CUDA build (PYPI_VARIANT); the others are torch===X.Y.Z+cuXYZ on the PyTorch index for
that variant (https://download.pytorch.org/whl/cuXYZ, or a mirror of it). A variant's CUDA libraries are pinned
in bundle/gpu-cuXYZ.lock: pip's resolver reads them from torch's own requirements, with requirements.lock as
constraints, so that the packages both need keep the versions the app is tested with.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from app.settings import ROOT
from bundle.fetch import connect_failure

# The CUDA build of PyPI's torch for the version pinned in requirements.lock (torch 2.13.0: CUDA 13.0).
PYPI_VARIANT = "cu130"
TORCH_INDEX = "https://download.pytorch.org/whl/{variant}"
# The oldest NVIDIA driver (Linux) each CUDA major release runs on, with CUDA's minor version compatibility
# (NVIDIA's CUDA compatibility guide). A GPU architecture newer than the release also needs a driver that knows it.
DRIVER_FLOORS = {"11": "450.80.02", "12": "525.60.13", "13": "580.65.06"}
LOCK_DIR = Path(__file__).parent
NAME = re.compile(r"cu(\d\d)(\d)")


class LockError(Exception):
    """The lock cannot be made; the message says why and what to do."""


@dataclass(frozen=True)
class CudaVariant:
    name: str  # "cu126"

    @property
    def cuda(self) -> str:
        """'12.6' for cu126."""
        major, minor = NAME.fullmatch(self.name).groups()
        return f"{int(major)}.{minor}"

    @property
    def driver_min(self) -> str:
        return DRIVER_FLOORS[self.cuda.split(".")[0]]

    @property
    def from_pypi(self) -> bool:
        return self.name == PYPI_VARIANT

    def torch_requirement(self, version: str) -> str:
        """'===' matches the version string exactly: PyPI's build is X.Y.Z, the index's X.Y.Z+cuXYZ."""
        return f"torch==={version}" if self.from_pypi else f"torch==={version}+{self.name}"

    def torch_index(self) -> str:
        """Where the torch wheel comes from by default ('' for PyPI, which pip already knows)."""
        return "" if self.from_pypi else TORCH_INDEX.format(variant=self.name)

    def lock_path(self) -> Path:
        return LOCK_DIR / f"gpu-{self.name}.lock"


def variant(name: str) -> CudaVariant:
    """The variant called `name` ('cu126'); an argparse type, so the error is argparse's usage error."""
    match = NAME.fullmatch(name.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{name!r} is not a CUDA variant: write it as PyTorch names its wheels, "
                                         f"cu<major><minor> (cu126 for CUDA 12.6; {PYPI_VARIANT} is PyPI's)")
    if str(int(match.group(1))) not in DRIVER_FLOORS:
        raise argparse.ArgumentTypeError(f"{name}: the driver floor of CUDA {int(match.group(1))} is not known "
                                         f"(known: CUDA {', '.join(sorted(DRIVER_FLOORS))}; see DRIVER_FLOORS in "
                                         f"bundle/cuda.py)")
    return CudaVariant(match.group(0))


def torch_build(site: Path) -> str:
    """'cpu' or 'cuda<version>', read from an installed torch's version.py."""
    text = (site / "torch" / "version.py").read_text("utf-8")
    cuda = re.search(r"^cuda: .*= (.+)$", text, re.M)
    value = cuda.group(1).strip().strip("'\"") if cuda else "None"
    return "cpu" if value == "None" else f"cuda{value}"


def normal(name: str) -> str:
    """A package name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def package_of(line: str) -> str:
    """The normalised package name of a requirement line ('PyYAML==6.0.3' -> 'pyyaml')."""
    return normal(re.split(r"[=<>!~ ;\[]", line, maxsplit=1)[0])


def lock_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text("utf-8").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def locked_torch_version() -> str:
    pins = [line for line in lock_lines(ROOT / "requirements.lock") if line.startswith("torch==")]
    if len(pins) != 1:
        raise LockError("requirements.lock must pin torch exactly once (torch==X.Y.Z)")
    return pins[0].split("==", 1)[1]


def pins_beyond(report: dict, locked: list[str]) -> list[str]:
    """From pip's installation report, every package that neither torch nor requirements.lock (`locked`) is,
    as name==version; a package of requirements.lock at another version is an error."""
    versions = {package_of(line): line.split("==", 1)[1] for line in locked if "==" in line}
    pins = []
    for item in report["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        key = normal(name)
        if key == "torch":
            continue
        if key in versions and versions[key] != version:
            raise LockError(f"pip chose {name} {version}, but requirements.lock pins {versions[key]}")
        if key not in versions:
            pins.append(f"{key}=={version}")
    return sorted(pins)


def index_args(torch_index: str) -> list[str]:
    """pip's arguments for the torch index; none when it is unreachable (pip would retry it for minutes), and
    then torch has to come from pip's configured sources or a --find-links folder."""
    if not torch_index:
        return []
    reason = connect_failure(torch_index, timeout=3.0)
    if reason is None:
        return ["--extra-index-url", torch_index]
    print(f"[build] {torch_index} is not reachable ({reason}); torch comes from pip's configured sources",
          file=sys.stderr, flush=True)
    return []


def make_lock(cuda: CudaVariant, torch_index: str, pip_args: list[str], out: Path) -> list[str]:
    """Resolve cuda's torch with pip (nothing is installed) and write its CUDA libraries, pinned, to `out`."""
    version = locked_torch_version()
    requirement = cuda.torch_requirement(version)
    locked = [line for line in lock_lines(ROOT / "requirements.lock") if not line.startswith("torch==")]
    with tempfile.TemporaryDirectory() as scratch:
        constraints, report = Path(scratch) / "constraints.txt", Path(scratch) / "report.json"
        constraints.write_text("\n".join(locked) + "\n", "utf-8")
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--disable-pip-version-check", "--report", str(report), "-c", str(constraints), requirement,
                   *index_args(torch_index), *pip_args]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise LockError(f"pip could not resolve {requirement}:\n{result.stderr[-3000:]}\n"
                            f"{where_to_get(cuda, torch_index)}")
        pins = pins_beyond(json.loads(report.read_text("utf-8")), locked)
    source = torch_index or "PyPI"
    out.write_text(
        f"# The CUDA libraries that {requirement} needs (CUDA {cuda.cuda}, NVIDIA driver {cuda.driver_min} or newer),\n"
        f"# every one pinned exactly. `python -m bundle.build --profile gpu --cuda {cuda.name}` installs them next\n"
        f"# to requirements.lock. Made with: python -m bundle.cuda lock {cuda.name} (pip's resolver, torch from\n"
        f"# {source}, for {platform.system().lower()} {platform.machine()} and Python "
        f"{sys.version_info.major}.{sys.version_info.minor})\n" + "".join(f"{pin}\n" for pin in pins),
        "utf-8")
    return pins


def where_to_get(cuda: CudaVariant, torch_index: str) -> str:
    """What to do when pip cannot find a variant's torch."""
    if cuda.from_pypi:
        return "pip takes this torch from PyPI (or the mirror given with --pip-arg=--index-url=URL)."
    return (f"{cuda.torch_requirement(locked_torch_version())} comes from {torch_index or cuda.torch_index()}: make "
            f"that reachable, give a mirror of it with --torch-index URL, or download the wheels on a machine that "
            f"reaches it and pass --pip-arg=--find-links=DIR (README: \"GPU servers as they are\").")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bundle.cuda",
                                description="Pin the CUDA libraries of one CUDA variant of torch in bundle/gpu-VARIANT"
                                            ".lock, for python -m bundle.build --profile gpu --cuda VARIANT.")
    p.add_argument("action", choices=["lock"])
    p.add_argument("variant", type=variant, help=f"cu<major><minor>, e.g. cu126 ({PYPI_VARIANT} is PyPI's torch)")
    p.add_argument("--torch-index", help="the PyTorch index for this variant (default: "
                                         f"{TORCH_INDEX.format(variant='VARIANT')}; none for {PYPI_VARIANT})")
    p.add_argument("--pip-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for pip, repeatable (--pip-arg=--index-url=URL, --pip-arg=--find-links=DIR)")
    p.add_argument("--out", type=Path, help="where to write the lock (default: bundle/gpu-VARIANT.lock)")
    args = p.parse_args(argv)
    out = args.out or args.variant.lock_path()
    index = args.torch_index if args.torch_index is not None else args.variant.torch_index()
    try:
        pins = make_lock(args.variant, index, args.pip_arg, out)
    except LockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{out}: {len(pins)} packages pinned for torch {args.variant.name} "
          f"(NVIDIA driver {args.variant.driver_min} or newer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
