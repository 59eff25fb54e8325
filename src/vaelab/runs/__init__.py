"""What the entry points run: training, evaluation and generation from Hydra configs, and the
run infrastructure (config checks, checkpoints and resume, DDP in sweeps, sweep summaries,
terminal reports)."""
