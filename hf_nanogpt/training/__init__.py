"""The parts of hf_nanogpt's trainer; the loop itself is hf_nanogpt/train.py.

config: settings; model: init_from; optim: optimizers and schedules; devices: Accelerate, processes,
precision, FSDP; evaluation: losses and bits per byte; checkpoint: resumable state and preemption;
publish: the model folder, card and push; measure: MFU; logs: log.jsonl and trackers.
"""
