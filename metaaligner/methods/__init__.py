"""Baselines, one module per method: SFT (RiC), CDPO, MORLHF, SePO."""
