"""Training one network: the resumable data-parallel loop, its steps, optimizer, checkpoints and metrics."""
