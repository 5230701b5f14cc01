"""Dependencies point down: webui -> server -> (api, ui) -> jobs -> service -> engines."""

import ast
from pathlib import Path

import app.engines
from app import service

APP = Path(__file__).resolve().parent.parent / "app"
# The surfaces: the REST routes and their schema, the page and the Gradio API.
SURFACES = [APP / "api.py", APP / "api_errors.py", APP / "api_jobs.py", APP / "openapi.py",
            *sorted((APP / "ui").glob("*.py"))]
# File jobs: shared by every surface, so they know none; only the entry points load engines: the CLI (like
# server.py) and the Ray actor, which runs in a process of its own on a cluster's node.
JOBS = sorted(path for path in (APP / "jobs").glob("*.py") if path.name not in ("cli.py", "__main__.py", "actor.py"))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_ui_and_api_never_import_engines_nor_the_batcher():
    for path in SURFACES:
        assert not any(name.startswith(("app.engines", "app.batcher")) for name in _imports(path)), path


def test_jobs_reach_the_model_only_through_the_service_and_know_no_surface():
    for path in JOBS:
        imports = _imports(path)
        assert not any(name.startswith(("app.engines", "app.batcher", "app.api", "app.ui")) for name in imports), path
        assert not {"fastapi", "gradio", "starlette"} & {name.split(".")[0] for name in imports}, path


def test_engines_know_nothing_of_http_or_the_page():
    for path in (APP / "engines").glob("*.py"):
        assert not {"fastapi", "gradio", "starlette", "app.service", "app.api", "app.ui"} & _imports(path), path


def test_torch_is_imported_only_by_the_hf_engine():
    """hf.py, its decoding loop and the loop's check at load; and the loop only through hf.py, so serving
    without torch stays possible."""
    importers = {path.name for path in APP.rglob("*.py") if "torch" in {n.split(".")[0] for n in _imports(path)}}
    assert importers <= {"hf.py", "fast_decode.py", "decoder_check.py"}
    loop_users = {path.name for path in APP.rglob("*.py")
                  if "app.engines.fast_decode" in _imports(path) or "fast_decode" in path.read_text("utf-8")}
    assert loop_users <= {"hf.py", "fast_decode.py", "decoder_check.py"}


def test_service_is_the_only_way_to_an_engine():
    assert "app.engines" in _imports(Path(service.__file__))


def test_engines_package_exports_the_protocol_and_the_loader_only():
    assert app.engines.__all__ == ["Engine", "engine_loaders", "engines_to_load", "load_engine"]
