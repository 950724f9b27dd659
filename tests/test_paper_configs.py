"""The paper's recipes as data (issue 12, points 6 and 8): the training configs carry the released
README's numbers and parse into the trainers' config dataclasses; every paper config lists Table 2's
10 policies and Table 3's Aligner-7B and Self-Refinement rows as ordinary stage commands."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from metaaligner import cli
from metaaligner.paper import check_flags, load_paper_config
from metaaligner.release_samples import read_manifest

REPO = Path(__file__).resolve().parent.parent
TABLE2_POLICIES = ["LLaMA2-Chat-7B", "LLaMA2-Chat-13B", "LLaMA2-Chat-70B", "Gemma-instruct-2B", "Gemma-instruct-7B",
                   "Vicuna-7B", "Vicuna-13B", "Vicuna-33B", "GPT-3.5-Turbo", "Claude-3-Sonnet"]

FOLDERS = {"hh-rlhf": "HH-RLHF_model_output", "ultrafeedback": "UltraFeedback_model_output"}

# the release's samples/IMHI_model_output/ folders (built into IMHI_POLICIES by the samples_full stage)
RELEASED_IMHI = ["Gemma_instruct_2B", "Gemma_instruct_7B", "Mentallama-13B", "Mentallama-33B", "Mentallama-7B",
                 "Vicuna_33B", "llama2-chat-13B", "llama2-chat-70B", "llama2-chat-7B", "sft_baseline_13B",
                 "vicuna_13B", "vicuna_7B"]


def _parse(script: str, argv: list[str]):
    path = REPO / script
    name = f"_paper_cfg_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        return cli.parse(module.make_parser(), argv)
    finally:
        sys.modules.pop(name, None)


def _values(config, keys: dict) -> dict:
    return {k: getattr(config, k) for k in keys}


ALIGNER = {"learning_rate": 1e-5, "weight_decay": 1e-5, "warmup_ratio": 0.05, "lr_scheduler_type": "cosine",
           "num_train_epochs": 2.0, "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2,
           "gradient_accumulation_steps": 64, "gradient_checkpointing": True, "max_length": 4096,
           "logging_steps": 1, "save_total_limit": 20, "seed": 42, "prompt_format": "vicuna_v1.1"}
SFT = {**ALIGNER, "num_train_epochs": 3.0, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4}
# the README's flags, then what the released train_cdpo.py sets in code: warm-up ceil(0.03 x steps), cosine,
# Adam betas (0.9, 0.95), --l2 0.0, --seed 42
CDPO = {"beta": 0.1, "learning_rate": 5e-7, "num_train_epochs": 1.0, "per_device_train_batch_size": 2,
        "max_length": 4096, "gradient_checkpointing": True, "logging_steps": 1,
        "deepspeed": "configs/deepspeed/zero3.json", "gradient_accumulation_steps": 8,
        "warmup_ratio": 0.03, "lr_scheduler_type": "cosine", "adam_beta1": 0.9, "adam_beta2": 0.95,
        "weight_decay": 0.0, "seed": 42}


def test_training_recipes_parse_into_the_trainer_configs(tmp_path):
    _, stage = _parse("training/train_aligner.py", ["--config_file", "configs/training/paper.yaml",
                                                    "--data_dir", str(tmp_path), "--output_dir", str(tmp_path)])
    assert _values(stage, ALIGNER) == ALIGNER
    assert stage.per_device_train_batch_size * stage.gradient_accumulation_steps * 4 == 512  # README: 4 GPUs
    _, sft = _parse("baseline_models/sft/train_sft.py", ["--config_file", "configs/training/paper-sft.yaml",
                                                         "--data_dir", str(tmp_path), "--output_dir", str(tmp_path)])
    assert _values(sft, SFT) == SFT
    assert sft.per_device_train_batch_size * sft.gradient_accumulation_steps * 2 == 512  # README: 2 GPUs
    _, dpo = _parse("baseline_models/cdpo/train_cdpo.py", ["--config_file", "configs/training/paper-cdpo.yaml",
                                                           "--data_dir", str(tmp_path), "--output_dir", str(tmp_path)])
    assert _values(dpo, CDPO) == CDPO
    assert (REPO / dpo.deepspeed).is_file()
    trl = dpo.to_trl(str(tmp_path), device="cpu")   # what reaches the optimizer and the scheduler
    assert (trl.adam_beta1, trl.adam_beta2, trl.warmup_steps, trl.weight_decay, trl.seed) == (0.9, 0.95, 0.03, 0.0, 42)


def test_every_training_number_names_its_source():
    for name in ("paper.yaml", "paper-sft.yaml", "paper-cdpo.yaml"):
        for line in (REPO / "configs/training" / name).read_text().splitlines():
            if line and not line.startswith(("#", " ")) and ":" in line:
                key = line.split(":")[0]
                assert "#" in line or key in ("eval_steps", "save_steps", "gradient_accumulation_steps"), (name, line)


@pytest.mark.parametrize("name", ["hh-rlhf", "ultrafeedback", "imhi"])
def test_paper_configs_list_table2s_ten_policies(name):
    path = REPO / "configs/paper" / f"{name}.yaml"
    policies = yaml.safe_load(path.read_text())["policies"]
    assert list(policies) == TABLE2_POLICIES
    run = load_paper_config(path, "7B")
    stages = {s.name: s for s in run.stages}
    released = {e.path for e in read_manifest()}
    for policy, source in policies.items():
        if "file" in source:  # the release's file: shipped, or fetched by scripts/fetch_release_samples.py
            assert source["file"].startswith("samples/") and source["file"].endswith(".csv.gz"), (name, policy)
            assert source["file"][len("samples/"):-len(".gz")] in released, (name, policy)
            assert "stage" in source or (REPO / source["file"]).is_file(), (name, policy)
        if "release" in source:  # IMHI: released folders, built with queries by samples_full
            assert source["release"] in RELEASED_IMHI, (name, policy)
        if "stage" in source:
            stage = stages[source["stage"]]
            assert stage.script == "inference/policy_generation.py" and check_flags(stage) == []
            assert (stage.args["model"], stage.args["model_output_path"]) == (source["model"], f"runs/paper/{name}-policies")
    assert stages["align_generated"].args["data_dir"] == f"runs/paper/{name}-policies"
    train = stages["train_aligner"]
    assert train.launcher == ("env TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 accelerate launch --config_file "
                              "configs/accelerate/fsdp.yaml --num_processes 4")
    assert "deepspeed" not in train.args and "per_device_train_batch_size" not in train.args


def test_hh_rlhf_generation_stage_is_the_released_generation():
    run = load_paper_config(REPO / "configs/paper/hh-rlhf.yaml", "13B")
    stage = next(s for s in run.stages if s.name == "policy_Vicuna-33B")
    assert stage.command("python") == (
        "python inference/policy_generation.py --data_dir samples/HH-RLHF_model_output/Claude-3.csv.gz "
        "--model_output_path runs/paper/hh-rlhf-policies --chat_template false --max_new_tokens 1024 "
        "--batch_size 32 --resume --profile paper --seed 0 --model lmsys/vicuna-33b-v1.3 --model_name Vicuna-33B")


@pytest.mark.parametrize("name", ["hh-rlhf", "ultrafeedback", "imhi"])
def test_release_decoding_where_the_release_ran_generate(name):
    """The MetaAligner and hub-policy stages decode as the release did (--profile paper, seeded); the API
    policies greedy (the release has no code for them); Aligner-7B and Self-Refinement keep our defaults."""
    run = load_paper_config(REPO / "configs/paper" / f"{name}.yaml", "7B")
    paper = sorted(s.name for s in run.stages if s.script.startswith("inference/")
                   and s.args.get("profile") == "paper" and s.args.get("seed") == 0)
    aligners = sorted(s.name for s in run.stages if s.script == "inference/aligner_inference.py"
                      and s.args["aligner_path"] == f"runs/paper/{name}-7B/aligner")
    policies = sorted(s.name for s in run.stages if s.name.startswith("policy_"))
    api = sorted(s.name for s in run.stages if s.name.startswith("policy_") and s.args.get("base_url"))
    assert paper == sorted(aligners + policies) and aligners and policies
    assert all(s.args["decoding"] == "greedy" for s in run.stages if s.name in api)
    assert all("decoding" not in s.args for s in run.stages if s.name in paper and s.name not in api)
    assert all("profile" not in s.args for s in run.stages if s.name in ("table3_aligner7b", "table3_self_refine"))


@pytest.mark.parametrize("name", ["hh-rlhf", "ultrafeedback"])
def test_table3_has_aligner7b_and_self_refinement(name):
    run = load_paper_config(REPO / "configs/paper" / f"{name}.yaml", "7B")
    stages = {s.name: s for s in run.stages}
    released = f"samples/{FOLDERS[name]}/llama2-chat-7B.csv.gz"  # used when fetched, else the generated one
    policy_file = released if (REPO / released).is_file() else f"runs/paper/{name}-policies/llama2-chat-7B.csv"
    out = f"runs/paper/{name}-7B/table3"
    aligner7b, refine = stages["table3_aligner7b"], stages["table3_self_refine"]
    assert (aligner7b.args["aligner_path"], aligner7b.args["aligned_model"], aligner7b.args["data_dir"],
            aligner7b.args["model_output_path"]) == ("aligner/aligner-7b-v1.0", "Aligner-7B", policy_file, out)
    assert (refine.args["self_refine"], refine.args["model"], refine.args["model_name"], refine.args["data_dir"],
            refine.args["model_output_path"]) == (True, "meta-llama/Llama-2-7b-chat-hf", "Self-Refinement", policy_file, out)
    assert stages["table3_metaaligner"].args["aligned_model"] == "MetaAligner"
    assert stages["judge_table3"].args["input"] == out
    assert stages["report"].args["table3_inputs"] == f"runs/paper/{name}-7B/judged_table3"
    for stage in stages.values():
        assert check_flags(stage) == [], stage.name


def _paper_run(name: str, root: Path):
    return load_paper_config(REPO / "configs/paper" / f"{name}.yaml", "7B", repo_root=root)


@pytest.mark.parametrize("name", ["hh-rlhf", "ultrafeedback"])
def test_every_table2_policy_has_a_released_file_used_whenever_present(name, tmp_path):
    """Issue 31, section 1: the release ships all 10 policies per dataset; a released file, once
    present, replaces its policy_* stage (and Table 3's input); while missing, the run says so."""
    policies = yaml.safe_load((REPO / "configs/paper" / f"{name}.yaml").read_text())["policies"]
    assert all("file" in source for source in policies.values()) and len(policies) == 10
    generated = {p: s for p, s in policies.items() if "stage" in s}
    assert len(generated) == 7
    run = _paper_run(name, tmp_path)  # nothing fetched: the 7 are regenerated, and the run says so
    said = {p.name: p.source(tmp_path) for p in run.policies}
    for policy, source in generated.items():
        assert said[policy] == (f"regenerated (released file missing: run scripts/fetch_release_samples.py) "
                                f"by stage {source['stage']}")
    assert run.skipped() == {}
    table3 = {s.name: s for s in run.stages}["table3_metaaligner"]
    assert table3.args["data_dir"] == f"runs/paper/{name}-policies/llama2-chat-7B.csv"
    for source in policies.values():  # fetched
        (tmp_path / source["file"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / source["file"]).write_bytes(b"")
    run = _paper_run(name, tmp_path)
    assert all(p.source(tmp_path) == f"released outputs ({p.file})" for p in run.policies)
    skipped = run.skipped()
    assert set(skipped) == {s["stage"] for s in generated.values()} | {"align_generated"}
    assert skipped["policy_llama2-chat-7B"] == (f"LLaMA2-Chat-7B: released outputs present "
                                                f"(samples/{FOLDERS[name]}/llama2-chat-7B.csv.gz)")
    table3 = {s.name: s for s in run.stages}["table3_self_refine"]
    assert table3.args["data_dir"] == f"samples/{FOLDERS[name]}/llama2-chat-7B.csv.gz"
    (tmp_path / policies["Vicuna-33B"]["file"]).unlink()  # one missing: it alone is generated, then aligned
    assert set(_paper_run(name, tmp_path).skipped()) == {s["stage"] for s in generated.values()} - {"policy_Vicuna-33B"}


def test_dry_run_says_per_policy_released_or_the_fetch_hint(tmp_path, monkeypatch, capsys):
    import metaaligner.paper as paper

    spec = importlib.util.spec_from_file_location("_run_paper_test", REPO / "scripts/run_paper.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    config = module.RunPaperConfig(config=str(REPO / "configs/paper/hh-rlhf.yaml"), dry_run=True)
    monkeypatch.setattr(paper, "REPO_ROOT", tmp_path)
    module.main(config)
    out = capsys.readouterr().out
    assert ("    Vicuna-7B: regenerated (released file missing: run scripts/fetch_release_samples.py) by stage "
            "policy_Vicuna-7B\n") in out
    assert ("    Claude-3-Sonnet: missing (released file samples/HH-RLHF_model_output/Claude-3.csv.gz not found: "
            "run scripts/fetch_release_samples.py)\n") in out  # shipped, so no stage regenerates it
    assert "[9/28] policy_Vicuna-7B (expected device hours" in out
    released = tmp_path / "samples/HH-RLHF_model_output/Vicuna-7B.csv.gz"
    released.parent.mkdir(parents=True)
    released.write_bytes(b"")
    module.main(config)
    out = capsys.readouterr().out
    assert "    Vicuna-7B: released outputs (samples/HH-RLHF_model_output/Vicuna-7B.csv.gz)\n" in out
    assert ("[9/28] policy_Vicuna-7B: skipped (Vicuna-7B: released outputs present "
            "(samples/HH-RLHF_model_output/Vicuna-7B.csv.gz))\n") in out
    sys.modules.pop(spec.name, None)


BASELINE_STAGES = ["sft_data", "train_sft", "table3_sft", "cdpo_data", "train_cdpo", "table3_cdpo",
                   "morlhf_reward_models", "train_morlhf", "table3_morlhf"]


@pytest.mark.parametrize("name", ["hh-rlhf", "ultrafeedback"])
def test_table3_baselines_in_one_command(name):
    """Issue 31 §6: Table 3's SFT, CDPO (the MODPO row) and MORLHF rows are stages of the paper
    configs, trained as the release did and run on the Table 3 policy's queries, their outputs judged
    by judge_table3 and their training logs read by the report."""
    run = load_paper_config(REPO / "configs/paper" / f"{name}.yaml", "7B")
    stages = {s.name: s for s in run.stages}
    assert all(stage in stages for stage in BASELINE_STAGES)
    order = [s.name for s in run.stages]
    assert order.index("train_sft") < order.index("train_cdpo") < order.index("judge_table3")
    base = f"runs/paper/{name}-7B/baselines"
    data = {"hh-rlhf": "runs/paper/hh-rlhf-7B/rewards.csv", "ultrafeedback": "data/ultrafeedback/rewards.csv"}[name]
    sft_input = {"hh-rlhf": data, "ultrafeedback": "data/ultrafeedback/completions.csv"}[name]
    assert stages["sft_data"].args == {"input": sft_input, "dataset": name, "output_dir": f"{base}/sft_data", "seed": 0,
                                       "conditioning_text": "released"}
    # the release's conditioning text in the data and, explicitly, at inference (baseline.json carries it too)
    for stage in ("sft_data", "cdpo_data", "table3_sft", "table3_cdpo"):
        assert stages[stage].args["conditioning_text"] == "released", stage
    assert "conditioning_text" not in stages["table3_morlhf"].args   # plain queries
    assert stages["train_sft"].args["config_file"] == "configs/training/paper-sft.yaml"
    assert stages["train_sft"].args["model_name_or_path"] == "meta-llama/Llama-2-7b-chat-hf"
    assert stages["train_sft"].launcher.endswith(" --num_processes 2")   # the README's --nproc_per_node=2
    assert (stages["train_cdpo"].args["config_file"], stages["train_cdpo"].args["model_name_or_path"]) == (
        "configs/training/paper-cdpo.yaml", f"{base}/sft")
    assert stages["cdpo_data"].args["input"] == data and stages["morlhf_reward_models"].args["input"] == data
    morlhf = stages["train_morlhf"].args
    assert (morlhf["normalize_rewards"], morlhf["learning_rate"], morlhf["beta"], morlhf["lora_r"], morlhf["lora_alpha"],
            morlhf["temperature"], morlhf["max_new_tokens"], morlhf["seed"]) == (False, 1e-5, 0.2, 64, 128, 0.7, 48, 8888)
    for stage, method, model in (("table3_sft", "SFT", "sft"), ("table3_cdpo", "MODPO", "cdpo"),
                                 ("table3_morlhf", "MORLHF", "morlhf/policy")):
        args = stages[stage].args
        assert (args["aligned_model"], args["aligner_path"], args["model_output_path"], args["data_dir"]) == (
            method, f"{base}/{model}", f"runs/paper/{name}-7B/table3", stages["table3_metaaligner"].args["data_dir"])
        assert (args["decoding"], args["seed"], args["max_new_tokens"]) == ("checkpoint", 0, 1024)
    assert stages["judge_table3"].args["input"] == f"runs/paper/{name}-7B/table3"
    assert stages["report"].args["training_logs"] == (
        f"MetaAligner=runs/paper/{name}-7B/aligner,SFT={base}/sft,MODPO={base}/cdpo,MORLHF={base}/morlhf")
    for stage in BASELINE_STAGES:   # every command parses with its script's own parser
        _parse(stages[stage].script, stages[stage].argv("python")[stages[stage].argv("python").index(
            stages[stage].script) + 1:])


@pytest.mark.parametrize("name", ["hh-rlhf", "ultrafeedback"])
def test_released_data_ablation_builds_algorithm1_as_released(name):
    run = load_paper_config(REPO / "configs/paper" / f"{name}.yaml", "7B", ablation="released_data")
    build = {s.name: s for s in run.stages}["build_aligner_dataset"]
    assert (build.args["algorithm1"], build.args["warmup"]) == ("released", "none")
    assert build.args["input"] == {"hh-rlhf": "runs/paper/hh-rlhf-7B/rewards.csv",
                                   "ultrafeedback": "data/ultrafeedback/completions.csv"}[name]
    assert {s.name: s for s in run.stages}["train_aligner"].args["stages"] == "equal,contrastive"
    assert load_paper_config(REPO / "configs/paper" / f"{name}.yaml", "7B").stages[
        [s.name for s in run.stages].index("build_aligner_dataset")].args["algorithm1"] == "ours"


def test_dry_run_shows_decoding_per_stage_and_the_profile(capsys):
    """Every generating stage says its decoding (flag, profile or default) and seed, the judge its
    decoding under its profile, the training stages their items' format."""
    from metaaligner.cli import parse, run_main

    spec = importlib.util.spec_from_file_location("_run_paper_settings", REPO / "scripts/run_paper.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    try:
        code = run_main(module.main, *parse(module.make_parser(), ["--config", "configs/paper/hh-rlhf.yaml",
                                                                   "--dry_run"]))
    finally:
        sys.modules.pop(spec.name, None)
    out = capsys.readouterr().out
    assert code == 0
    blocks = {b.split(" (", 1)[0].split("] ", 1)[1]: b for b in out.split("\n[")[1:]}
    checkpoint = ("decoding: checkpoint (profile paper; the model's own generation_config.json, as the release's "
                  "bare model.generate applied it), seed 0")
    for stage in ("align", "table3_metaaligner", "policy_Vicuna-7B"):
        assert f"    {checkpoint}\n    profile: paper\n" in blocks[stage], stage
    assert "    decoding: greedy (profile clean, the default; argmax), seed 0\n" in blocks["table3_aligner7b"]
    assert ("    decoding: checkpoint (--decoding; the model's own generation_config.json, as the release's bare "
            "model.generate applied it), seed 0\n") in blocks["table3_sft"]
    assert ("    judge decoding: the API's defaults (no temperature, max_tokens or seed sent) (profile paper, model "
            "gpt-4-turbo-preview)\n    profile: paper\n") in blocks["judge"]
    assert "    training items: vicuna_v1.1 (configs/training/paper.yaml)\n" in blocks["train_aligner"]
    assert "    training items: vicuna_v1.1 (configs/training/paper-sft.yaml)\n" in blocks["train_sft"]
    assert "    profile: paper\n" in blocks["report"]
