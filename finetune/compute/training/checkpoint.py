"""The checkpoint store: a trial's ``checkpoints/`` folder, latest resume state and best model.

Everything that decides the next step is in the latest checkpoint: model and optimizer state
(torch.distributed.checkpoint, so FSDP shards are saved and loaded without gathering; the same
format serves one process), the :class:`TrainState` (step, best metric, counters; JSON), RNG
states and the grad scaler per rank. The best checkpoint holds the model only. ``latest.json``
and ``best.json`` point at the current folders and are replaced atomically after every rank
saved, then older folders are dropped, so a crash mid-save leaves the last good one.

Layout::

    checkpoints/latest.json            {"step", "dir"}
    checkpoints/step-00000040/         DCP shards, trainer.json (state, world size, settings), rank<r>.pt
    checkpoints/best.json              {"step", "metric", "value", "dir"}
    checkpoints/best-00000032/         DCP shards of the model
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetune.compute import distributed as dist_env
from finetune.fileio import atomic_write_json, read_json

LATEST, BEST = "latest.json", "best.json"


@dataclass
class TrainState:
    """What the checkpoint restores besides tensors (JSON)."""

    step: int = 0
    best_value: float | None = None
    best_step: int | None = None
    samples: int = 0  # global rows trained on, all segments
    tokens: int = 0  # global non-padding tokens trained on
    train_s: float = 0.0  # time in train steps, all segments
    wall_s: float = 0.0  # wall time of earlier segments
    loss_sum: float = 0.0  # train loss since the last evaluation (for the log line)
    loss_steps: int = 0
    # selection "each-language": per eval language, its best eval value, that step and the metrics
    # of both splits there ({"value", "step", "eval", "test"}), scored when the language improved
    oracle: dict[str, dict[str, Any]] = field(default_factory=dict)


class CheckpointStore:
    """Save and load a trial's checkpoints; every rank calls every method (they synchronise)."""

    def __init__(self, folder: Path, env: dist_env.DistEnv, *, trainable_only: bool = False):
        self.folder = folder
        self.env = env
        # LoRA: only the adapters and the head train, so only they are saved; the frozen base is
        # rebuilt from the pretrained checkpoint
        self.trainable_only = trainable_only
        self.saved_step: int | None = None  # step of the latest checkpoint on disk (never overwritten in place)

    # --- latest: resume state -----------------------------------------------------------------------
    def save_latest(self, model: Any, optimizer: Any, state: TrainState, *, scaler: Any,
                    settings: dict[str, Any]) -> None:
        import torch
        from torch.distributed.checkpoint.state_dict import get_state_dict

        folder = self._fresh_folder(f"step-{state.step:08d}")
        model_sd, optim_sd = get_state_dict(model, optimizer, options=self._options())
        _dcp_save({"model": model_sd, "optim": optim_sd}, folder)
        torch.save({"rng": rng_state(), "scaler": scaler.state_dict() if scaler else None},
                   folder / f"rank{self.env.rank}.pt")
        if self.env.is_main:
            atomic_write_json(folder / "trainer.json", {"state": asdict(state), "world_size": self.env.world_size,
                                                         "settings": settings})
        self._publish(LATEST, folder, {"step": state.step}, "step")
        self.saved_step = state.step

    def load_latest(self, model: Any, optimizer: Any, *, scaler: Any) -> tuple[TrainState, Path] | None:
        """Restore model, optimizer, RNG and scaler from the latest checkpoint; None when there is none.

        RNG states and the scaler come back only when the world size is the same as when saved.
        """
        import torch
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        pointer = self.folder / LATEST
        if not pointer.exists():
            return None
        folder = self.folder / read_json(pointer)["dir"]
        saved = read_json(folder / "trainer.json")
        model_sd, optim_sd = get_state_dict(model, optimizer, options=self._options())
        sd = {"model": model_sd, "optim": optim_sd}
        _dcp_load(sd, folder)
        set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"],
                       options=self._options())
        state = TrainState(**saved["state"])
        self.saved_step = state.step
        rank_file = folder / f"rank{self.env.rank}.pt"
        if saved.get("world_size") == self.env.world_size and rank_file.exists():
            extra = torch.load(rank_file, weights_only=True)
            set_rng_state(extra["rng"])
            if scaler is not None and extra.get("scaler"):
                scaler.load_state_dict(extra["scaler"])
        return state, folder

    # --- best: model only ---------------------------------------------------------------------------
    def save_best(self, model: Any, *, step: int, metric: str, value: float | None) -> None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        folder = self._fresh_folder(f"best-{step:08d}")
        _dcp_save({"model": get_model_state_dict(model, options=self._options())}, folder)
        self._publish(BEST, folder, {"step": step, "metric": metric, "value": value}, "best")

    def load_best(self, model: Any) -> bool:
        """Load the best model's weights into ``model``; False (model untouched) when there is none."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        pointer = self.folder / BEST
        if not pointer.exists():
            return False
        sd = {"model": get_model_state_dict(model, options=self._options())}
        _dcp_load(sd, self.folder / read_json(pointer)["dir"])
        set_model_state_dict(model, sd["model"], options=self._options())
        return True

    def _options(self) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        if not self.trainable_only:
            return None
        return StateDictOptions(ignore_frozen_params=True, strict=False)

    def remove(self) -> None:
        """Drop every checkpoint (rank 0; the trial is finished)."""
        if self.env.is_main:
            shutil.rmtree(self.folder, ignore_errors=True)

    # --- folders --------------------------------------------------------------------------------------
    def _fresh_folder(self, name: str) -> Path:
        folder = self.folder / name
        if self.env.is_main:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        dist_env.barrier(self.env)
        return folder

    def _publish(self, pointer: str, folder: Path, info: dict[str, Any], prefix: str) -> None:
        """All ranks saved: point at the new folder atomically, then drop the older ones."""
        dist_env.barrier(self.env)
        if self.env.is_main:
            atomic_write_json(self.folder / pointer, {**info, "dir": folder.name})
            for old in self.folder.glob(f"{prefix}-*"):
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)
        dist_env.barrier(self.env)


def _dcp_save(state_dict: dict[str, Any], folder: Path) -> None:
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.save(state_dict, checkpoint_id=str(folder))


def _dcp_load(state_dict: dict[str, Any], folder: Path) -> None:
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.load(state_dict, checkpoint_id=str(folder))


def rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": json.dumps(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
