"""Requests that no node of the partition can hold are refused at submit (finetune.login.nodes):
the parsing and the comparison on recorded scontrol output, then on the real test cluster."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from submit_helpers import make_plan

from finetune.errors import ConfigError
from finetune.login.nodes import (
    Cluster,
    Node,
    device_request_problems,
    gpu_count,
    memory_mb,
    parse_nodes,
    parse_partitions,
    request_problems,
    requested_gpus,
)
from finetune.login.submit import submit

REPO = Path(__file__).resolve().parent.parent

NODES = """NodeName=small Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 CPUTot=2 CPULoad=0.1 Gres=(null) RealMemory=4000 Partitions=cpu,all State=IDLE
NodeName=gpu1 Arch=x86_64 CoresPerSocket=8 CPUAlloc=0 CPUTot=16 Gres=gpu:a100:4(S:0-1) RealMemory=256000 Partitions=gpu,all State=IDLE
NodeName=gpu2 Arch=x86_64 CoresPerSocket=8 CPUAlloc=0 CPUTot=16 Gres=gpu:a100:4(S:0-1) RealMemory=128000 Partitions=gpu,all State=IDLE
"""
PARTITIONS = """PartitionName=cpu AllowGroups=ALL Default=YES Nodes=small MaxNodes=UNLIMITED State=UP
PartitionName=gpu AllowGroups=ALL Default=NO Nodes=gpu[1-2] State=UP
PartitionName=all AllowGroups=ALL Default=NO Nodes=small,gpu[1-2] State=UP
"""


@pytest.fixture
def cluster() -> Cluster:
    default, parts = parse_partitions(PARTITIONS)
    return Cluster(parse_nodes(NODES), default, parts)


def test_parsing(cluster):
    assert cluster.default_partition == "cpu" and set(cluster.partitions) == {"cpu", "gpu", "all"}
    assert cluster.nodes[0] == Node("small", 2, 4000, 0, ("cpu", "all"))
    assert cluster.nodes[1].gpus == 4 and cluster.nodes[1].memory_mb == 256000
    assert gpu_count("gpu:a100:2(S:0),gpu:v100:1,mps:100") == 3 and gpu_count("(null)") == 0
    assert (memory_mb("8G"), memory_mb("16000M"), memory_mb("500"), memory_mb("x")) == (8192, 16000, 500, None)


REQUEST = {"partition": None, "cpus_per_task": 1, "ntasks_per_node": 1, "mem": None, "gpus": 0, "nodes": 1}


@pytest.mark.parametrize("change,path,message", [
    ({}, None, None),
    ({"cpus_per_task": 4}, "$.slurm.cpus_per_task", "asks 4 CPUs per node (cpus_per_task x ntasks_per_node), "
                                                      "but no node of partition 'cpu' (the default) has more than 2"),
    ({"cpus_per_task": 2, "ntasks_per_node": 2}, "$.slurm.cpus_per_task", "asks 4 CPUs per node"),
    ({"mem": "8G"}, "$.slurm.mem", "asks 8G per node, but no node of partition 'cpu' (the default) has more than 4000M"),
    ({"gpus": 1}, "$.slurm.gpus", "asks 1 GPUs per node, but no node of partition 'cpu' (the default) has more than 0"),
    ({"partition": "gpu", "gpus": 4, "cpus_per_task": 16, "mem": "200G", "nodes": 2}, "$.slurm.nodes",
     "asks 2 nodes with 16 CPUs, 4 GPUs, 200G each, but partition 'gpu' has 1 such node(s)"),
    ({"partition": "gpu", "gpus": 4, "cpus_per_task": 16, "mem": "100G", "nodes": 2}, None, None),
    ({"partition": "gpus"}, "$.slurm.partition", "no partition 'gpus' on this cluster (scontrol knows: all, cpu, gpu)"),
])
def test_request_problems_name_the_layer(cluster, change, path, message):
    provenance = {"$.slurm.cpus_per_task": "config/default.json", "$.slurm.mem": "config/slurm-example.json"}
    got = request_problems({**REQUEST, **change}, cluster, "trials/x/config.json", provenance)
    if path is None:
        assert got == []
        return
    assert [p.path for p in got] == [path]
    assert message in got[0].message
    assert got[0].file == provenance.get(path, "trials/x/config.json")


def test_the_test_cluster_refuses_what_can_never_run(slurm_cluster, tmp_path):
    nodes = parse_nodes(subprocess.run(["scontrol", "show", "nodes", "-o"], capture_output=True, text=True,
                                       check=True).stdout)
    most = max(n.cpus for n in nodes)
    plan = tmp_path / "plan"
    make_plan(plan, 2, slurm={"cpus_per_task": most + 1},
                    per_trial={0: {"provenance": {"$.slurm.cpus_per_task": "config/my-slurm.json"}}})
    with pytest.raises(ConfigError) as e:
        submit(plan, executor="slurm")
    text = str(e.value)
    assert f"config/my-slurm.json: $.slurm.cpus_per_task: asks {most + 1} CPUs per node" in text
    assert f"has more than {most}" in text
    assert not (plan / "manifest.json").exists() and not (plan / "jobs").exists()  # nothing written or queued
    # what fits is submitted as before
    fits = tmp_path / "fits"
    make_plan(fits, 1, slurm={"cpus_per_task": most})
    report = submit(fits, executor="slurm")
    assert len(report.job_ids) == 1
    assert json.loads((fits / "manifest.json").read_text())


def test_cuda_on_a_machine_without_one_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    from finetune.cli import main
    from finetune.login.nodes import local_gpus_visible

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # whatever this machine has, none is visible now
    assert not local_gpus_visible()
    plan = tmp_path / "plan"
    make_plan(plan, 2, per_trial={0: {"training": {"device": "cuda"},
                                      "provenance": {"$.training.device": "config/gpu.json"}}})
    assert main(["submit", str(plan), "--executor", "local"]) == 2
    err = capsys.readouterr().err
    assert "config/gpu.json: $.training.device: 'cuda', but this machine shows no CUDA GPU" in err
    assert not list(plan.glob("trials/*/state.json")) and not (plan / "manifest.json").exists()


def test_submit_names_the_layer_of_a_missing_checkpoint(tmp_path, capsys):
    from finetune.cli import main

    plan = tmp_path / "plan"
    make_plan(plan, 1, per_trial={0: {"training": {"workload": "finetune"}, "checkpoint": str(tmp_path / "nope.pt"),
                                      "provenance": {"$.checkpoints.normal": "config/typo.json"}}})
    assert main(["submit", str(plan), "--executor", "local"]) == 2
    assert f"config/typo.json: $.checkpoints.normal: checkpoint not found: {tmp_path / 'nope.pt'}" in capsys.readouterr().err


@pytest.mark.parametrize("device,slurm,message", [
    ("cuda", {}, "'cuda', but the SLURM request asks for no GPU (slurm.gpus is 0"),
    ("cuda:1", {"gpus": 1}, "'cuda:1', but no node of partition 'cpu' (the default) has a GPU (no gpu GRES: small)"),
    ("cuda", {"gpus": 1, "partition": "gpu"}, None),
    ("cuda", {"extra": {"gres": "gpu:a100:2"}, "partition": "all"}, None),  # a node of 'all' has GPUs
    ("cuda", {"extra": {"gpus-per-node": "a100:1"}, "partition": "gpu"}, None),
    ("cuda", {"extra": {"gres": "shard:2"}, "partition": "gpu"}, "asks for no GPU"),
    ("auto", {}, None),
    ("cpu", {"partition": "gpu"}, None),
])
def test_cuda_needs_a_request_that_gets_a_gpu(cluster, device, slurm, message):
    provenance = {"$.training.device": "config/gpu.json"}
    got = device_request_problems({"device": device}, {**REQUEST, **slurm}, cluster, "trials/x/config.json", provenance)
    if message is None:
        assert got == []
        return
    (problem,) = got
    assert (problem.file, problem.path) == ("config/gpu.json", "$.training.device") and message in problem.message
    # without an answer from the scheduler only the request itself can be judged
    assert bool(device_request_problems({"device": device}, {**REQUEST, **slurm}, None, "f")) == (requested_gpus(
        {**REQUEST, **slurm}) == 0)


def test_the_test_cluster_refuses_cuda_without_a_gpu(slurm_cluster, tmp_path, capsys):
    """Issue 17 item 8 on the real (GPU-less) test cluster: training.device cuda is refused at submit
    and at plan time, before anything is written, whether the request asks for no GPU or for one
    that no node of the partition has."""
    from finetune.cli import main

    plan = tmp_path / "plan"
    make_plan(plan, 2, per_trial={0: {"training": {"device": "cuda"},
                                      "provenance": {"$.training.device": "config/gpu.json"}}})
    with pytest.raises(ConfigError) as e:
        submit(plan, executor="slurm")
    assert "config/gpu.json: $.training.device: 'cuda', but the SLURM request asks for no GPU" in str(e.value)
    assert not (plan / "manifest.json").exists() and not (plan / "jobs").exists()
    assert main(["submit", str(plan), "--executor", "slurm"]) == 2
    assert "$.training.device: 'cuda', but the SLURM request asks for no GPU" in capsys.readouterr().err

    asks = tmp_path / "asks"
    make_plan(asks, 1, slurm={"gpus": 1}, per_trial={0: {"training": {"device": "cuda"}}})
    with pytest.raises(ConfigError) as e:
        submit(asks, executor="slurm")
    assert "$.training.device: 'cuda', but no node of partition" in str(e.value) and "has a GPU" in str(e.value)
    assert not (asks / "manifest.json").exists()

    # at plan time (`finetune plan` submits): refused before plan.json is written
    out = tmp_path / "planned"
    files = [str(REPO / f) for f in ("config/finetune-rus-pol.json", "config/finetune-rus-pol-topic.json")]
    assert main(["plan", *files, "--set", "training.device=cuda", "--set", "slurm.cpus_per_task=1", "--model-type", "normal",
                 "--executor", "slurm", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "$.training.device: 'cuda', but the SLURM request asks for no GPU" in err and "--set" in err
    assert not (out / "plan.json").exists()


def test_cuda_without_a_gpu_here_is_refused_at_plan_time(tmp_path, monkeypatch, capsys):
    """`finetune plan --executor local` (which submits): the device check runs before plan.json is written."""
    from finetune.cli import main

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = tmp_path / "planned"
    files = [str(REPO / f) for f in ("config/finetune-rus-pol.json", "config/finetune-rus-pol-topic.json")]
    assert main(["plan", *files, "--set", "training.device=cuda", "--executor", "local", "--output-dir", str(out)]) == 2
    assert "--set: $.training.device: 'cuda', but this machine shows no CUDA GPU" in capsys.readouterr().err
    assert not out.exists()
