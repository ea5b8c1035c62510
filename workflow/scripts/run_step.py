# ruff: noqa: E402  (the start-up clock starts before the imports it measures)
"""Run one `ctsft.steps.<step>` from a Snakemake rule: the rule's params name the step and its
Hydra overrides; its named inputs and outputs become `io.<name>=<path>` overrides.

The job is the same as typing, from the repository root,

    python -m ctsft.steps.<step> <params.overrides...> ++io.<name>=<path> ... threads=<n>

which the log file records on its first line, so any job can be rerun by hand.

A rule with `params.runs` (a list of override lists, each with its own io.* paths) runs the step
once per list in this one process, each recorded on its own `$ python -m ...` line: the
start-up and the imports are paid once (the `evaluate` rule scores every method of a pair and
seed this way). The job fails, and Snakemake removes all its outputs, if any run fails.
"""

import time

T_SCRIPT = time.monotonic()  # before the imports below: their cost is part of the start-up

import importlib
import logging
import shlex
import sys
import traceback

from ctsft.cli import process_age, resource_message, setup
from ctsft.config import compose
from ctsft.errors import CtsftError
from ctsft.workflow_config import hydra_quote

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive


def io_overrides(named: dict[str, str]) -> list[str]:
    """`++io.<name>=<path>`: `++` adds the key when config/hydra/ctsft.yaml does not declare it."""
    return [f"++io.{key}={hydra_quote(path)}" for key, path in named.items()]


def build_runs() -> tuple[str, list[list[str]]]:
    """The step and the overrides of each of its runs: `params.runs`, else one run whose io.*
    are the rule's named inputs and outputs."""
    step = snakemake.params.step
    common = [str(o) for o in snakemake.params.overrides]
    runs = getattr(snakemake.params, "runs", None)
    if runs is None:
        io = io_overrides(dict(snakemake.input.items()))
        runs = [io + io_overrides(dict(snakemake.output.items()))]
    return step, [common + [str(o) for o in run] + [f"threads={snakemake.threads}"] for run in runs]


def _fault(err: Exception, step: str, log_file) -> int:
    """Traceback to the log; one line on stderr: the resource fault (disk full, read-only,
    permission, out of memory, see ctsft.cli.resource_message) or where the traceback is."""
    traceback.print_exc(file=log_file)
    message = resource_message(err)
    if message is None:
        print(
            f"error: step {step} failed, traceback in {snakemake.log[0]}",
            file=sys.__stderr__,
            flush=True,
        )
        return 1
    print(f"error: {message}", file=log_file, flush=True)
    print(f"error: {message} (log: {snakemake.log[0]})", file=sys.__stderr__, flush=True)
    return 2


def main() -> int:
    before_script = process_age() - (time.monotonic() - T_SCRIPT)
    step, runs = build_runs()
    with open(snakemake.log[0], "w") as log_file:
        # Everything the step prints or logs goes to the rule's log file.
        sys.stdout = sys.stderr = log_file
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(name)s: %(message)s",
            stream=log_file,
            force=True,
        )
        try:
            module = importlib.import_module(f"ctsft.steps.{step}")
            t_imported = time.monotonic()
            for i, overrides in enumerate(runs):
                print("$ python -m ctsft.steps." + step + " " + shlex.join(overrides), flush=True)
                t_start = time.monotonic()
                cfg = compose(overrides)
                setup(cfg)
                t_composed = time.monotonic()
                module.run(cfg)
                logging.getLogger("ctsft.timing").info(
                    "start-up %.1f s (interpreter and Snakemake preamble %.1f s, imports %.1f s, "
                    "config %.1f s), step %.1f s",
                    (t_composed - T_SCRIPT + before_script) if i == 0 else 0.0,
                    before_script if i == 0 else 0.0,
                    (t_imported - T_SCRIPT) if i == 0 else 0.0,
                    t_composed - t_start,
                    time.monotonic() - t_composed,
                )
        except CtsftError as err:
            print(f"error: {err}", file=log_file, flush=True)
            print(f"error: {err} (log: {snakemake.log[0]})", file=sys.__stderr__, flush=True)
            return 2
        except Exception as err:  # a resource fault as one line; anything else: its traceback
            return _fault(err, step, log_file)
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    return 0


if __name__ == "__main__":
    code = main()
    if code:
        raise SystemExit(code)
