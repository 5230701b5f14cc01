"""Build the offline bundle: one tarball that runs on an air-gapped server with nothing else installed.

    python -m bundle.build --model-dir models/nlp_mt5_zero-shot-augment_chinese-base --profile cpu

The tarball holds, under one folder: this machine's Python (interpreter, libpython, standard
library and the shared libraries they need beyond glibc), the packages of requirements.lock,
the weights as FP16 safetensors, the app, start_dpp.sh, VERSION and MANIFEST. The cpu-lite
profile carries the CTranslate2 int8 model instead, and the lock without torch and transformers.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import tomllib
from datetime import datetime, timezone
from pathlib import Path

from app.engines.model_files import inspect_model_dir
from app.errors import ModelUnavailable
from app.settings import CT2_DIR_NAME, MODEL_ID, ROOT, Settings
from bundle.convert import ConvertError, convert, convert_ct2
from bundle.cuda import (PYPI_VARIANT, CudaVariant, LockError, index_args, lock_lines, locked_torch_version, make_lock,
                         package_of, torch_build, variant, where_to_get)
from bundle.progress import Progress, human_size

PROFILES = ("cpu", "gpu", "cpu-lite")
# cpu-lite serves with CTranslate2 only: no torch, and no package that only torch or transformers needs.
LITE_LEAVES_OUT = ("torch", "sympy", "mpmath", "networkx", "transformers", "safetensors", "regex")
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
APP_FILES = ("app", "webui.py", "start_dpp.sh", "requirements.lock", "README.md", "pyproject.toml")
MODEL_SUBDIR = Settings().model_dir.relative_to(ROOT)
# Parts of the standard library a headless server never uses (and _tkinter would drag in X11).
STDLIB_SKIP = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
               "__phello__"}
STDLIB_SKIP_PATTERNS = (re.compile(r"^config-\d"), re.compile(r"^_tkinter\."), re.compile(r"^_test"),
                        re.compile(r"^xxlimited"), re.compile(r"^_xxtestfuzz"))
# Test suites and C++ headers of big packages; nothing imports them at run time.
DROP_FROM_SITE = ("torch/test", "torch/include", "pandas/tests")
DROP_FILES_FROM_SITE = ("torch/bin/test_*", "torch/bin/*Test", "torch/bin/protoc*")
DROP_TESTS_UNDER = ("numpy", "sympy", "networkx")
# Provided by every glibc system (and, for the last two, required of it by manylinux wheels).
SYSTEM_LIBS = re.compile(
    r"^(linux-vdso|linux-gate|ld-linux[\w.-]*|libc|libm|libdl|librt|libpthread|libutil|libresolv|libanl|"
    r"libnsl\.so\.1|libmvec|libBrokenLocale|libstdc\+\+|libgcc_s)(\.so[\d.]*)?$"
)


class BuildError(Exception):
    """The build cannot go on; the message says why and what to do."""


def say(message: str) -> None:
    print(f"[build] {message}", file=sys.stderr, flush=True)


def app_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["version"]


def glibc_version() -> str:
    name, version = platform.libc_ver()
    if name != "glibc" or not version:
        raise BuildError("this machine's C library is not glibc; build the bundle on a glibc Linux")
    return version


# --- interpreter ---------------------------------------------------------------------------------

def _stdlib_ignore(directory: str, names: list[str]) -> set[str]:
    at_top = Path(directory).name.startswith("python3")
    skipped = {n for n in names if any(p.match(n) for p in STDLIB_SKIP_PATTERNS)}
    return skipped | ({n for n in names if n in STDLIB_SKIP} if at_top else set())


def copy_interpreter(prefix: Path, target: Path) -> str:
    """Copy the running interpreter's installation (`prefix`, its sys.base_prefix) into `target`;
    return its version. What to copy is read from this interpreter's sysconfig."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise BuildError(f"the Python at {prefix} is built without a shared libpython; use one built with "
                         "--enable-shared (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared)")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    binary = prefix / "bin" / f"python{version}"
    library = Path(sysconfig.get_config_var("LIBDIR")) / sysconfig.get_config_var("INSTSONAME")
    stdlib = prefix / "lib" / f"python{version}"
    for needed in (binary, library, stdlib / "os.py"):
        if not needed.exists():
            raise BuildError(f"{needed} is missing: is {prefix} a complete Python installation?")
    (target / "bin").mkdir(parents=True)
    shutil.copy2(binary, target / "bin" / binary.name)
    for alias in ("python3", "python"):
        (target / "bin" / alias).symlink_to(binary.name)
    (target / "lib").mkdir()
    shutil.copy2(library, target / "lib" / library.name)
    shutil.copytree(stdlib, target / "lib" / stdlib.name, ignore=_stdlib_ignore, symlinks=True)
    (target / "lib" / stdlib.name / "site-packages").mkdir()
    return platform.python_version()


def _elf_files(root: Path):
    """The interpreter, libpython and the standard library's extension modules. Wheels in site-packages
    are left alone: manylinux wheels carry their own libraries and find them themselves (torch preloads
    the CUDA wheels' libraries; libcuda comes from the server's driver), which ldd cannot follow."""
    for path in root.rglob("*"):
        if "site-packages" in path.parts:
            continue
        if path.is_file() and not path.is_symlink() and (".so" in path.name or path.parent == root / "bin"):
            with open(path, "rb") as handle:
                if handle.read(4) == b"\x7fELF":
                    yield path


def carry_shared_libraries(python_dir: Path) -> list[str]:
    """Copy into python/lib every shared library the interpreter needs that glibc does not give."""
    env = dict(os.environ, LD_LIBRARY_PATH=str(python_dir / "lib"))
    carried: list[str] = []
    missing: set[str] = set()
    pending = list(_elf_files(python_dir))
    while pending:
        elf = pending.pop()
        out = subprocess.run(["ldd", str(elf)], capture_output=True, text=True, env=env).stdout
        for line in out.splitlines():
            name, _, rest = line.strip().partition(" => ")
            if not rest or SYSTEM_LIBS.match(name):
                continue
            if rest.startswith("not found"):
                missing.add(f"{name} (needed by {elf.relative_to(python_dir)})")
                continue
            source = Path(rest.split(" (")[0])
            if source.is_relative_to(python_dir) or (python_dir / "lib" / name).exists():
                continue
            shutil.copy2(source.resolve(), python_dir / "lib" / name)
            carried.append(name)
            pending.append(python_dir / "lib" / name)
    if missing:
        raise BuildError("shared libraries not found on this machine: " + ", ".join(sorted(missing)))
    return sorted(carried)


# --- packages ------------------------------------------------------------------------------------

def _pip(requirements: list[str], site: Path, step: str, extra: list[str], hint: str = "") -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(requirements) + "\n")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-warn-script-location",
               "--disable-pip-version-check", "--target", str(site), "-r", handle.name, *extra]
    progress = Progress(step, len(requirements), unit="packages")
    tail: list[str] = []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        tail = (tail + [line.rstrip()])[-40:]
        match = re.match(r"(Collecting|Processing) (\S+)", line)
        if match:
            progress.advance(note=Path(match.group(2)).name)
    os.unlink(handle.name)
    if process.wait() != 0:
        print("\n".join(line for line in tail if "is ignored: it is neither" not in line), file=sys.stderr)
        raise BuildError(f"pip could not install the packages ({step}); its output is above. {hint}".rstrip())
    progress.done()


def install_packages(site: Path, profile: str, torch_index: str, pip_args: list[str],
                     cuda: CudaVariant | None = None) -> tuple[str, str]:
    """Install requirements.lock (and, for gpu, the lock of `cuda`, PyPI's by default) into `site`; return
    torch's version and build ("none" for cpu-lite, which installs the lock without LITE_LEAVES_OUT)."""
    lines = lock_lines(ROOT / "requirements.lock")
    if profile == "cpu-lite":
        kept = [line for line in lines if package_of(line) not in LITE_LEAVES_OUT]
        _pip(kept, site, "install packages", list(pip_args))
        return "none", "none"
    try:
        version = locked_torch_version()
    except LockError as exc:
        raise BuildError(str(exc)) from exc
    if profile == "cpu":
        # '===' matches the version string exactly: the CPU build is X.Y.Z+cpu (CUDA ones: X.Y.Z or X.Y.Z+cuXYZ).
        wanted, expected, hint = f"torch==={version}+cpu", "cpu", ""
    else:
        cuda = cuda or variant(PYPI_VARIANT)
        wanted, expected, hint = cuda.torch_requirement(version), f"cuda{cuda.cuda}", where_to_get(cuda, torch_index)
    _pip([wanted], site, "install torch", index_args(torch_index) + list(pip_args), hint)
    built = torch_build(site)
    if built != expected:
        if profile == "cpu":
            why = "the cpu profile needs a CPU torch", "point pip at the right wheel with --torch-index"
        else:
            why = (f"--cuda {cuda.name} needs a CUDA {cuda.cuda} torch",
                   f"PyPI's torch {version} is not a CUDA {cuda.cuda} build: set PYPI_VARIANT in bundle/cuda.py"
                   if cuda.from_pypi else "point pip at the right wheel with --torch-index")
        raise BuildError(f"{why[0]}, but pip installed a {built} build; {why[1]}")
    rest = [line for line in lines if not line.startswith("torch==")]
    if profile == "gpu":
        rest += lock_lines(cuda.lock_path())
    _pip(rest, site, "install packages", list(pip_args))
    return wanted.removeprefix("torch==="), built


def ensure_cuda_lock(cuda: CudaVariant, torch_index: str, pip_args: list[str]) -> Path:
    """The variant's lock; made now (and written into bundle/, to commit) when this checkout has none yet."""
    path = cuda.lock_path()
    if not path.exists():
        say(f"no {path.name} yet: resolving the CUDA libraries of torch {cuda.name} with pip")
        try:
            pins = make_lock(cuda, torch_index, pip_args, path)
        except LockError as exc:
            raise BuildError(str(exc)) from exc
        say(f"wrote {path} ({len(pins)} packages): commit it, so that later builds install the same")
    return path


def slim_site_packages(site: Path) -> int:
    """Drop test suites, headers and console scripts; return the bytes saved."""
    doomed = [site / "bin"] + [site / p for p in DROP_FROM_SITE]
    for package in DROP_TESTS_UNDER:
        doomed += [p for p in (site / package).rglob("tests") if p.is_dir()]
    saved = 0
    for path in doomed:
        if path.is_dir():
            saved += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            shutil.rmtree(path)
    for pattern in DROP_FILES_FROM_SITE:
        for path in site.glob(pattern):
            saved += path.stat().st_size
            path.unlink()
    return saved


# --- app, model, metadata --------------------------------------------------------------------------

def copy_app(target: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in APP_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore)
        else:
            shutil.copy2(source, target / name)


def bundled_env(top: Path) -> dict[str, str]:
    """The environment start_dpp.sh gives the bundled interpreter, for checks run at build time."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONHOME": str(top / "python"),
            "LD_LIBRARY_PATH": str(top / "python" / "lib"), "PYTHONNOUSERSITE": "1", "LANG": "C.UTF-8"}


def smoke_test(top: Path, profile: str) -> None:
    """Compile the app and import everything the server needs, with the bundled interpreter only."""
    python = str(top / "python" / "bin" / "python3")
    env = bundled_env(top)
    subprocess.run([python, "-m", "compileall", "-q", "-j", "0", "app", "webui.py"], cwd=top, env=env, check=True)
    if profile == "cpu-lite":
        check = ("import sys, importlib.util, ctranslate2, tokenizers, gradio, app.server, app.engines.ct2; "
                 "assert sys.prefix == sys.argv[1], sys.prefix; assert importlib.util.find_spec('torch') is None")
    else:
        check = ("import sys, torch, transformers, gradio, app.server; "
                 "assert sys.prefix == sys.argv[1], sys.prefix; print(torch.__version__)")
    result = subprocess.run([python, "-c", check, str(top / "python")], cwd=top, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"the bundled Python cannot import the app:\n{result.stderr[-3000:]}")


def write_version(top: Path, fields: dict[str, str]) -> None:
    (top / "VERSION").write_text("".join(f"{k}={v}\n" for k, v in fields.items()), "utf-8")


def _files(top: Path) -> list[Path]:
    found = []
    for directory, dirs, names in os.walk(top):
        dirs.sort()
        found += [Path(directory) / n for n in sorted(names)]
    return found


def write_manifest(top: Path) -> int:
    """sha256 of every file (sha256sum's format), MANIFEST itself excepted; return the file count."""
    files = [p for p in _files(top) if p != top / "MANIFEST"]
    progress = Progress("manifest", sum(p.stat().st_size for p in files), unit="bytes")
    lines = []
    for path in files:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
                progress.advance(len(chunk))
        lines.append(f"{digest.hexdigest()}  {path.relative_to(top).as_posix()}\n")
    (top / "MANIFEST").write_text("".join(lines), "utf-8")
    progress.done(f"{len(lines)} files")
    return len(lines)


class _Counting:
    def __init__(self, handle, progress: Progress) -> None:
        self.handle, self.progress = handle, progress

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.progress.advance(len(data))
        return data


def compress(top: Path, tarball: Path, level: int) -> None:
    paths = [top] + [Path(d) / n for d, dirs, files in os.walk(top) for n in sorted(dirs) + sorted(files)]
    progress = Progress("compress", sum(p.lstat().st_size for p in paths if p.is_file() and not p.is_symlink()),
                        unit="bytes")
    partial = tarball.with_name(tarball.name + ".part")
    with tarfile.open(partial, "w:gz", compresslevel=level) as tar:
        for path in sorted(paths):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(top.parent).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as handle:
                    tar.addfile(info, _Counting(handle, progress))
            else:
                tar.addfile(info)
    partial.replace(tarball)
    progress.done()


# --- command -------------------------------------------------------------------------------------

def build(args: argparse.Namespace) -> Path:
    arch = platform.machine()
    if args.cuda is not None and args.profile != "gpu":
        raise BuildError(f"--cuda chooses the CUDA build of torch for --profile gpu; {args.profile} has none")
    cuda = (args.cuda or variant(PYPI_VARIANT)) if args.profile == "gpu" else None
    flavour = f"gpu-{cuda.name}" if cuda else args.profile
    name = args.name or f"dpp-{app_version()}-{flavour}-linux-{arch}"
    out = args.out.resolve()
    tarball = out if out.name.endswith(".tar.gz") else out / f"{name}.tar.gz"
    if tarball.exists() and not args.force:
        raise BuildError(f"{tarball} already exists; pass --force to replace it")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    glibc = glibc_version()
    try:
        inspect_model_dir(args.model_dir)  # refuse a wrong directory now, not after minutes of installing
    except ModelUnavailable as exc:
        raise BuildError(exc.message) from exc
    torch_index = args.torch_index if args.torch_index is not None else (
        CPU_TORCH_INDEX if args.profile == "cpu" else cuda.torch_index() if cuda else "")
    if cuda:
        ensure_cuda_lock(cuda, torch_index, args.pip_arg)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=args.work_dir or tarball.parent))
    top = work / name
    try:
        say(f"staging in {top}")
        top.mkdir()
        python_version = copy_interpreter(Path(sys.base_prefix), top / "python")
        site = top / "python" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        torch_version, built = install_packages(site, args.profile, torch_index, args.pip_arg, cuda)
        say(f"dropped {human_size(slim_site_packages(site))} of tests, headers and scripts")
        carried = carry_shared_libraries(top / "python")
        say(f"carried {len(carried)} shared libraries: {', '.join(carried) or 'none'}")
        copy_app(top)
        if args.profile == "cpu-lite":
            convert_ct2(args.model_dir, top / MODEL_SUBDIR / CT2_DIR_NAME, quantization="int8")
        else:
            convert(args.model_dir, top / MODEL_SUBDIR)
        smoke_test(top, args.profile)
        write_version(top, {
            "app_version": app_version(), "python": python_version, "torch": torch_version, "torch_build": built,
            "cuda_variant": cuda.name if cuda else "none", "driver_min": cuda.driver_min if cuda else "none",
            "profile": args.profile, "glibc": glibc, "arch": arch,
            "build_date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "model_id": args.model_id, "model_dtype": "int8-ctranslate2" if args.profile == "cpu-lite" else "float16",
        })
        write_manifest(top)
        compress(top, tarball, args.compress_level)
    finally:
        if args.keep_stage:
            say(f"staging folder kept: {top}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return tarball


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bundle.build",
        description="Build an offline tarball of dpp: Python, the packages of requirements.lock, FP16 weights and "
                    "the app under one folder. On the target: tar -xzf NAME.tar.gz && cd NAME && ./start_dpp.sh",
    )
    p.add_argument("--model-dir", type=Path, required=True,
                   help="local model directory (ModelScope or Hugging Face layout; see python -m bundle.fetch)")
    p.add_argument("--profile", choices=PROFILES, required=True,
                   help="what the bundle runs on: cpu (CPU torch, FP16 weights; runs anywhere), gpu (CUDA torch, "
                        "see --cuda; the launcher checks the NVIDIA driver) or cpu-lite (CTranslate2 int8 "
                        "weights and no torch: smallest and fastest on CPU)")
    p.add_argument("--out", type=Path, default=ROOT / "dist",
                   help="a folder for the tarball, or a path ending in .tar.gz (default: dist/)")
    p.add_argument("--name", help="top folder and tarball name (default: dpp-VERSION-PROFILE-linux-ARCH)")
    p.add_argument("--model-id", default=MODEL_ID, help=f"model id recorded in VERSION (default: {MODEL_ID})")
    p.add_argument("--cuda", type=variant, metavar="cuXYZ",
                   help=f"for --profile gpu: the CUDA build of torch, as PyTorch names it (default {PYPI_VARIANT}, "
                        "PyPI's torch: NVIDIA driver 580.65.06+; cu126 or cu128 from the PyTorch index: driver "
                        "525.60.13+). Its CUDA libraries are pinned in bundle/gpu-cuXYZ.lock, made on first use")
    p.add_argument("--torch-index",
                   help=f"extra package index for torch (default for cpu: {CPU_TORCH_INDEX}, skipped when "
                        f"unreachable; for gpu: none for {PYPI_VARIANT}, else https://download.pytorch.org/whl/cuXYZ)"
                        "; '' for none")
    p.add_argument("--pip-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for pip, repeatable (e.g. --pip-arg=--index-url=https://mirror/simple)")
    p.add_argument("--compress-level", type=int, default=6, choices=range(0, 10), metavar="0-9",
                   help="gzip level (default 6; 1 is much faster and a little bigger)")
    p.add_argument("--work-dir", type=Path, help="where to stage the folder (default: next to the tarball)")
    p.add_argument("--keep-stage", action="store_true", help="keep the staged folder after packing")
    p.add_argument("--force", action="store_true", help="replace an existing tarball")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        tarball = build(args)
    except (BuildError, ConvertError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Bundle ready: {tarball} ({human_size(tarball.stat().st_size)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
