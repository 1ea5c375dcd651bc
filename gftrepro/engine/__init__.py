"""The training engine every training stage drives: ``config`` (TrainConfig), ``batches`` (rows -> tensors),
``step`` (one optimizer step's forward/backward and metrics), ``trainer`` (Trainer: model, optimizer,
schedule, save), ``state`` (checkpoints, metrics.jsonl). The loss is ``gftrepro.losses``; the LM-head pass
``gftrepro.logprobs``."""
