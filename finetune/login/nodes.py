"""Does an array's request fit a node of its partition? Refuse what could only ever pend.

SLURM accepts a job that asks more CPUs, memory or GPUs than any node of its partition has, and
leaves it pending forever (reason PartitionConfig or Resources). Submit asks the scheduler once
for the partitions and nodes (``scontrol show partition -o``, ``scontrol show nodes -o``) and
compares every distinct request with them (``request_problems``, pure), naming the layer that set
the offending value.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from typing import Any

from finetune.errors import Problem

MEM_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int  # CPUTot
    memory_mb: int  # RealMemory
    gpus: int  # gpu count in Gres
    partitions: tuple[str, ...]


@dataclass
class Cluster:
    nodes: list[Node]
    default_partition: str | None
    partitions: dict[str, list[str]] = field(default_factory=dict)  # partition -> node names (from its Nodes=)

    def partition_nodes(self, partition: str | None) -> list[Node]:
        name = partition or self.default_partition
        return [n for n in self.nodes if name in n.partitions]


def _fields(line: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line))


def gpu_count(gres: str) -> int:
    """'gpu:4', 'gpu:a100:2(S:0-1),gpu:v100:1' -> total gpus; '(null)' -> 0."""
    total = 0
    for part in gres.split(","):
        bits = part.split("(")[0].split(":")
        if bits[0] == "gpu" and len(bits) >= 2 and bits[-1].isdigit():
            total += int(bits[-1])
    return total


def parse_nodes(text: str) -> list[Node]:
    """``scontrol show nodes -o``: one node per line."""
    out = []
    for line in text.splitlines():
        f = _fields(line)
        if "NodeName" not in f:
            continue
        out.append(Node(f["NodeName"], int(f.get("CPUTot", "0") or 0), int(f.get("RealMemory", "0") or 0),
                        gpu_count(f.get("Gres", "")), tuple(p for p in f.get("Partitions", "").split(",") if p)))
    return out


def parse_partitions(text: str) -> tuple[str | None, dict[str, list[str]]]:
    """``scontrol show partition -o``: the default partition's name and each partition's nodes."""
    default, parts = None, {}
    for line in text.splitlines():
        f = _fields(line)
        if "PartitionName" not in f:
            continue
        parts[f["PartitionName"]] = [x for x in f.get("Nodes", "").split(",") if x]
        if f.get("Default") == "YES":
            default = f["PartitionName"]
    return default, parts


def query_cluster(timeout: float = 30) -> Cluster | None:
    """Ask scontrol once for nodes and partitions; None when it cannot answer (nothing to check)."""
    try:
        nodes = subprocess.run(["scontrol", "show", "nodes", "-o"], capture_output=True, text=True, timeout=timeout)
        parts = subprocess.run(["scontrol", "show", "partition", "-o"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if nodes.returncode != 0 or parts.returncode != 0:
        return None
    default, partitions = parse_partitions(parts.stdout)
    found = parse_nodes(nodes.stdout)
    if not found or not partitions:
        return None  # an answer without nodes or partitions is no ground to refuse anything
    return Cluster(found, default, partitions)


def memory_mb(mem: str) -> int | None:
    """SLURM --mem ('8G', '16000M', '16000' = MB) in MB; None when not a plain size."""
    m = re.fullmatch(r"(\d+)([KMGT]?)B?", mem.strip().upper())
    if not m:
        return None
    return int(int(m.group(1)) * MEM_UNITS[m.group(2) or "M"])


def request_problems(slurm: dict[str, Any], cluster: Cluster, config_file: str,
                     provenance: dict[str, str] | None = None) -> list[Problem]:
    """Why no ``slurm.nodes`` nodes of the partition can ever hold this request ([] when they can)."""
    provenance = provenance or {}

    def problem(key: str, message: str) -> Problem:
        path = f"$.slurm.{key}"
        return Problem(provenance.get(path, config_file), path, message)

    partition = slurm.get("partition")
    shown = repr(partition) if partition else f"{cluster.default_partition!r} (the default)"
    if partition and partition not in cluster.partitions:
        known = ", ".join(sorted(cluster.partitions)) or "none"
        return [problem("partition", f"no partition {partition!r} on this cluster (scontrol knows: {known})")]
    nodes = cluster.partition_nodes(partition)
    if not nodes:
        return [problem("partition", f"partition {shown} has no nodes")]
    per_node = int(slurm.get("ntasks_per_node") or 1)
    cpus = int(slurm.get("cpus_per_task") or 1) * per_node
    gpus = int(slurm.get("gpus") or 0)
    mem = memory_mb(slurm["mem"]) if isinstance(slurm.get("mem"), str) else None
    want_nodes = int(slurm.get("nodes") or 1)
    out = []
    biggest = max(n.cpus for n in nodes)
    if cpus > biggest:
        out.append(problem("cpus_per_task", f"asks {cpus} CPUs per node (cpus_per_task x ntasks_per_node), but no "
                                            f"node of partition {shown} has more than {biggest}"))
    most_mem = max(n.memory_mb for n in nodes)
    if mem is not None and mem > most_mem:
        out.append(problem("mem", f"asks {slurm['mem']} per node, but no node of partition {shown} has more than "
                                  f"{most_mem}M"))
    most_gpus = max(n.gpus for n in nodes)
    if gpus > most_gpus:
        out.append(problem("gpus", f"asks {gpus} GPUs per node, but no node of partition {shown} has more than "
                                   f"{most_gpus}"))
    if out:
        return out
    fit = [n for n in nodes if n.cpus >= cpus and n.gpus >= gpus and (mem is None or n.memory_mb >= mem)]
    if len(fit) < want_nodes:
        out.append(problem("nodes", f"asks {want_nodes} nodes with {cpus} CPUs, {gpus} GPUs"
                                    f"{', ' + str(slurm.get('mem')) if mem else ''} each, but partition "
                                    f"{shown} has {len(fit)} such node(s)"))
    return out


def local_gpus_visible() -> bool:
    """Does this machine show an NVIDIA GPU (driver's /proc entries; CUDA_VISIBLE_DEVICES honoured)?
    The login node never imports torch, so this is what can be known without it."""
    import os
    from pathlib import Path

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def local_device_problems(training: dict[str, Any], config_file: str,
                          provenance: dict[str, str] | None = None) -> list[Problem]:
    """training.device names a GPU this machine does not have (for trials that run here)."""
    device = str(training.get("device") or "auto")
    if device.startswith("cuda") and not local_gpus_visible():
        path = "$.training.device"
        return [Problem((provenance or {}).get(path, config_file), path,
                        f"{device!r}, but this machine shows no CUDA GPU (the local executor runs trials here); "
                        "use auto or cpu, or submit to a cluster")]
    return []


GPU_FLAGS = ("gpus", "gpus-per-node", "gpus-per-task", "gres")  # slurm.extra flags that can ask for GPUs


def requested_gpus(slurm: dict[str, Any]) -> int:
    """GPUs per node a resolved ``slurm`` section asks for: ``gpus`` (``--gres=gpu:N``), or a GPU
    flag of ``extra`` (``gres: "gpu:a100:2"``, ``gpus-per-node: 2``, ``gpus: "a100:1"``)."""
    total = int(slurm.get("gpus") or 0)
    extra = slurm.get("extra") or {}
    for flag in GPU_FLAGS:
        value = extra.get(flag) if isinstance(extra, dict) else None
        if value is None or value is False:
            continue
        text = str(value)
        if flag == "gres":
            total = max(total, gpu_count(text))
        else:  # "[type:]count"
            count = text.rsplit(":", 1)[-1]
            total = max(total, int(count) if count.isdigit() else 1)
    return total


def device_request_problems(training: dict[str, Any], slurm: dict[str, Any], cluster: Cluster | None,
                            config_file: str, provenance: dict[str, str] | None = None) -> list[Problem]:
    """``training.device`` cuda for a trial SLURM runs, when its request cannot give it a GPU: it
    asks for none (no ``slurm.gpus``, no GPU flag in ``slurm.extra``), or no node of its partition
    has a GPU GRES (``cluster``: one scheduler query; None: not known, only the first is checked)."""
    device = str(training.get("device") or "auto")
    if not device.startswith("cuda"):
        return []
    path = "$.training.device"
    where = (provenance or {}).get(path, config_file)
    if requested_gpus(slurm) == 0:
        return [Problem(where, path, f"{device!r}, but the SLURM request asks for no GPU (slurm.gpus is 0 and "
                                     "slurm.extra has no gres/gpus flag), so the trial would never see one; set "
                                     "slurm.gpus (e.g. 1), or training.device to auto or cpu")]
    if cluster is not None:
        partition = slurm.get("partition")
        nodes = cluster.partition_nodes(partition)
        shown = repr(partition) if partition else f"{cluster.default_partition!r} (the default)"
        if nodes and not any(n.gpus for n in nodes):
            return [Problem(where, path, f"{device!r}, but no node of partition {shown} has a GPU (no gpu GRES: "
                                         f"{', '.join(n.name for n in nodes[:8])}); choose a GPU partition with "
                                         "slurm.partition, or set training.device to auto or cpu")]
    return []
