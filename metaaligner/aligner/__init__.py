"""Aligner stage: aligner resolution, file inference and the Python API (``inference``), policy
generation (``policy``). ``from metaaligner.aligner import Aligner`` works; patch module globals
such as ``DEMO_ALIGNER_DIR`` on ``metaaligner.aligner.inference``."""
from metaaligner.aligner.inference import (
    MODEL_CARD,
    OUTPUT_COLUMNS,
    Aligner,
    AlignerSource,
    AlignRunSettings,
    AlignStats,
    FileJob,
    align_file,
    align_iteratively,
    build_prompts,
    default_aligner_dir,
    dry_run_file,
    load_policy_rows,
    make_generator,
    plan_jobs,
    read_model_card,
    resolve_aligner,
    resolve_objectives,
    table_stem,
)
from metaaligner.aligner.policy import POLICY_COLUMNS, generate_file, load_queries

__all__ = ["MODEL_CARD", "OUTPUT_COLUMNS", "POLICY_COLUMNS", "AlignerSource", "AlignRunSettings", "AlignStats",
           "Aligner", "FileJob", "align_file", "align_iteratively", "build_prompts", "default_aligner_dir",
           "dry_run_file", "generate_file", "load_policy_rows", "load_queries", "make_generator", "plan_jobs",
           "read_model_card", "resolve_aligner", "resolve_objectives", "table_stem"]
