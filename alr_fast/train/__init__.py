"""The training loop and its parts: runtime, model, schedule, evaluation, metrics, checkpoints, exports."""
