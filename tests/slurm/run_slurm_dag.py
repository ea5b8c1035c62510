#!/usr/bin/env python3
"""Run the tiny DAG through a real SLURM controller and compare it with a local run.

    .venv/bin/python tests/slurm/run_slurm_dag.py [--keep]

What it does (as root, on a Debian machine; tests/test_slurm_integration.py runs it in CI):
1. installs `slurm-wlm munge` with apt-get if the daemons are missing (no service is started);
2. writes a slurm.conf for one node on 127.0.0.1 (this host's name, its CPUs, no accounting,
   no slurmdbd) and a munge key into a temporary folder, and starts munged, slurmctld and slurmd
   from there, in the foreground, so it knows their PIDs;
3. runs config/tiny.yaml through workflow/profiles/slurm-cpu (partition given on the command
   line, no account), the same again with job grouping (`--profile workflow/profiles/grouped`:
   each transfer -> evaluate -> mechanism chain in group `chain`, 4 chains per sbatch job) and,
   at the same time, the same config locally with the same threads (1 per job, `--cores 1`; the
   SLURM runs mostly wait for their polls);
4. checks that every non-local job went through sbatch (slurmctld log and squeue), that each
   job ran the venv's Python, that the DAGs finished, that the grouped run submitted fewer sbatch
   jobs, and that the tables of all three runs are byte-identical;
5. always: cancels what is left in the queue, stops the daemons it started (by PID) and removes
   the temporary folder (--keep leaves it, with all logs, for a look).

Every wait is bounded; the whole run has a budget (CTSFT_SLURM_BUDGET_S, default 780 s). The
last line is a one-line summary: wall time, sbatch jobs (ungrouped and grouped), whether the
tables are identical.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SNAKEMAKE = VENV_BIN / "snakemake"
PROFILE = "workflow/profiles/slurm-cpu"
GROUPED = "workflow/profiles/grouped"  # --profile beside the workflow profile: job grouping
PARTITION = "ctsft"
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NEEDED = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "srun")
STATUS_POLL_S = 2  # plugin's first poll and the poll after a job finished (default 40)
MIN_JOB_AGE_S = 600  # squeue shows finished jobs this long: well above any poll interval
LOCAL_RULES = ("prepare_model", "tables", "figures", "mechanism_report", "all")

START = time.monotonic()


class Failure(Exception):
    """What went wrong, in a sentence for the test log."""


def log(message: str) -> None:
    print(f"[{time.monotonic() - START:6.1f}s] {message}", flush=True)


def which(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SBIN_PATH}")


def run(cmd: list[str], timeout: float, what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run `cmd` to completion within `timeout` seconds; a Failure says `what` went wrong."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as err:
        raise Failure(f"{what}: no answer within {timeout:.0f} s ({' '.join(cmd)})") from err
    if proc.returncode != 0:
        raise Failure(
            f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return proc


def wait_for(check, timeout: float, what: str, interval: float = 0.5):
    """Poll `check()` until it returns a true value; Failure after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (subprocess.SubprocessError, OSError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise Failure(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------- installation
def ensure_slurm() -> None:
    missing = [n for n in NEEDED if not which(n)]
    if not missing:
        return
    if os.geteuid() != 0 or not which("apt-get"):
        raise Failure(
            f"SLURM not installed ({', '.join(missing)}) and no root apt-get to install it"
        )
    log(f"installing slurm-wlm munge (missing: {', '.join(missing)})")
    # A policy-rc.d that says "no" keeps the packages from starting their own daemons.
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\n# written by ctsft tests/slurm/run_slurm_dag.py\nexit 101\n")
        policy.chmod(0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        run(["apt-get", "update", "-qq"], 240, "apt-get update", env=env)
        run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "slurm-wlm", "munge"],
            300,
            "apt-get install slurm-wlm munge",
            env=env,
        )
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    missing = [n for n in NEEDED if not which(n)]
    if missing:
        raise Failure(f"installed slurm-wlm and munge, still missing: {', '.join(missing)}")


# ---------------------------------------------------------------- the cluster
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def largest_mem_request() -> int:
    """The largest mem_mb any rule asks for (the node must offer at least that)."""
    text = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    return max([int(m) for m in re.findall(r"mem_mb=(\d+)", text)] or [1000])


def slurm_conf(root: Path, node: str) -> str:
    cpus = os.cpu_count() or 1
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    # config_overrides: slurmd takes CPUs/RealMemory from here, so a small CI box still offers the
    # largest request; CR_CPU: memory is not consumed (the tiny model needs ~0.5 GB, not 8 GB), so
    # as many jobs run at once as there are CPUs.
    real_memory = max(mem_mb, largest_mem_request())
    return f"""\
# one-node test cluster of tests/slurm/run_slurm_dag.py (no slurmdbd, no accounting)
ClusterName=ctsft-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge={MIN_JOB_AGE_S}
KillWait=5
MailProg=/bin/true
InactiveLimit=0
SlurmdTimeout=120
NodeName={node} NodeAddr=127.0.0.1 NodeHostname={node} CPUs={cpus} RealMemory={real_memory} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    """munged, slurmctld and slurmd of one node, started in the foreground from `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.conf = root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self) -> None:
        for sub in ("munge", "state", "spool", "run", "log"):
            (self.root / sub).mkdir(mode=0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        self.conf.write_text(slurm_conf(self.root, self.node))
        # The jobstep plugin strips SLURM_* (SLURM_CONF too) from the environment of the `srun`
        # it runs inside each job, so srun would look for /etc/slurm/slurm.conf, which a real
        # cluster node has. This srun, first on PATH, points it at our slurm.conf instead.
        wrapper = self.root / "bin" / "srun"
        wrapper.parent.mkdir()
        wrapper.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {which("srun")} "$@"\n')
        wrapper.chmod(0o755)
        self.env["PATH"] = f"{wrapper.parent}:{self.env.get('PATH', '')}"
        munge = self.root / "munge"
        self._spawn(
            "munged",
            [
                which("munged"),
                "--foreground",
                "--force",
                f"--socket={munge}/munge.socket",
                f"--key-file={key}",
                f"--pid-file={munge}/munged.pid",
                f"--log-file={self.root}/log/munged.log",
                f"--seed-file={munge}/munged.seed",
            ],
        )
        wait_for(lambda: (munge / "munge.socket").exists(), 20, "munged's socket")
        self._spawn("slurmctld", [which("slurmctld"), "-D", "-c", "-f", str(self.conf)])
        wait_for(
            lambda: "UP" in self.cmd(["scontrol", "ping"], 10).stdout,
            30,
            "slurmctld (scontrol ping)",
        )
        self._spawn("slurmd", [which("slurmd"), "-D", "-f", str(self.conf), "-N", self.node])
        state = wait_for(self._node_ready, 60, f"node {self.node} to be idle (sinfo)")
        log(f"cluster up: node {self.node} {state}, {os.cpu_count()} CPUs, partition {PARTITION}")

    def _node_ready(self) -> str | None:
        state = self.cmd(["sinfo", "-h", "-n", self.node, "-o", "%T"], 10).stdout.strip()
        return state if state.startswith("idle") else None

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.root / "log" / f"{name}.out", "w")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        self.procs.append((name, proc))
        time.sleep(0.3)
        if proc.poll() is not None:
            raise Failure(f"{name} exited at once ({proc.returncode}):\n{self.tail(name + '.out')}")
        log(f"{name} started, pid {proc.pid}")

    def cmd(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            [which(args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.root / "log" / name
        if not path.exists():
            return f"({path} missing)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Cancel what is still queued, then stop the daemons in reverse order, by PID."""
        if any(name == "slurmctld" and p.poll() is None for name, p in self.procs):
            try:
                self.cmd(["scancel", "--full", "--partition", PARTITION], 15)
                wait_for(
                    lambda: not self.cmd(["squeue", "-h", "-t", "PD,R,CG"], 10).stdout.strip(),
                    30,
                    "cancelled jobs to leave the node",
                )
            except (Failure, subprocess.SubprocessError, OSError) as err:
                log(f"warning: could not empty the queue: {err}")
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            log(f"{name} (pid {proc.pid}) stopped")
        self.procs.clear()

    # ------------------------------------------------------------ what the controller saw
    def submitted_job_ids(self) -> list[str]:
        text = (self.root / "log" / "slurmctld.log").read_text(errors="replace")
        return re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", text)

    def job_states(self) -> dict[str, str]:
        out = self.cmd(["squeue", "-h", "--states=all", "-o", "%i|%T"], 10).stdout
        return dict(line.split("|", 1) for line in out.split())

    def batch_script(self, job_id: str) -> str:
        return self.cmd(["scontrol", "write", "batch_script", job_id, "-"], 10).stdout


# ---------------------------------------------------------------- the two runs
def snakemake_env(cluster: Cluster) -> dict[str, str]:
    env = dict(cluster.env)
    env.update(
        PATH=f"{VENV_BIN}:{env['PATH']}:{SBIN_PATH}",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="disabled",
        HTTP_PROXY="http://127.0.0.1:9",  # any attempt to reach the network fails fast
        HTTPS_PROXY="http://127.0.0.1:9",
    )
    return env


def tiny_args(results: Path) -> list[str]:
    return [
        "--configfile",
        "config/tiny.yaml",
        "--config",
        f"results_dir={results}",
        f"models_dir={results}/models",
    ]


class Snakemake:
    """One snakemake run in the background, its output in `logfile`."""

    def __init__(self, what: str, args: list[str], logfile: Path, env: dict):
        self.what, self.logfile = what, logfile
        self.started = time.monotonic()
        self.out = logfile.open("w")
        self.proc = subprocess.Popen(
            [str(SNAKEMAKE), *args], cwd=REPO, env=env, stdout=self.out, stderr=subprocess.STDOUT
        )
        log(f"{what}: started (pid {self.proc.pid})")

    def finish(self, timeout: float) -> str:
        """Wait for the run; its log text, or a Failure if it failed, hung or did not finish."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise Failure(f"{self.what}: not finished within {timeout:.0f} s") from err
        finally:
            self.stop()
        text = self.logfile.read_text(errors="replace")
        if self.proc.returncode != 0:
            raise Failure(f"{self.what} failed ({self.proc.returncode}):\n{text[-5000:]}")
        if "steps (100%) done" not in text:
            raise Failure(f"{self.what}: the DAG did not finish:\n{text[-3000:]}")
        log(f"{self.what}: done in {time.monotonic() - self.started:.0f} s")
        return text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # snakemake cancels its SLURM jobs on SIGTERM
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.out.close()


def compare_tables(a: Path, b: Path) -> list[str]:
    names_a = sorted(p.name for p in a.iterdir())
    names_b = sorted(p.name for p in b.iterdir())
    if names_a != names_b or not names_a:
        raise Failure(f"different table files: SLURM {names_a}, local {names_b}")
    differ = [n for n in names_a if (a / n).read_bytes() != (b / n).read_bytes()]
    if differ:
        diffs = "\n".join(
            subprocess.run(["diff", str(a / n), str(b / n)], capture_output=True, text=True).stdout
            for n in differ
        )
        raise Failure(f"tables differ between SLURM and local run: {differ}\n{diffs[-3000:]}")
    return names_a


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and logs")
    args = parser.parse_args()
    budget = float(os.environ.get("CTSFT_SLURM_BUDGET_S", 780))
    deadline = START + budget

    def left(reserve: float = 0) -> float:
        remaining = deadline - time.monotonic() - reserve
        if remaining <= 5:
            raise Failure(f"out of the {budget:.0f} s budget")
        return remaining

    def on_signal(signum, _frame):
        raise Failure(f"stopped by signal {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)

    if not SNAKEMAKE.exists():
        print(f"FAIL: {SNAKEMAKE} missing: run with the venv's python (.venv/bin/python)")
        return 1
    root = Path(tempfile.mkdtemp(prefix="ctsft-slurm-"))
    cluster = Cluster(root)
    runs: list[Snakemake] = []
    failed = True
    try:
        ensure_slurm()
        cluster.start()
        env = snakemake_env(cluster)

        # 1. the tiny DAG through SLURM: the CPU profile, the partition on the command line,
        # 2. and at the same time the same config locally, same threads (1 per job; the default
        #    profile, as `make reproduce`): the SLURM run mostly waits, so this costs little
        slurm_results, local_results = root / "slurm", root / "local"
        grouped_results = root / "grouped"

        def slurm_args(results: Path, logs: str) -> list[str]:
            return [
                "--workflow-profile",
                PROFILE,
                *tiny_args(results),
                "--default-resources",
                f"slurm_partition={PARTITION}",
                "--slurm-init-seconds-before-status-checks",
                str(STATUS_POLL_S),
                "--slurm-logdir",
                str(root / logs),
                "--latency-wait",
                "5",
            ]

        runs.append(
            Snakemake(
                "SLURM run",
                slurm_args(slurm_results, "slurm_logs"),
                root / "snakemake_slurm.log",
                env,
            )
        )
        # 3. the same DAG grouped: a separate results folder (its own tiny model), the grouping
        #    profile on top of the same workflow profile
        runs.append(
            Snakemake(
                "grouped SLURM run",
                [*slurm_args(grouped_results, "grouped_logs"), "--profile", GROUPED],
                root / "snakemake_grouped.log",
                env,
            )
        )
        local_args = ["--cores", "1", *tiny_args(local_results)]
        runs.append(Snakemake("local run", local_args, root / "snakemake_local.log", env))
        text = runs[0].finish(left(reserve=15))
        grouped_text = runs[1].finish(left(reserve=15))
        remote_jobs = re.findall(r"^rule (\w+):$", text, re.M)
        local_jobs = re.findall(r"^localrule (\w+):$", text, re.M)
        submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", text)
        grouped_submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", grouped_text)
        group_jobs = re.findall(r"Group job chain \(jobs in lexicogr\. order\):", grouped_text)
        ids = cluster.submitted_job_ids()
        states = cluster.job_states()
        log(
            f"snakemake: {len(remote_jobs)} SLURM jobs, {len(local_jobs)} local "
            f"({', '.join(sorted(set(local_jobs)))}); grouped: {len(grouped_submitted)} sbatch "
            f"jobs ({len(group_jobs)} group jobs); slurmctld: {len(ids)} sbatch submissions"
        )
        if (
            not remote_jobs
            or len(submitted) != len(remote_jobs)
            or sorted(ids) != sorted(submitted + grouped_submitted)
        ):
            raise Failure(
                f"expected one sbatch job per non-local job ({len(remote_jobs)}) plus the grouped "
                f"run's: slurmctld saw {ids}, snakemake reported {submitted} + {grouped_submitted}"
            )
        if not group_jobs or not 0 < len(grouped_submitted) < len(submitted):
            raise Failure(
                f"the grouped run submitted {len(grouped_submitted)} sbatch jobs "
                f"({len(group_jobs)} group jobs), the ungrouped {len(submitted)}: no fewer"
            )
        if set(local_jobs) - set(LOCAL_RULES) or "prepare_model" not in local_jobs:
            raise Failure(f"local jobs should be {LOCAL_RULES}, were {local_jobs}")
        not_done = {
            i: states.get(i, "gone from squeue") for i in ids if states.get(i) != "COMPLETED"
        }
        if not_done:
            raise Failure(f"SLURM jobs not COMPLETED: {not_done}")
        script = cluster.batch_script(ids[0])
        if not re.search(rf"^{re.escape(str(VENV_BIN))}/python[\d.]* -m snakemake ", script, re.M):
            raise Failure(f"job {ids[0]} does not run the venv's Python ({VENV_BIN}):\n{script}")

        runs[2].finish(left(reserve=10))
        tables = compare_tables(slurm_results / "tables", local_results / "tables")
        compare_tables(grouped_results / "tables", local_results / "tables")
        failed = False
        wall = time.monotonic() - START
        print(
            f"SLURM integration OK: wall {wall:.0f} s, {len(submitted)} sbatch jobs "
            f"({len(local_jobs)} local), grouped {len(grouped_submitted)} sbatch jobs "
            f"({len(group_jobs)} group jobs), {len(tables)} table files byte-identical to the "
            "local run in both",
            flush=True,
        )
        return 0
    except Failure as err:
        print(f"FAIL: {err}", flush=True)
        for name in ("slurmctld.log", "slurmd.log", "munged.out"):
            print(f"--- tail of {name}\n{cluster.tail(name, 25)}", flush=True)
        return 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # let the clean-up finish
        for snakemake_run in runs:
            snakemake_run.stop()
        cluster.stop()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            log(f"removed {root}" + (" (failed run; --keep leaves it)" if failed else ""))


if __name__ == "__main__":
    sys.exit(main())
