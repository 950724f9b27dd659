"""Dataset stage: preference-pair loading, reward labelling, Algorithm 1."""
