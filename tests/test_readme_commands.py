"""Every shell command of README.md and docs/workflow.md (their ```bash blocks) still works.

Snakemake commands are dry-run (`-n`, nothing downloaded, results and models redirected into a
temporary folder); step entry points get `--help` and `--print-config` with the README's
overrides; make targets `make -n`; pytest commands must name tests and markers that exist; pip
commands must name extras that exist. A command that uses the SLURM executor or profile is
dry-run only when snakemake-executor-plugin-slurm is installed. A command of a kind this file does
not know fails, so a new README command gets a check too.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCS = ("README.md", "docs/workflow.md")
DEFAULT_CONFIGFILE = "config/config.yaml"  # the Snakefile's `configfile:`


def bash_commands(doc: str) -> list[tuple[str, str]]:
    """(where, command) of every command in the ```bash blocks of `doc` (continuations joined)."""
    out = []
    in_block = False
    pending, start = "", 0
    for number, line in enumerate((REPO / doc).read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            in_block = line.strip() == "```bash" if not in_block else False
            continue
        if not in_block:
            continue
        if not pending:
            start = number
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        command = pending.split(" | ")[0]  # a pipe's first command is the one that must work
        if shlex.split(command, comments=True):
            out.append((f"{doc}:{start}", command))
        pending = ""
    return out


def unique_commands() -> list[tuple[str, list[str]]]:
    seen: dict[tuple[str, ...], str] = {}
    for doc in DOCS:
        for where, command in bash_commands(doc):
            seen.setdefault(tuple(shlex.split(command, comments=True)), where)
    return [(where, list(tokens)) for tokens, where in seen.items()]


COMMANDS = unique_commands()


def run_step(step, argv: list[str]) -> int:
    from ctsft.cli import run_step as run_step_cli

    return run_step_cli(step, argv)


def run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "HTTP_PROXY": "http://127.0.0.1:9",  # nothing may be downloaded
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def assert_ok(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, (
        f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


def _program(token: str) -> str:
    return Path(token).name  # .venv/bin/snakemake -> snakemake


# ---------------------------------------------------------------- snakemake
def uses_slurm(tokens: list[str]) -> bool:
    for flag, value in zip(tokens, tokens[1:], strict=False):
        if flag == "--executor" and value == "slurm":
            return True
        if flag in ("--profile", "--workflow-profile") and "slurm" in value:
            return True
    return False


def config_items(tokens: list[str]) -> tuple[list[str], list[str]]:
    """(the command without its --config items, those items)."""
    rest, items, inside = [], [], False
    for token in tokens:
        if token == "--config":
            inside = True
            continue
        if inside and not token.startswith("-"):
            items.append(token)
            continue
        inside = False
        rest.append(token)
    return rest, items


def redirected(tokens: list[str], tmp: Path) -> list[str]:
    """The command as a dry run whose results and models land in `tmp` (targets follow)."""
    rest, items = config_items(tokens[1:])
    configfile = (
        rest[rest.index("--configfile") + 1] if "--configfile" in rest else DEFAULT_CONFIGFILE
    )
    results = yaml.safe_load((REPO / configfile).read_text())["results_dir"]
    kept = []
    for item in items:
        key, _, value = item.partition("=")
        if key == "results_dir":
            results = value
        elif key != "models_dir":
            kept.append(item)
    args, skip = [], False
    for token in rest:
        if skip:
            skip = False
            continue
        if token == "--report":  # reports are built and checked by tests/test_workflow.py
            skip = True
            continue
        if token.startswith(results.rstrip("/") + "/"):
            token = f"{tmp}/r/{token[len(results.rstrip('/')) + 1 :]}"
        args.append(token)
    return [
        str(BIN / "snakemake"), *args, "-n", "--quiet", "rules",
        "--config", *kept, f"results_dir={tmp}/r", f"models_dir={tmp}/m",
    ]  # fmt: skip


SNAKEMAKE = [(w, t) for w, t in COMMANDS if _program(t[0]) == "snakemake"]


@pytest.mark.parametrize("where, tokens", SNAKEMAKE, ids=[w for w, _ in SNAKEMAKE])
def test_snakemake_command_dry_runs(where, tokens, tmp_path):
    if uses_slurm(tokens) and importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')")
    proc = run(redirected(tokens, tmp_path))
    assert_ok(proc, f"{where}: {shlex.join(tokens)}")
    assert not (tmp_path / "m").exists() and not (tmp_path / "r").exists()  # a plan, no download


# ---------------------------------------------------------------- python -m entry points
PYTHON_ALL = [(w, t) for w, t in COMMANDS if _program(t[0]).startswith("python")]
EXPORT = [(w, t) for w, t in PYTHON_ALL if t[1:3] == ["-m", "ctsft.export"]]
PYTHON = [c for c in PYTHON_ALL if c not in EXPORT]


def run_module(module: str, argv: list[str], capsys) -> str:
    """`python -m module *argv` in this process (no second torch import); its stdout."""
    entry = importlib.import_module(f"{module}.__main__" if module == "ctsft.models" else module)
    try:
        code = entry.main(argv) if hasattr(entry, "main") else run_step(entry.run, argv)
    except SystemExit as done:
        code = done.code or 0
    captured = capsys.readouterr()
    assert code == 0, (
        f"python -m {module} {shlex.join(argv)} failed ({code}): {captured.err[-2000:]}"
    )
    return captured.out


@pytest.mark.parametrize("where, tokens", PYTHON, ids=[w for w, _ in PYTHON])
def test_python_entry_point_has_help_and_composes(where, tokens, capsys):
    assert tokens[1] == "-m", f"{where}: run entry points as python -m <module>"
    module, args = tokens[2], tokens[3:]
    prefix = []
    if module == "ctsft.models":  # `python -m ctsft.models info ...`
        assert args[:1] == ["info"], f"{where}: python -m ctsft.models takes `info`"
        prefix, args = ["info"], args[1:]
    else:
        assert module.startswith("ctsft.steps."), f"{where}: unknown entry point {module}"
    out = run_module(module, [*prefix, "--help"], capsys)
    assert out.startswith("usage: python -m "), out
    out = run_module(module, [*prefix, *args, "--print-config"], capsys)
    assert yaml.safe_load(out)["model"]["name"], out


@pytest.mark.parametrize("where, tokens", EXPORT, ids=[w for w, _ in EXPORT])
def test_export_command_dry_runs_on_a_lean_checkpoint(where, tokens, tiny_thetas, tmp_path, capsys):
    """The README's export, dry-run on a tiny CT-SFT checkpoint standing in for its path."""
    from test_export import lean_checkpoint

    from ctsft.data import load_split
    from ctsft.export import main

    out = run_module("ctsft.export", ["--help"], capsys)
    assert out.startswith("usage: python -m ctsft.export"), out
    checkpoint, rest = tokens[3], tokens[4:]
    assert checkpoint.endswith("/checkpoint"), f"{where}: export a transfer's checkpoint folder"
    rows = load_split("nusax", "ind", "train").to_list()[:8]
    lean = lean_checkpoint(tiny_thetas["tiny_bert"], "ctsft", rows, tmp_path / "checkpoint")
    assert main([str(lean), *rest, "--dry-run"]) == 0
    assert "parameters (" in capsys.readouterr().out


# ---------------------------------------------------------------- make, pytest, pip
OTHERS = [(w, t) for w, t in COMMANDS if (w, t) not in SNAKEMAKE and (w, t) not in PYTHON_ALL]


PYPROJECT = (REPO / "pyproject.toml").read_text()


def check_pytest(where: str, args: list[str]) -> None:
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "-m":
            for name in set(re.findall(r"\w+", value)) - {"not", "and", "or"}:
                assert f'"{name}:' in PYPROJECT, f"{where}: marker {name} is not registered"
    for arg in args:
        if arg.startswith("tests/"):
            file, _, test = arg.partition("::")
            assert (REPO / file).is_file(), f"{where}: {file} does not exist"
            if test:
                assert f"def {test}(" in (REPO / file).read_text(), f"{where}: no test {arg}"


def check_pip(where: str, args: list[str]) -> None:
    extras = PYPROJECT.split("[project.optional-dependencies]", 1)[-1].split("\n[", 1)[0]
    for arg in args:
        match = re.fullmatch(r"\.\[([\w,-]+)\]", arg)
        for extra in match.group(1).split(",") if match else []:
            assert re.search(rf"^{extra}\s*=", extras, re.M), f"{where}: no extra [{extra}]"


@pytest.mark.parametrize("where, tokens", OTHERS, ids=[w for w, _ in OTHERS])
def test_other_command_is_valid(where, tokens):
    program, args = _program(tokens[0]), tokens[1:]
    if program == "make":
        assert_ok(run(["make", "-n", *args]), f"{where}: make -n {shlex.join(args)}")
    elif program == "pytest":
        check_pytest(where, args)
    elif program == "pip":
        assert args[:1] == ["install"], f"{where}: unexpected pip command"
        check_pip(where, args)
    else:
        pytest.fail(
            f"{where}: no check for `{shlex.join(tokens)}`: add one to {Path(__file__).name}"
        )


def test_the_readme_commands_are_found():
    """The extraction itself: the README's main commands are among those checked."""
    flat = [" ".join(t) for _, t in COMMANDS]
    assert "make reproduce" in flat and "make test" in flat
    assert any("ks=[5,0.1]" in c and "seeds=[0,1,2,3]" in c for c in flat)
    assert any(c.startswith(".venv/bin/python -m ctsft.steps.score_heads") for c in flat)
    assert len(SNAKEMAKE) >= 8
