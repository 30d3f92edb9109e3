"""A real one-node Slurm cluster for the tests: Debian's munge and slurm-wlm (`.ci/run` installs them where apt-get
and root allow), started as root with everything of theirs (key, socket, config, state, logs, ports) in one
folder, and torn down after. Clients find it through SLURM_CONF; no accounting (sacct says it is disabled)."""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo")
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def unavailable() -> str | None:
    """Why no cluster can start here, or None."""
    missing = [name for name in DAEMONS + CLIENTS if shutil.which(name, path=SBIN) is None]
    if missing:
        return f"no Slurm here ({', '.join(missing)} missing): .ci/run installs slurm-wlm and munge as root"
    if os.geteuid() != 0:
        return "a one-node Slurm needs root: slurmd starts each job as its user"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """munged, slurmctld and slurmd on this host: one node with its CPUs, cores the only consumable resource (jobs
    share the memory), the partition `debug` with a 180-minute limit that sbatch enforces, and no GPUs."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}

    def daemon(self, *argv: str) -> None:
        result = subprocess.run([shutil.which(argv[0], path=SBIN), *argv[1:]], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} did not start ({result.returncode}): {result.stderr}{self.logs()}")

    def logs(self) -> str:
        return "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((self.folder / "log").glob("*")))

    def start(self) -> "SlurmCluster":
        f = self.folder
        for sub in ("munge", "state", "spool", "log"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        (f / "munge").chmod(0o700)
        key = f / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = f / "munge" / "munge.sock"
        self.daemon(
            "munged", "--force", f"--socket={sock}", f"--key-file={key}", f"--log-file={f / 'log' / 'munged.log'}",
            f"--pid-file={f / 'munge' / 'munged.pid'}", f"--seed-file={f / 'munge' / 'seed'}",
        )  # fmt: skip
        host = socket.gethostname().split(".")[0]
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 1024
        self.conf.write_text(
            f"""ClusterName=harness-tests
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
StateSaveLocation={f / "state"}
SlurmdSpoolDir={f / "spool"}
SlurmctldPidFile={f / "slurmctld.pid"}
SlurmdPidFile={f / "slurmd.pid"}
SlurmctldLogFile={f / "log" / "slurmctld.log"}
SlurmdLogFile={f / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=3600
ReturnToService=2
EnforcePartLimits=ALL
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=180 State=UP
"""
        )
        self.daemon("slurmctld", "-f", str(self.conf))
        self.daemon("slurmd", "-f", str(self.conf))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = self.client("sinfo", "--noheader", "--format", "%T").stdout.strip()
            if state == "idle":
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the node did not come up (sinfo: {state!r}){self.logs()}")

    def client(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **self.env})

    def stop(self) -> None:
        self.client("scancel", "--user", "root")
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            path = self.folder / pid_file
            try:
                pid = int(path.read_text())
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError):
                continue
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.2)
