"""Training resume with a fingerprint, the same rule in every trainer (metaaligner.training.common.prepare_resume):
a resume with another global batch, learning rate, schedule, model or training data is refused naming each
difference (old -> new); an incomplete last checkpoint is skipped for the last complete one; a folder holding an
earlier run's checkpoints is refused without --resume, and --overwrite starts over."""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from metaaligner.errors import MetaAlignerError

PAIRS = [{"prompt": "\n\nHuman: How do I boil an egg?\n\nAssistant:", "chosen": " Put it in boiling water.",
          "rejected": " No."},
         {"prompt": "\n\nHuman: Tell me a joke.\n\nAssistant:", "chosen": " Why did the chicken cross the road?",
          "rejected": " I will not."}]
ITEMS = [{"prompt": f"Q: {i} | Edit: ", "completion": f"answer number {i}"} for i in range(4)]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory, tiny_llama_dir):
    """A tiny random LlamaForSequenceClassification (one score) with the tiny model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig.from_pretrained(tiny_llama_dir, num_labels=1)
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("tiny-rm")
    LlamaForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(out)
    return out


def _selection(tiny_llama_dir, folder: Path) -> Path:
    """A select_tokens.py output over PAIRS: every response's first two tokens selected."""
    from metaaligner.methods.sepo import tokenize_pair, tokenizer_fingerprint
    from metaaligner.models import load_tokenizer

    tok = load_tokenizer(str(tiny_llama_dir), padding_side="right")
    path = folder / "selected.jsonl"
    rows = []
    for i, pair in enumerate(PAIRS * 2):
        _, c, r = tokenize_pair(tok, pair["prompt"], pair["chosen"], pair["rejected"])
        rows.append({"row_id": i, **pair, "chosen_token_rewards": [0.0] * len(c), "rejected_token_rewards":
                     [0.0] * len(r), "chosen_selected": [0, 1], "rejected_selected": [0, 1]})
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    (folder / "selected.meta.json").write_text(json.dumps({"max_length": 64, "add_eos": True,
                                                           "tokenizer_fingerprint": tokenizer_fingerprint(tok)}))
    return path


def _length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def _run(kind, tiny_llama_dir, tiny_rm_dir, out: Path, lr: float = 1e-3, **flags):
    """Train ``kind`` 2 steps with a checkpoint after each (``flags``: resume, overwrite)."""
    common = dict(max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=1, save_steps=1,
                  logging_steps=1, learning_rate=lr, warmup_ratio=0.0)
    log = str(out) + ".jsonl"
    tiny = str(tiny_llama_dir)
    if kind == "sft":
        from metaaligner.training.sft import SFTStageConfig, train_sft

        return train_sft(tiny, ITEMS, None, str(out), SFTStageConfig(**common), "sft", log, **flags)
    if kind == "dpo":
        from metaaligner.training.dpo import DPOTrainConfig, train_dpo

        return train_dpo(tiny, PAIRS * 2, None, out, DPOTrainConfig(max_length=64, **common), "dpo", log, **flags)
    if kind == "reward_model":
        from metaaligner.training.reward_model import RewardModelTrainConfig, train_reward_model

        return train_reward_model(str(tiny_rm_dir), PAIRS * 2, None, out,
                                  RewardModelTrainConfig(max_length=64, stats_samples=2, **common), "rm", log, **flags)
    if kind == "morlhf":
        from metaaligner.training.morlhf import MORLHFTrainConfig, train_morlhf

        config = MORLHFTrainConfig(num_generations=2, max_new_tokens=3, **common)
        return train_morlhf(tiny, [p["prompt"] for p in PAIRS], [], [1.0], out, config, "morlhf", log,
                            reward_funcs=[_length_reward], **flags)
    from metaaligner.training.sepo_trainer import SePOTrainConfig, train_sepo

    return train_sepo(tiny, _selection(tiny_llama_dir, out.parent), out, SePOTrainConfig(max_length=64, **common),
                      log, **flags)


def _logged_steps(out: Path) -> list[int]:
    lines = Path(str(out) + ".jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


@pytest.mark.parametrize("kind", ["sft", "dpo", "reward_model", "morlhf", "sepo"])
def test_every_trainer_checks_its_fingerprint_and_skips_an_incomplete_checkpoint(
        kind, tiny_llama_dir, tiny_rm_dir, tmp_path, caplog, capsys):
    out = tmp_path / kind
    _run(kind, tiny_llama_dir, tiny_rm_dir, out)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert json.loads((out / "resume_settings.json").read_text())["learning_rate"] == 1e-3
    summary = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"[{kind if kind != 'reward_model' else 'rm'}]")]
    assert len(summary) == 1 and re.search(r", 2 steps, train loss -?\d+\.\d{4}.*, peak RSS \d+\.\d\d GiB -> ", summary[0])
    # another run into the same folder, without --resume: refused (a later --resume would take up these checkpoints)
    with pytest.raises(MetaAlignerError, match=rf"^{re.escape(str(out))} holds checkpoints of an earlier run "
                                               r"\(checkpoint-2, checkpoint-1\); pass --resume to continue it or "
                                               r"--overwrite to start over$"):
        _run(kind, tiny_llama_dir, tiny_rm_dir, out)
    # another learning rate: refused, old -> new
    with pytest.raises(MetaAlignerError, match=r"^--resume from .*checkpoint-2: other settings than it was trained "
                                               r"with \(learning rate 0\.001 -> 0\.01\); resume with the checkpoint's "
                                               r"settings, or pass --overwrite to start over"):
        _run(kind, tiny_llama_dir, tiny_rm_dir, out, lr=1e-2, resume=True)
    # killed while saving checkpoint-2: resumed from checkpoint-1, step 2 trained again
    (out / "checkpoint-2" / "trainer_state.json").unlink()
    with caplog.at_level(logging.WARNING):
        _run(kind, tiny_llama_dir, tiny_rm_dir, out, resume=True)
    warned = [r.getMessage() for r in caplog.records if "is incomplete" in r.getMessage()]
    assert warned == [f"{out / 'checkpoint-2'} is incomplete (no readable trainer_state.json: killed while saving?); "
                      "skipping it for an earlier checkpoint"]
    assert _logged_steps(out) == [1, 2, 2]


def test_sft_names_batch_data_model_and_schedule_and_overwrite_starts_over(tiny_llama_dir, tmp_path):
    from dataclasses import replace

    from metaaligner.training.sft import SFTStageConfig, train_sft

    cfg = SFTStageConfig(max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=1, save_steps=1,
                         logging_steps=1, learning_rate=1e-3)
    out, log = tmp_path / "s", str(tmp_path / "s.jsonl")
    train_sft(str(tiny_llama_dir), ITEMS, None, str(out), cfg, "s", log)
    changed = replace(cfg, per_device_train_batch_size=1, gradient_accumulation_steps=4, lr_scheduler_type="linear")
    other_items = ITEMS[:3] + [{"prompt": "Q: 3 | Edit: ", "completion": "another answer"}]
    with pytest.raises(MetaAlignerError) as err:
        train_sft(str(tiny_llama_dir), other_items, None, str(out), changed, "s", log, resume=True)
    message = str(err.value)
    assert ("global batch 2 (per-device 2 x accumulation 1 x 1 processes) -> 4 (per-device 1 x accumulation 4 x 1 "
            "processes); schedule cosine -> linear; training data sha256 ") in message
    old, new = re.search(r"training data sha256 (\w{12}) -> sha256 (\w{12})\)", message).groups()
    assert old != new
    # 2 processes x 1 == 1 process x 2: the global batch, not its parts, must match
    same_batch = replace(cfg, per_device_train_batch_size=1, gradient_accumulation_steps=2)
    moved = tmp_path / "moved"
    shutil.copytree(tiny_llama_dir, moved)
    with pytest.raises(MetaAlignerError, match=rf"\(model {re.escape(str(tiny_llama_dir))} -> "
                                               rf"{re.escape(str(moved))}\)"):
        train_sft(str(moved), ITEMS, None, str(out), same_batch, "s", log, resume=True)
    # --overwrite: the earlier checkpoints and records go, the new settings are recorded
    (out / "checkpoint-7").mkdir()                     # even one left incomplete
    train_sft(str(tiny_llama_dir), other_items, None, str(out), changed, "s", log, overwrite=True)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    saved = json.loads((out / "resume_settings.json").read_text())
    assert (saved["global_batch"], saved["lr_scheduler_type"]) == (4, "linear")
    assert json.loads((out / "stage_done.json").read_text())["resumed_from"] is None


def test_fingerprint_compares_the_global_batch_and_trainer_settings_by_name():
    from metaaligner.training.common import fingerprint_differences, training_fingerprint

    def args(**kw):
        base = dict(per_device_train_batch_size=2, gradient_accumulation_steps=1, world_size=2, learning_rate=1e-5,
                    lr_scheduler_type="cosine", warmup_steps=0.05, max_steps=-1, num_train_epochs=2.0,
                    weight_decay=0.0, optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999, seed=42)
        return SimpleNamespace(**{**base, **kw})

    a = training_fingerprint(args(), "m", ITEMS, beta=0.1)
    assert fingerprint_differences(a, training_fingerprint(args(world_size=1, gradient_accumulation_steps=2), "m",
                                                           ITEMS, beta=0.1)) == []
    assert fingerprint_differences(a, training_fingerprint(args(warmup_steps=0.1, num_train_epochs=3.0), "m",
                                                           ITEMS, beta=0.2)) == [
        "warm-up 0.05 -> 0.1", "epochs 2.0 -> 3.0", "beta 0.1 -> 0.2"]
    # a record written before a setting was fingerprinted is not compared on it
    older = {k: v for k, v in a.items() if k not in ("optim", "adam_betas")}
    assert fingerprint_differences(older, training_fingerprint(args(optim="sgd"), "m", ITEMS, beta=0.1)) == []


def test_train_aligner_overwrite_retrains_a_finished_aligner(tiny_llama_dir, tmp_path):
    from metaaligner.cli import parse
    from metaaligner.io import fastchat_item, write_fastchat, write_json
    from metaaligner.testing.scripts import load_script

    mod = load_script("training/train_aligner.py")
    data = tmp_path / "data"
    write_fastchat(data / "no_equal" / "train.json", [fastchat_item(str(n), i["prompt"], i["completion"])
                                                      for n, i in enumerate(ITEMS)])
    write_json(data / "stats.json", {"template": "hh-rlhf", "config": "hh-rlhf", "objectives": ["harmlessness"]})
    argv = ["--data_dir", str(data), "--output_dir", str(tmp_path / "a"), "--model_name_or_path", str(tiny_llama_dir),
            "--stages", "contrastive", "--max_steps", "1", "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "1", "--save_steps", "1", "--no_eval"]
    mod.main(*parse(mod.make_parser(), argv))
    with pytest.raises(MetaAlignerError, match="already holds a trained aligner; pass --resume, --overwrite"):
        mod.main(*parse(mod.make_parser(), argv + ["--learning_rate", "1e-3"]))
    # a finished stage is skipped by --resume only when it was trained with these settings
    with pytest.raises(MetaAlignerError, match=r"^--resume: .*contrastive was finished with other settings "
                                               r"\(learning rate 1e-05 -> 0\.001\); resume with its settings, or "
                                               r"pass --overwrite to train it again$"):
        mod.main(*parse(mod.make_parser(), argv + ["--learning_rate", "1e-3", "--resume"]))
    assert mod.main(*parse(mod.make_parser(), argv + ["--resume"]))["stages"][0]["steps"] == 1
    # --overwrite, now with LoRA: the earlier run's full model does not stay beside the new adapter
    assert (tmp_path / "a" / "model.safetensors").exists()
    summary = mod.main(*parse(mod.make_parser(), argv + ["--learning_rate", "1e-3", "--overwrite", "--lora"]))
    assert summary["training"]["learning_rate"] == 1e-3 and summary["stages"][0]["resumed_from"] is None
    for folder in (tmp_path / "a", tmp_path / "a" / "stages" / "contrastive"):
        assert (folder / "adapter_model.safetensors").exists() and not (folder / "model.safetensors").exists()
    records = [json.loads(line) for line in (tmp_path / "a" / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1]      # the earlier run's log went with it
