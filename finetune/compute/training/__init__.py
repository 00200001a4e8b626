"""The fine-tuning trainer's parts (the entry point is ``finetune.compute.trainer.run``).

- ``settings``: the trial config's hyperparameters and training options, checked and typed.
- ``task``: what is task-specific: data, the model head, how a batch becomes a loss, how
  predictions become metrics (``ClassificationTask``; ``task_for`` picks one).
- ``loop``: ``Trainer``: setup, the train loop (one ``train_step`` per optimizer step), evaluate,
  checkpoint, result.
- ``checkpoint``: ``CheckpointStore``, the latest resume state and the best model (DCP).
- ``tracking``: the tracker hook (``metrics.jsonl`` always; wandb/TensorBoard plug in here).
- ``runtime``: state.json, the console log, SIGUSR2, seeds, exit codes.
"""
