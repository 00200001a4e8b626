"""The test cluster itself (scripts/slurm-cluster.sh): N nodes in namespaces, and a `stop` that
ends what the cluster started and nothing else.

Real parts: the script boots real daemons; jobs go through sbatch/srun.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import waiting  # noqa: E402
from conftest import SLURM_CLUSTER, running_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (our own unreaped child) counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(check, timeout: float, what: str):
    return waiting.wait_until(check, timeout, what)


def names_of(root: Path) -> tuple[str, str]:
    """(bridge name, namespace/veth infix) the script derives from the cluster dir."""
    h = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
    return f"ftb{h}", h


def network_leftovers(root: Path) -> list[str]:
    bridge, h = names_of(root)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return ([line for line in links.splitlines() if bridge in line or f"ftv{h}" in line]
            + [line for line in netns.splitlines() if f"ft-{h}-" in line])


def test_srun_spans_two_nodes_with_their_own_hostnames_and_addresses(slurm_multinode):
    out = subprocess.run(
        ["srun", "--nodes=2", "--ntasks-per-node=1", "--time=2", "bash", "-c",
         'echo "$SLURM_PROCID $(hostname) $(getent hosts "$(hostname)" | cut -d" " -f1)'
         ' $(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"'],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = sorted(line.split() for line in out.stdout.splitlines())
    assert [r[:2] for r in rows] == [["0", "ftnode1"], ["1", "ftnode2"]]
    addrs = [r[2] for r in rows]
    assert len(set(addrs)) == 2 and all(a.startswith("10.") for a in addrs), rows
    assert {r[3] for r in rows} == {"ftnode1"}  # the first host of the job's node list, on every node


def test_stop_ends_what_the_cluster_started_and_nothing_else(tmp_path):
    """Issue 14 item 10: `stop` used to kill every process with the cluster's SLURM_CONF or
    FT_SLURM_CLUSTER_DIR in its environment (a shell that sourced env.sh, an editor, a `tail`).
    A 2-node cluster here also shows teardown removes all namespaces, links and daemons."""
    root = tmp_path / "cluster"
    conf = root / "etc" / "slurm.conf"
    # a bystander with the cluster's variables in its environment, started before the cluster
    env = {**os.environ, "SLURM_CONF": str(conf), "FT_SLURM_CLUSTER_DIR": str(root.resolve()),
           "FINETUNE_SLURM_DIR": str(root)}
    root.mkdir()
    bystander = subprocess.Popen(["sleep", "600"], env=env, start_new_session=True)
    try:
        with running_cluster(root, nodes=2):
            daemons = [int((root / "run" / f"{n}.pid").read_text())
                       for n in ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd-ftnode1", "slurmd-ftnode2")]
            assert all(alive(p) for p in daemons)
            # a job on both nodes whose tasks leave a detached process behind (escaping the
            # job's process group, as a careless user script does)
            marks = tmp_path / "orphan"
            script = (f'setsid sleep 777 </dev/null >/dev/null 2>&1 & echo $! > {marks}.$SLURM_PROCID; sleep 600')
            job = subprocess.run(["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1",
                                  f"--output={tmp_path}/job.out", "--wrap", f"srun bash -c '{script}'"],
                                 env={**os.environ, "SLURM_CONF": str(conf)}, capture_output=True, text=True)
            assert job.returncode == 0, job.stderr
            orphans = wait_for(lambda: [int(p.read_text()) for p in sorted(tmp_path.glob("orphan.*"))
                                        if p.read_text().strip()] if len(list(tmp_path.glob("orphan.*"))) == 2
                               else None, 60, "the job's detached processes")
            assert all(alive(p) for p in orphans)
            assert network_leftovers(root), "the cluster made no bridge/namespaces"
        # stopped (running_cluster's exit)
        assert alive(bystander.pid), "stop killed a process it did not start"
        assert not [p for p in daemons + orphans if alive(p)], "stop left processes of the cluster alive"
        assert network_leftovers(root) == []
        assert not (root / "run" / "keeper.pid").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_without_namespaces_start_refuses_and_leaves_nothing():
    """As an unprivileged user (no CAP_NET_ADMIN) --nodes 2 cannot make namespaces: exit 3, a
    clear message, no bridge, namespace or daemon left."""
    root = Path(tempfile.mkdtemp(prefix="ft-refuse-", dir="/tmp"))  # pytest's tmp is root-only
    try:
        os.chmod(root, 0o777)
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "bash", str(SLURM_CLUSTER), "start", str(root), "--nodes", "2"],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(root)})
        assert proc.returncode == 3, (proc.returncode, proc.stderr)
        assert "--nodes 2 needs network and UTS namespaces" in proc.stderr, proc.stderr
        assert network_leftovers(root) == []
        assert not list((root / "run").glob("*.pid"))
    finally:
        shutil.rmtree(root)


def test_bad_node_count_is_a_usage_error(tmp_path):
    proc = subprocess.run(["bash", str(SLURM_CLUSTER), "start", str(tmp_path), "--nodes", "two"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--nodes must be a number" in proc.stderr
