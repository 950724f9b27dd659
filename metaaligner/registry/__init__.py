"""Registries as data: objectives (``objectives``), prompt templates (``templates``) and dataset
configs (``datasets``; the shipped YAML files are in ``metaaligner/data/datasets/``)."""
