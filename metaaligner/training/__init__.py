"""Training: config dataclasses and TRL-based trainers (aligner curriculum, baselines, SePO)."""
