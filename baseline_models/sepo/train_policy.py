r"""SePO step 3: train the policy on the selected key tokens, reference-free.

    loss = -log sigmoid(gamma * (mean_{t in S_w} log pi_theta(y_w,t) - mean_{t in S_l} log pi_theta(y_l,t)))

S_w / S_l are the selected positions of ``select_tokens.py``; ``--ratio`` re-selects any k from the
stored rewards without re-scoring. Defaults as the paper: lr 5e-7, 1 epoch, gamma 1 (the published
form). The policy may be larger than the oracle (weak-to-strong) but must share its tokenizer.

    python baseline_models/sepo/train_policy.py --input runs/sepo/selected.jsonl \
        --model_name_or_path runs/sft --output_dir runs/sepo/policy
    python baseline_models/sepo/train_policy.py --input runs/sepo/selected.jsonl --ratio 0.5 \
        --output_dir runs/sepo/policy_k05 --max_steps 20 --learning_rate 5e-6   # embedded SmolLM2 demo
    accelerate launch --num_processes 8 baseline_models/sepo/train_policy.py --input selected.jsonl \
        --model_name_or_path BIG_SFT --output_dir runs/sepo/policy --deepspeed configs/deepspeed/zero3.json

Writes the policy to ``--output_dir`` (an adapter folder with ``--lora``) and the JSONL log (loss,
margin, accuracy, selected tokens, tokens/s, device hours) to ``OUT/train_log.jsonl``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner.cli import check, make_parser as _make_parser, parse, run_main
from metaaligner.training.common import overwrite_field, resume_field
from metaaligner.training.sepo_trainer import SePOTrainConfig


@dataclass
class TrainPolicyConfig:
    input: str = field(metadata={"help": "select_tokens.py output (JSONL with token rewards and selections)"})
    output_dir: str = field(metadata={"help": "folder of the trained policy"})
    model_name_or_path: str = field(default="embedded", metadata={"help": "the policy's starting point (SFT model); "
                                                                        "default the embedded SmolLM2"})
    ratio: float | None = field(default=None, metadata={**check(gt=0.0, le=1.0),
                                                        "help": "re-select k from the stored rewards (default: use "
                                                                "the selection in the file)"})
    eval_input: str | None = field(default=None, metadata={"help": "held-out select_tokens.py output"})
    limit: int | None = field(default=None, metadata={**check(ge=1), "help": "at most N training pairs"})
    lora: bool = field(default=False, metadata={"help": "train a LoRA adapter"})
    resume: bool = resume_field()
    overwrite: bool = overwrite_field()
    log_path: str | None = field(default=None, metadata={"help": "JSONL log (default OUT/train_log.jsonl)"})


def make_parser():
    return _make_parser(TrainPolicyConfig, SePOTrainConfig, description=__doc__)


def main(config: TrainPolicyConfig, train: SePOTrainConfig) -> None:
    from pathlib import Path

    from metaaligner.training.sepo_trainer import train_sepo

    log_path = config.log_path or str(Path(config.output_dir) / "train_log.jsonl")
    out = train_sepo(config.model_name_or_path, config.input, config.output_dir, train, log_path,
                     ratio=config.ratio, eval_selection_path=config.eval_input, lora=config.lora,
                     resume=config.resume, limit=config.limit, overwrite=config.overwrite)
    print(f"train_policy: -> {out} (log {log_path})")


if __name__ == "__main__":
    sys.exit(run_main(main, *parse(make_parser())))
