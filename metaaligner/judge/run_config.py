"""``JudgeRun``: one judge run as one config (what is judged, how, where it goes), the argument of
``judge_outputs``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class JudgeRun:
    """Every setting of one judge run; see ``judge_outputs`` for how they combine."""

    # what is judged
    input_path: str | Path                    # an aligner output file or a folder of them
    output_dir: str | Path                    # the run's verdicts, summaries, run.json and cache
    targets: list[str]                        # columns judged against the golden answer
    aspects: list[str] | None = None          # objective keys (None: the dataset config's)
    dataset: str | None = None                # dataset config (None: the inputs' template column)
    mode: str = "pairwise"                    # pairwise or rating
    limit: int = 0                            # rows per file (0: all)
    columns: dict[str, str] | None = None     # {"query": ..., "goldens": ...} column names
    objectives_file: str | None = None        # extra objectives (YAML)
    add_objective: list[str] | None = None    # extra objectives, key=description
    controls: bool | None = None              # control answers after the real rows (None: probe only)
    # how it is judged
    profile: str | None = None                # clean (default), paper or a YAML file
    judge_prompt: str | None = None           # overrides the profile's prompt set
    judge_model: str | None = None            # overrides the profile's model; "probe": the offline probe
    parser: str | None = None                 # overrides the profile's verdict parser
    temperature: float | None = None          # overrides the profile's decoding
    max_tokens: int | None = None
    seed: int = 0                             # positions and decoding seed
    both_orders: bool = False                 # judge each row in both candidate orders
    engine: Any = None                        # an engine object (None: from the registry by judge_model)
    base_url: str | None = None               # the OpenAI-compatible endpoint
    concurrency: int = 8
    max_retries: int = 6
    timeout: float = 60.0
    max_failures: int = 20                    # stop after this many failed calls
    # what it may cost
    max_cost: float = 0.0                     # stop spending beyond this (0: no cap)
    price_per_1k_input: float | None = None   # None: the registry's price
    price_per_1k_output: float | None = None
    # where it goes and how it runs
    use_cache: bool = True
    cache_path: str | Path | None = None      # None: <output_dir>/judge_cache.sqlite
    resume: bool = False
    overwrite: bool = False                   # judge into a folder holding another judge's run
    dry_run: bool = False                     # plan only: calls, cached, estimated cost
    progress: bool = True
