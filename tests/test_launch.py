"""finetune.compute.launch: torchrun that passes SIGUSR2 on to its workers and reports exit 75.

Real torchrun (torch.distributed.run, in this machine's torch) with two real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

WORKER = """
import os, signal, sys, time
rank = os.environ["RANK"]
got = []
signal.signal(signal.SIGUSR2, lambda *_: got.append(1))
open(os.path.join(sys.argv[1], f"ready.{rank}"), "w").write(os.environ.get("SLURM_CPUS_PER_TASK", ""))
end = time.monotonic() + 120
while not got and time.monotonic() < end:
    time.sleep(0.05)
open(os.path.join(sys.argv[1], f"usr2.{rank}"), "w").close()
sys.exit(75 if got else 3)
"""


def test_usr2_reaches_every_worker_and_the_launcher_exits_75(tmp_path: Path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "MASTER_"))}
    env["SLURM_CPUS_PER_TASK"] = "4"  # the node's CPUs: each of 2 workers gets 2
    proc = subprocess.Popen([sys.executable, "-m", "finetune.compute.launch", "--standalone", "--nproc-per-node=2",
                             "--no-python", sys.executable, str(script), str(tmp_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    end = time.monotonic() + 120
    while len(list(tmp_path.glob("ready.*"))) < 2 and time.monotonic() < end and proc.poll() is None:
        time.sleep(0.1)
    assert sorted(p.read_text() for p in tmp_path.glob("ready.*")) == ["2", "2"]
    proc.send_signal(signal.SIGUSR2)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out[-3000:]
    assert sorted(p.name for p in tmp_path.glob("usr2.*")) == ["usr2.0", "usr2.1"]
    assert "SIGUSR2 forwarded to the workers" in out


def test_a_failing_worker_is_not_a_requeue(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "MASTER_"))}
    proc = subprocess.run([sys.executable, "-m", "finetune.compute.launch", "--standalone", "--nproc-per-node=1",
                           "--no-python", sys.executable, "-c", "import sys; sys.exit(3)"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-3000:]
