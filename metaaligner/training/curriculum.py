"""The aligner curriculum of the paper: (1) warm-up on the copy task, (2) equal-preference alignment,
(3) contrastive-preference alignment. Each step is one SFT stage (``train_sft``) started from the
previous step's weights; any step can be skipped or run alone.

Input: the folder ``build_aligner_dataset.py`` writes (FastChat JSON):
``warmup/train.json``, ``all_equal/train.json``, ``no_equal/{train,val}.json``, ``stats.json``.
Output folder ``OUT``:

    OUT/stages/<stage>/          each stage's model (or LoRA adapter), checkpoint-N/, stage_done.json
    OUT/                         the last stage's model files + metaaligner.json + training_log.jsonl

``metaaligner.json`` (read by ``metaaligner.aligner``) names the template, the objectives, the base
model and the data hash, so ``aligner_inference.py --aligner_path OUT`` needs no ``--template``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaaligner.cli import check, deprecated_aliases
from metaaligner.errors import MetaAlignerError

log = logging.getLogger(__name__)

META_FILE = "metaaligner.json"
LOG_FILE = "training_log.jsonl"
# stage -> (train file, val file) relative to the dataset folder
STAGE_FILES: dict[str, tuple[str, str | None]] = {
    "warmup": ("warmup/train.json", "no_equal/val.json"),
    "equal": ("all_equal/train.json", "no_equal/val.json"),
    "contrastive": ("no_equal/train.json", "no_equal/val.json"),
}
STAGES = tuple(STAGE_FILES)


@dataclass
class CurriculumConfig:
    """What to train on and where; the optimisation settings are ``SFTStageConfig``'s."""

    data_dir: str = field(metadata={"help": "Output folder of build_aligner_dataset.py (warmup/, all_equal/, no_equal/, stats.json)."})
    output_dir: str = field(metadata={"help": "Where the aligner goes: OUT/stages/<stage>/ per step, the final model + metaaligner.json in OUT."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "Base causal LM (path or hub name); default: the embedded SmolLM2-135M-Instruct. May be a LoRA adapter folder of an earlier run."})
    stages: str = field(default="warmup,equal,contrastive", metadata={"help": "Comma-separated steps to run, in curriculum order (warmup, equal, contrastive); each starts from the previous one's weights."})
    resume: bool = field(default=False, metadata={"help": "Skip finished stages and continue the current one from its last complete checkpoint (weights, optimizer, scheduler, data position; an incomplete later one is skipped with a warning); refused, naming each difference (old -> new), when the global batch, learning rate, schedule, seed, model or training data differ."})
    overwrite: bool = field(default=False, metadata={"help": "Start over in an --output_dir that holds an earlier run: its stages/ folder, training log and metaaligner.json are deleted and every stage trains afresh."})
    template: str | None = field(default=None, metadata={"help": "Template recorded in metaaligner.json; default: the one in <data_dir>/stats.json."})
    dataset: str | None = field(default=None, metadata={"help": "Dataset config (hh-rlhf, ultrafeedback, imhi or YAML) giving template/objectives when <data_dir>/stats.json lacks them.", **deprecated_aliases("--dataset_config", "--dataset-config")})
    max_train_items: int = field(default=0, metadata={**check(ge=0), "help": "Use at most N training items per stage (seeded sample; 0: all)."})
    max_eval_items: int = field(default=32, metadata={**check(ge=0), "help": "Evaluate each stage (once, at its end) on at most N validation items (seeded sample; 0: all). The cap keeps short runs short: a full val set took 30 s-4 min per stage on CPU."})
    stage_max_items: str | None = field(default=None, metadata={"help": "Per-stage caps on training items, e.g. 'warmup=100,contrastive=400' (others use --max_train_items)."})
    stage_max_steps: str | None = field(default=None, metadata={"help": "Per-stage step overrides, e.g. 'warmup=20,equal=20,contrastive=80' (others use --max_steps)."})
    no_eval: bool = field(default=False, metadata={"help": "Skip evaluation on no_equal/val.json."})

    def stage_list(self) -> list[str]:
        return parse_stages(self.stages)


def parse_stages(value: str | list[str]) -> list[str]:
    from metaaligner.cli import split_csv

    names = split_csv(value)
    if not names:
        raise MetaAlignerError(f"--stages is empty; choose from {','.join(STAGES)}")
    unknown = [n for n in names if n not in STAGE_FILES]
    if unknown:
        raise MetaAlignerError(f"unknown stage(s) {unknown}; choose from {','.join(STAGES)}")
    if len(set(names)) != len(names):
        raise MetaAlignerError(f"--stages repeats a stage: {names}")
    order = [s for s in STAGES if s in names]
    if order != names:
        raise MetaAlignerError(f"--stages must follow the curriculum order {','.join(STAGES)}, got {','.join(names)}")
    return names


def parse_stage_steps(value: str | None, flag: str = "--stage_max_steps") -> dict[str, int]:
    """'warmup=20,contrastive=80' -> {"warmup": 20, "contrastive": 80}."""
    from metaaligner.cli import split_csv

    out: dict[str, int] = {}
    for spec in split_csv(value):
        name, _, steps = spec.partition("=")
        if name not in STAGE_FILES or not steps.strip().lstrip("-").isdigit():
            raise MetaAlignerError(f"{flag}: expected stage=N with stage in {STAGES}, got {spec!r}")
        out[name] = int(steps)
    return out


def data_sha256(data_dir: str | Path, stages: list[str]) -> str:
    """sha256 over the files the run read (relative name + bytes, sorted by name)."""
    data_dir = Path(data_dir)
    names = sorted({f for s in stages for f in STAGE_FILES[s] if f and (data_dir / f).exists()})
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\x00")
        digest.update((data_dir / name).read_bytes())
        digest.update(b"\x00")
    return digest.hexdigest()


def dataset_meta(data_dir: str | Path, template: str | None = None, dataset_config: str | None = None) -> dict[str, Any]:
    """Template and objectives: flags first, then ``stats.json`` of the dataset stage, then the
    dataset config. Objectives are recorded as keys and as their descriptions."""
    stats_path = Path(data_dir) / "stats.json"
    stats: dict[str, Any] = {}
    if stats_path.exists():
        try:
            stats = json.loads(stats_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise MetaAlignerError(f"{stats_path}: not JSON ({exc.msg})") from None
    cfg = None
    from metaaligner.registry.datasets import available
    from metaaligner.registry.templates import TEMPLATES

    # values read from data name shipped configs only, never a path (issue 16)
    if not template and stats.get("template") is not None and str(stats["template"]) not in TEMPLATES:
        raise MetaAlignerError(f"{stats_path}: template {stats['template']!r} is not a shipped one "
                               f"({', '.join(sorted(TEMPLATES))}); pass --template")
    name = dataset_config or (stats.get("config") if str(stats.get("config")) in available() else None)
    if name:
        from metaaligner.registry.datasets import load_dataset_config

        try:
            cfg = load_dataset_config(name)
        except MetaAlignerError:
            if dataset_config:
                raise
    tpl = template or stats.get("template") or (cfg.template if cfg else None)
    if not tpl:
        raise MetaAlignerError(f"no template known for {data_dir}: it has no stats.json naming one; "
                               "pass --template or --dataset")
    from metaaligner.registry.templates import get_template

    get_template(tpl)  # fails early on an unknown name
    keys = list(stats.get("objectives") or (cfg.objectives if cfg else []))
    descriptions: list[str] = []
    if keys:
        from metaaligner.registry.objectives import ObjectiveRegistry

        try:  # keys the built-in registry knows; objectives added by file/flag keep their keys only
            descriptions = ObjectiveRegistry.builtin().descriptions(keys, cfg.objective_group if cfg else None)
        except MetaAlignerError:
            descriptions = []
    return {"template": tpl, "objectives": keys, "objective_descriptions": descriptions,
            "dataset": cfg.name if cfg else stats.get("config"),
            "objective_group": cfg.objective_group if cfg else None}


def load_stage_items(data_dir: str | Path, stage: str, max_train: int = 0, max_eval: int = 0,
                     seed: int = 0, with_eval: bool = True) -> tuple[list[dict], list[dict] | None]:
    from metaaligner.io import read_fastchat

    train_name, val_name = STAGE_FILES[stage]
    path = Path(data_dir) / train_name
    if not path.exists():
        raise MetaAlignerError(f"stage {stage!r} needs {path} (run build_aligner_dataset.py first)")
    train = read_fastchat(path)
    if not train:
        raise MetaAlignerError(f"{path}: no items for stage {stage!r}; skip it with --stages")
    if max_train and len(train) > max_train:
        train = random.Random(f"train|{stage}|{seed}").sample(train, max_train)
    val = None
    if with_eval and val_name and (Path(data_dir) / val_name).exists():
        val = read_fastchat(Path(data_dir) / val_name) or None
        if val and max_eval and len(val) > max_eval:
            val = random.Random(f"val|{seed}").sample(val, max_eval)
    return train, val


def write_aligner_meta(folder: str | Path, meta: dict[str, Any]) -> Path:
    from metaaligner.io import write_json

    path = Path(folder) / META_FILE
    write_json(path, meta)
    return path


def read_aligner_meta(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / META_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def portable_base_name(model_name_or_path: str | None) -> str:
    """'embedded' for the embedded model (its cache path differs per machine), else as given."""
    from metaaligner.models import CONVERTED_NAME, EMBEDDED_NAMES

    if model_name_or_path is None or str(model_name_or_path).strip().lower() in EMBEDDED_NAMES:
        return "embedded"
    if Path(str(model_name_or_path)).name == CONVERTED_NAME:
        return "embedded"
    return str(model_name_or_path)


def _root_base(model_name_or_path: str | None) -> str:
    """The base model at the bottom of a chain of adapters / earlier aligner runs."""
    if model_name_or_path and Path(model_name_or_path).is_dir():
        meta = read_aligner_meta(model_name_or_path)
        if meta and meta.get("base_model"):
            return meta["base_model"]
        adapter = Path(model_name_or_path) / "adapter_config.json"
        if adapter.exists():
            base = json.loads(adapter.read_text()).get("base_model_name_or_path")
            return portable_base_name(base)
    return portable_base_name(model_name_or_path)


def make_adapter_portable(folder: str | Path) -> None:
    """Adapters trained on the embedded model record its per-machine cache path; store 'embedded'."""
    path = Path(folder) / "adapter_config.json"
    if not path.exists():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if portable_base_name(base) == "embedded" and base != "embedded":
        config["base_model_name_or_path"] = "embedded"
        from metaaligner.io import write_json

        write_json(path, config)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _barrier() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    except ImportError:
        pass


def _run_stages(curriculum: CurriculumConfig, sft: "SFTStageConfig", stages: list[str], data_dir: Path,  # noqa: F821
                out: Path, log_path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """Train (or, with --resume, skip when finished with these settings) each stage from the previous
    one's weights; (each stage's summary, the last stage's folder)."""
    from dataclasses import replace

    from metaaligner.training.sft import check_finished_stage, stage_done, train_sft

    stage_steps = parse_stage_steps(curriculum.stage_max_steps)
    stage_items = parse_stage_steps(curriculum.stage_max_items, "--stage_max_items")
    current = curriculum.model_name_or_path
    summaries = []
    for stage in stages:
        stage_dir = out / "stages" / stage
        train, val = load_stage_items(data_dir, stage, stage_items.get(stage, curriculum.max_train_items),
                                      curriculum.max_eval_items,
                                      seed=sft.seed, with_eval=not curriculum.no_eval)
        config = replace(sft, max_steps=stage_steps[stage]) if stage in stage_steps else sft
        done = stage_done(stage_dir) if curriculum.resume and not curriculum.overwrite else None
        if done is not None:
            check_finished_stage(stage_dir, current, train, config)
            print(f"[{stage}] already finished ({done.get('steps')} steps); skipping (--resume)", flush=True)
        else:
            train_sft(current, train, val, str(stage_dir), config, stage, str(log_path), resume=curriculum.resume,
                      overwrite=curriculum.overwrite)
        summaries.append({k: v for k, v in (stage_done(stage_dir) or {}).items() if k != "config"})
        current = str(stage_dir)
    return summaries, current


def train_curriculum(curriculum: CurriculumConfig, sft: "SFTStageConfig") -> dict[str, Any]:  # noqa: F821
    """Run the requested stages in order; return the summary (also written to metaaligner.json)."""
    from metaaligner.training.common import read_device_hours
    from metaaligner.training.sft import copy_model_files

    stages = curriculum.stage_list()
    data_dir = Path(curriculum.data_dir)
    if not data_dir.is_dir():
        raise MetaAlignerError(f"--data_dir {data_dir} is not a folder (the output of build_aligner_dataset.py)")
    meta = dataset_meta(data_dir, curriculum.template, curriculum.dataset)
    out = Path(curriculum.output_dir)
    log_path = out / LOG_FILE
    if not curriculum.resume and not curriculum.overwrite and (out / META_FILE).exists():
        raise MetaAlignerError(f"{out} already holds a trained aligner; pass --resume, --overwrite or a new "
                               "--output_dir")
    if curriculum.overwrite and _is_main():  # the earlier run's stages, log and card
        import shutil

        if (out / "stages").is_dir() and not (out / "stages").is_symlink():
            shutil.rmtree(out / "stages")
        for path in (log_path, out / META_FILE):
            if path.is_file() and not path.is_symlink():
                path.unlink()
    _barrier()
    started = time.time()
    summaries, current = _run_stages(curriculum, sft, stages, data_dir, out, log_path)
    final = {
        **{k: meta[k] for k in ("template", "objectives", "objective_descriptions", "dataset", "objective_group")},
        "base_model": _root_base(curriculum.model_name_or_path),
        "data_sha256": data_sha256(data_dir, stages),
        "data_dir": str(data_dir),
        "stages": summaries,
        "lora": bool(sft.lora or (Path(current) / "adapter_config.json").exists()),
        "training": sft.to_dict(),
        "device_hours": read_device_hours(log_path),
        "wall_s": round(time.time() - started, 1),
    }
    if _is_main():
        copy_model_files(current, out)
        make_adapter_portable(out)
        write_aligner_meta(out, final)
        print(f"train_aligner: stages {','.join(stages)} done in {final['wall_s']} s "
              f"(device hours {final['device_hours']}); aligner -> {out} (template {meta['template']})", flush=True)
    _barrier()
    return final
