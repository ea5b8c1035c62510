"""Run one `ctsft.steps.<step>` from a Snakemake rule: the rule's params name the step and its
Hydra overrides; its named inputs and outputs become `io.<name>=<path>` overrides.

The job is the same as typing, from the repository root,

    python -m ctsft.steps.<step> <params.overrides...> ++io.<name>=<path> ... threads=<n>

which the log file records on its first line, so any job can be rerun by hand.
"""

import importlib
import logging
import re
import shlex
import sys
import traceback

from ctsft.config import compose
from ctsft.errors import CtsftError

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive


def hydra_quote(value: str) -> str:
    """A Hydra override value that is read as this exact string (paths may hold `,` `=` or spaces)."""
    value = str(value)
    if re.fullmatch(r"[\w./+-]+", value) and not re.fullmatch(r"[\d.+-]+|true|false|null", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def io_overrides(named: dict[str, str]) -> list[str]:
    """`++io.<name>=<path>`: `++` adds the key when config/hydra/ctsft.yaml does not declare it."""
    return [f"++io.{key}={hydra_quote(path)}" for key, path in named.items()]


def build_overrides() -> tuple[str, list[str]]:
    step = snakemake.params.step
    overrides = [str(o) for o in snakemake.params.overrides]
    overrides += io_overrides(dict(snakemake.input.items()))
    overrides += io_overrides(dict(snakemake.output.items()))
    overrides.append(f"threads={snakemake.threads}")
    return step, overrides


def main() -> int:
    step, overrides = build_overrides()
    with open(snakemake.log[0], "w") as log_file:
        # Everything the step prints or logs goes to the rule's log file.
        sys.stdout = sys.stderr = log_file
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(name)s: %(message)s",
            stream=log_file,
            force=True,
        )
        print("$ python -m ctsft.steps." + step + " " + shlex.join(overrides), flush=True)
        try:
            module = importlib.import_module(f"ctsft.steps.{step}")
            cfg = compose(overrides)
            from ctsft.cli import setup

            setup(cfg)
            module.run(cfg)
        except CtsftError as err:
            print(f"error: {err}", file=log_file, flush=True)
            print(f"error: {err} (log: {snakemake.log[0]})", file=sys.__stderr__, flush=True)
            return 2
        except Exception:
            traceback.print_exc(file=log_file)
            print(
                f"error: step {step} failed, traceback in {snakemake.log[0]}",
                file=sys.__stderr__,
                flush=True,
            )
            return 1
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    return 0


if __name__ == "__main__":
    code = main()
    if code:
        raise SystemExit(code)
