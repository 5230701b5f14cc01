"""The README's examples work as written against a real server, and its flag table is complete."""

import re
import subprocess
import sys
from pathlib import Path

from app.settings import env_name, setting_fields
from tests.conftest import ROOT, server_env

README = (Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
KEYED = [(lang, code) for lang, code in BLOCKS if "API_KEY" in code]  # run against a keyed server (test_auth.py)
BLOCKS = [block for block in BLOCKS if block not in KEYED]


def _against(server, code: str) -> str:
    return code.replace("http://127.0.0.1:7860", server.url)


def test_the_first_lines_give_the_two_commands():
    head = "\n".join(README.splitlines()[:6])
    assert "./start_dpp.sh" in head
    assert "./start_dpp.sh --setup-only --dev && .venv/bin/python -m pytest" in head


def test_the_ci_script_runs_the_readme_test_command():
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "./start_dpp.sh --setup-only --dev && .venv/bin/python -m pytest" in ci


def test_python_examples_run_as_written(live_server, tmp_path):
    examples = [code for lang, code in BLOCKS if lang == "python"]
    assert len(examples) == 3
    for code in examples:
        result = subprocess.run([sys.executable, "-c", _against(live_server, code)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        if "/job_submit" in code:  # the job finished both rows, and its result was downloaded
            assert "\ndone 2 {" in result.stdout and result.stdout.rstrip().endswith(".xlsx")
        else:
            assert "[" in result.stdout


def test_curl_examples_run_as_written(live_server):
    curl = next(code for lang, code in BLOCKS if lang == "bash" and "curl" in code)
    result = subprocess.run(["bash", "-c", "set -e\n" + _against(live_server, curl)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"status":"ready"' in result.stdout
    assert '"augmented_texts"' in result.stdout and '"results"' in result.stdout


def test_the_file_job_examples_run_as_written(live_server, tiny_models, tmp_path):
    rest = next(code for lang, code in BLOCKS if lang == "bash" and "/jobs" in code)
    done = subprocess.run(["bash", "-c", "set -e\n" + _against(live_server, rest)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert '"state":"done"' in done.stdout and '"rows_short"' in done.stdout
    bigger = (tmp_path / "bigger.csv").read_text("utf-8-sig").splitlines()
    assert bigger[0].startswith("评论,情感,编号,source_row,variant") and len(bigger) >= 3

    cli = next(code for lang, code in BLOCKS if lang == "bash" and "-m app.jobs" in code)
    cli = cli.replace(".venv/bin/python", sys.executable)
    env = server_env(DPP_MODEL_DIR=str(tiny_models["huggingface"]), DPP_DATA_DIR=str(tmp_path / "data"),
                     DPP_LOG_DIR=str(tmp_path / "logs"), PYTHONPATH=str(ROOT))
    done = subprocess.run(["bash", "-c", "set -e\n" + cli], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "bigger.xlsx").stat().st_size > 0 and (tmp_path / "bigger.report.json").exists()
    labelled = (tmp_path / "labelled.jsonl").read_text("utf-8").splitlines()
    assert len(labelled) == 2 and all('"predicted_label"' in line for line in labelled)


def test_every_setting_is_documented_with_its_flag_and_variable():
    for f in setting_fields():
        assert f.metadata["secret"] or "--" + f.name.replace("_", "-") in README, f.name
        assert env_name(f.name) in README, f.name
