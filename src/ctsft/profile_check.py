"""A cluster profile whose values still hold their `<...>` placeholders is caught before a job.

workflow/profiles/slurm*/config.yaml ship `slurm_partition: "<partition>"` and
`slurm_account: "<account>"` for the user to fill in. Left in, the dry run used to say nothing and
the submission went out as `sbatch -p '<partition>' -A '<account>'` (accepted as is by a cluster
without accounting). workflow/rules/common.smk calls `check_profile` with the resources Snakemake
settled on (profile, then command line: `--default-resources` replaces the profile's block): a
submission stops with one line naming the key and the profile file; a dry run prints the same
line as a warning (a dry run is how a user checks a profile before filling it in).

No torch, no Snakemake import: the caller passes what it read from `workflow.resource_settings`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

PLACEHOLDER = re.compile(r"^<[^<>]*>$")
_DRY_RUN = re.compile(r"^(--dry-run|--dryrun|--dry_run|-[a-zA-Z]*n[a-zA-Z]*)$")


def profile_file(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> str:
    """The profile's config.yaml as the command line names it (`--workflow-profile`,
    `--profile`, $SNAKEMAKE_PROFILE), for the message."""
    env = os.environ if environ is None else environ
    folder = env.get("SNAKEMAKE_PROFILE")
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in ("--workflow-profile", "--profile"):
            folder = value if eq else (argv[i + 1] if i + 1 < len(argv) else folder)
    return str(Path(folder) / "config.yaml") if folder else "the profile"


def placeholders(
    default_args: Iterable[str], set_resources: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, str]]:
    """(where, value) of every resource value that is still a `<...>` placeholder: `where` is
    `default-resources: <name>` or `set-resources: <rule>: <name>`."""
    found = []
    for item in default_args:
        name, _, value = str(item).partition("=")
        if PLACEHOLDER.match(value.strip().strip("'\"")):
            found.append((f"default-resources: {name}", value.strip().strip("'\"")))
    for rule, resources in set_resources.items():
        for name, resource in resources.items():
            value = str(getattr(resource, "raw", resource)).strip().strip("'\"")
            if PLACEHOLDER.match(value):
                found.append((f"set-resources: {rule}: {name}", value))
    return found


def is_dry_run(argv: Sequence[str]) -> bool:
    return any(_DRY_RUN.match(arg) for arg in argv[1:])


def check_profile(
    default_args: Iterable[str],
    set_resources: Mapping[str, Mapping[str, Any]],
    argv: Sequence[str],
    error: Callable[[str], Exception],
    warn: Callable[[str], None],
) -> None:
    """Raise `error(one line)` for a placeholder left in the profile (warn in a dry run)."""
    found = placeholders(default_args, set_resources)
    if not found:
        return
    where, value = found[0]
    fix = (
        "or delete that line if your cluster has no accounts"
        if where.endswith("slurm_account")
        else "or give it on the command line (--default-resources / --set-resources)"
    )
    message = (
        f"profile {profile_file(argv)}: {where} is still the placeholder {value!r}: fill it in, "
        f"{fix}"
    )
    if len(found) > 1:
        more = ", ".join(w for w, _ in found[1:4]) + (", ..." if len(found) > 4 else "")
        message += f" ({len(found) - 1} more: {more})"
    if is_dry_run(argv):
        warn(f"warning: {message}")
        return
    raise error(message)
