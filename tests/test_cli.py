"""The command line as users meet it: one flag name per meaning, exact flags only, one-line errors
with the closest real name, booleans shown as flags, --help keeping the docstrings' line breaks,
column-mapping flags, and a model run that prints nothing alarming."""
from __future__ import annotations

import csv
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from metaaligner import cli
from metaaligner.testing.waits import DEADLINE_S

REPO = Path(__file__).resolve().parent.parent
ENTRY_SCRIPTS = sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("*/**/*.py")
                       if p.parts[len(REPO.parts)] not in ("tests", "metaaligner")
                       and "def make_parser" in p.read_text())
AI, BD, JD, TA = ("inference/aligner_inference.py", "dynamic_multi_objective_dataset/build_aligner_dataset.py",
                  "evaluation/judge.py", "training/train_aligner.py")


def deprecated(old: str, new: str) -> str:
    return f"warning: {old} is deprecated; use {new} (the old name will be removed in a later release)\n"


def load(script: str):
    name = "_cli_test_" + re.sub(r"\W", "_", script)
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[name]


def parse(script: str, argv: list[str]):
    module = load(script)
    return cli.parse(module.make_parser(), argv)


def parse_error(script: str, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        parse(script, argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


def write_table(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------- exact flags, one-line errors

def test_entry_scripts_are_all_found():
    assert len(ENTRY_SCRIPTS) >= 25 and {AI, BD, JD, TA, "scripts/run_paper.py"} <= set(ENTRY_SCRIPTS)


def test_unknown_flag_is_one_line_naming_the_closest(capsys):
    assert parse_error(AI, ["--aspect", "harmlessness"], capsys) == \
        "error: unknown flag --aspect (did you mean --aspects?); see --help\n"
    assert parse_error(AI, ["--lim", "3"], capsys) == "error: unknown flag --lim (did you mean --limit?); see --help\n"
    assert parse_error(AI, ["--bogus=1"], capsys) == "error: unknown flag --bogus; see --help\n"
    assert parse_error(AI, ["stray"], capsys) == "error: unexpected argument 'stray'; see --help\n"
    (config,) = parse(AI, ["--aspects", "harmlessness", "--limit", "3"])
    assert (config.aspects, config.limit) == ("harmlessness", 3)


def test_an_api_key_flag_says_where_the_key_goes_and_never_echoes_it(capsys):
    """Issue 31, section 8: the released evaluation commands pass --api_key YOUR_OPENAI_API_KEY."""
    line = ("error: unknown flag --api_key: API keys are never flags here; put the key in the environment instead "
            "(OPENAI_API_KEY=... python ...); see --help\n")
    released = ["--api_key", "sk-SECRET", "--output_file", "out.csv", "--objective", "harmlessness",
                "--target", "aligned_output"]
    assert parse_error(JD, released, capsys) == line  # named first, before the other unknown flags
    assert parse_error("inference/policy_generation.py", ["--api-key=sk-SECRET"], capsys) == \
        line.replace("--api_key", "--api-key")


def test_bad_values_and_missing_arguments_are_one_line(capsys):
    assert parse_error(AI, ["--limit", "x"], capsys) == "error: argument --limit: invalid int value: 'x'\n"
    assert parse_error(AI, ["--limit"], capsys) == "error: argument --limit: expected one argument\n"
    assert parse_error(JD, ["--mode", "ranking"], capsys) == \
        "error: argument --mode: invalid choice: 'ranking' (choose from 'pairwise', 'rating')\n"


def test_unknown_flag_as_a_script_prints_no_traceback():
    proc = subprocess.run([sys.executable, AI, "--aspect", "humour"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=DEADLINE_S)
    assert (proc.returncode, proc.stdout, proc.stderr) == \
        (2, "", "error: unknown flag --aspect (did you mean --aspects?); see --help\n")


# ---------------------------------------------------------------- one flag name per meaning

@pytest.mark.parametrize("script", [BD, "baseline_models/sft/make_sft_data.py",
                                    "baseline_models/cdpo/make_cdpo_data.py",
                                    "baseline_models/morlhf/train_reward_models.py",
                                    "baseline_models/sft/sft_inference.py"])
def test_dataset_flag_with_deprecated_aliases(script, capsys):
    base = ["--input", "in.csv", "--output_dir", "out", "--base_model", "m"] if "reward_models" in script else \
        ["--input", "in.csv", "--output_dir", "out"] if "inference" not in script else []
    assert parse(script, base + ["--dataset", "imhi"])[0].dataset == "imhi"
    assert capsys.readouterr().err == ""
    assert parse(script, base + ["--config", "ultrafeedback"])[0].dataset == "ultrafeedback"
    assert capsys.readouterr().err == deprecated("--config", "--dataset")
    assert parse(script, base + ["--dataset_config=imhi"])[0].dataset == "imhi"
    assert capsys.readouterr().err == deprecated("--dataset_config", "--dataset")


def test_judge_template_became_dataset(capsys):
    (config,) = parse(JD, ["--template", "imhi"])
    assert config.dataset == "imhi"
    assert capsys.readouterr().err == deprecated("--template", "--dataset")
    (config,) = parse(JD, ["--dataset", "ultrafeedback"])
    assert config.dataset == "ultrafeedback" and capsys.readouterr().err == ""


def test_train_aligner_dataset_and_config_file(capsys):
    module = load(TA)
    cur, _ = cli.parse(module.make_parser(), ["--data_dir", "d", "--output_dir", "o", "--dataset_config", "imhi"])
    assert cur.dataset == "imhi"
    assert capsys.readouterr().err == deprecated("--dataset_config", "--dataset")
    argv = module.cli_args(["--config", str(REPO / "configs/training/cpu.yaml"), "--data_dir", "d",
                            "--output_dir", "o"])
    assert argv[0] == "--config_file"
    assert capsys.readouterr().err == deprecated("--config", "--config_file")


def test_yaml_key_spelled_the_old_way_still_applies(tmp_path, capsys):
    path = tmp_path / "flags.yaml"
    path.write_text("config: imhi\nseed: 3\n")
    (config,) = parse(BD, ["--config_file", str(path), "--input", "i", "--output_dir", "o"])
    assert (config.dataset, config.seed) == ("imhi", 3)
    assert capsys.readouterr().err == deprecated(f"{path}: key config", "dataset")
    path.write_text("sed: 3\n")
    assert parse_error(BD, ["--config_file", str(path), "--input", "i", "--output_dir", "o"], capsys) == \
        f"error: {path}: unknown keys ['sed'] (did you mean seed?)\n"


def visible_flags(parser) -> list[tuple[str, object]]:
    return [(s, a) for a in parser._actions for s in a.option_strings if s not in getattr(a, cli.DEPRECATED_KEY, ())]


@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_one_flag_name_per_meaning(script):
    parser = load(script).make_parser()
    for flag, action in visible_flags(parser):
        assert flag != "--dataset_config", script
        if flag == "--config":  # run_paper's --config is the paper config, its only config
            assert script == "scripts/run_paper.py"
        if flag == "--template":  # only ever the prompt template
            assert "template" in action.help.lower() and not action.help.startswith("dataset config"), script
    for action in parser._actions:
        if (action.help or "").lower().startswith("dataset config"):
            assert action.dest == "dataset", (script, action.dest)


# ---------------------------------------------------------------- --help

@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_help_shows_booleans_as_flags(script):
    parser = load(script).make_parser()
    text = parser.format_help()
    flags = [a for a in parser._actions if cli._is_flag(a)]
    for action in flags:
        assert f"[{action.dest.upper()}]" not in text, (script, action.dest)
        assert f"[{action.option_strings[0]}]" in " ".join(parser.format_usage().split()), (script, action.dest)


def test_boolean_flags_still_take_true_and_false(capsys):
    text = load(AI).make_parser().format_help()
    assert "\n  --resume              continue an interrupted run" in text
    usage = " ".join(text.split())
    assert "[--resume] [--overwrite]" in usage and "[--dry_run]" in usage and "RESUME" not in text
    assert parse(AI, [])[0].resume is False
    assert parse(AI, ["--resume"])[0].resume is True
    assert parse(AI, ["--resume", "false"])[0].resume is False
    assert parse(AI, ["--resume", "true", "--dry_run"])[0].resume is True
    assert parse(JD, ["--no_cache"])[0].cache is False
    assert parse(JD, ["--cache", "false"])[0].cache is False


def test_help_keeps_the_docstring_line_breaks():
    checked = 0
    for script in ENTRY_SCRIPTS:
        module = load(script)
        text = module.make_parser().format_help()
        source = (REPO / script).read_text()
        doc = source.split('"""')[1]
        for line in doc.splitlines():
            if line.rstrip().endswith("\\"):
                assert cli.plain_text(line) in text, (script, line)
                checked += 1
    assert checked >= 30
    text = load(AI).make_parser().format_help()
    assert ("    python inference/aligner_inference.py --aligner_path MetaAligner/MetaAligner-UltraFeedback-7B \\\n"
            "        --dataset ultrafeedback --aspects honesty,truthfulness,specificity") in text


# ---------------------------------------------------------------- close-match suggestions

def test_misspelled_dataset_suggests_the_closest():
    from metaaligner.errors import MetaAlignerError
    from metaaligner.registry.datasets import load_dataset_config

    with pytest.raises(MetaAlignerError) as exc:
        load_dataset_config("hh-rlfh")
    assert str(exc.value).startswith("unknown dataset config 'hh-rlfh' (did you mean hh-rlhf?); shipped: ")
    with pytest.raises(MetaAlignerError) as exc:
        load_dataset_config("nope")
    assert str(exc.value).startswith("unknown dataset config 'nope'; shipped: ")


def test_misspelled_objective_suggests_the_closest():
    from metaaligner.errors import MetaAlignerError
    from metaaligner.registry.objectives import ObjectiveRegistry

    registry = ObjectiveRegistry.builtin()
    for key, hint in [("helpfulnes", " (did you mean helpfulness?)"),
                      ("hh-rlhf:harmlesness", " (did you mean hh-rlhf:harmlessness?)"), ("politeness", "")]:
        with pytest.raises(MetaAlignerError) as exc:
            registry.get(key, "hh-rlhf")
        assert str(exc.value).startswith(f"unknown objective {key!r}{hint}; known keys: "), str(exc.value)[:80]


def test_script_error_for_misspelled_dataset(tmp_path, capsys):
    module = load(BD)
    (config,) = cli.parse(module.make_parser(), ["--input", "i.csv", "--output_dir", str(tmp_path), "--dataset",
                                                 "ultrafeedbak"])
    assert cli.run_main(module.main, config) == 2
    assert capsys.readouterr().err.startswith(
        "error: unknown dataset config 'ultrafeedbak' (did you mean ultrafeedback?); shipped: ")


# ---------------------------------------------------------------- column flags

class EchoGenerator:
    name = "fake"

    def generate(self, prompts, params, progress=False):
        return [p.split("| Answer: ")[1].split(" | Edit:")[0].upper() for p in prompts]


def test_aligner_columns_mapped_by_flags(tmp_path, capsys, monkeypatch):
    import metaaligner.aligner.inference as al

    monkeypatch.setattr(al, "make_generator", lambda *a, **k: EchoGenerator())
    src = write_table(tmp_path / "pol.csv", ["question", "reply", "reference"],
                      [["q1", "a1", "g1"], ["q2", "a2", "g2"]])
    module = load(AI)
    base = ["--data_dir", str(src), "--template", "hh-rlhf", "--aspects", "harmlessness",
            "--model_output_path", str(tmp_path / "out")]
    assert cli.run_main(module.main, *cli.parse(module.make_parser(), base)) == 2
    assert capsys.readouterr().err.endswith(
        f"error: {src}: column 'query': missing column (found: question, reference, reply); if your file names it "
        "differently, pass --query_column NAME\n")
    assert cli.run_main(module.main, *cli.parse(module.make_parser(), base + ["--query_column", "question"])) == 2
    assert capsys.readouterr().err.endswith(
        f"error: {src}: column 'generated_text': missing column (found: question, reference, reply); if your file "
        "names it differently, pass --answer_column NAME\n")
    argv = base + ["--query_column", "question", "--answer_column", "reply", "--goldens_column", "reference"]
    assert cli.run_main(module.main, *cli.parse(module.make_parser(), argv)) == 0
    with open(tmp_path / "out" / "pol.csv", newline="", encoding="utf-8") as fh:
        rows = [(r["query"], r["goldens"], r["origin_responses"], r["aligned_responses"]) for r in csv.DictReader(fh)]
    assert rows == [("q1", "g1", "a1", "A1"), ("q2", "g2", "a2", "A2")]


def test_judge_columns_mapped_by_flags(tmp_path, capsys):
    from metaaligner.errors import DataError
    from metaaligner.judge.runner import load_rows

    src = write_table(tmp_path / "pol.csv", ["prompt", "reference", "aligned_responses"], [["q", "g", "a"]])
    rows = load_rows(src, "pairwise", ["aligned_responses"], 0, {"query": "prompt", "goldens": "reference"})
    assert [(r["query"], r["goldens"], r["aligned_responses"]) for r in rows] == [("q", "g", "a")]
    with pytest.raises(DataError) as exc:
        load_rows(src, "pairwise", ["aligned_responses"], 0, {"query": "prompt"})
    assert str(exc.value) == (f"{src}: column 'goldens': missing column (found: aligned_responses, prompt, "
                              "reference); if your file names it differently, pass --goldens_column NAME")
    module = load(JD)
    argv = ["--input", str(src), "--output_dir", str(tmp_path / "judged"), "--dataset", "hh-rlhf", "--aspects",
            "harmlessness", "--target", "aligned_responses", "--query_column", "prompt", "--goldens_column",
            "reference", "--dry_run"]
    assert cli.run_main(module.main, *cli.parse(module.make_parser(), argv)) == 0
    out = capsys.readouterr().out
    assert out.startswith("dry run: 1 output files, 1 rows, 1 judge calls ")
    call = out.split("first call:\n")[1]
    assert "QUERY: q\n" in call  # the mapped columns reached the judge's prompt, the golden as the other side
    assert "RESPONSE 1: a\n\nRESPONSE 2: g\n" in call or "RESPONSE 1: g\n\nRESPONSE 2: a\n" in call


def test_policy_generation_missing_query_column_names_the_flag(tmp_path):
    from metaaligner.aligner.policy import load_queries
    from metaaligner.errors import DataError

    src = write_table(tmp_path / "q.csv", ["prompt"], [["hi"]])
    with pytest.raises(DataError) as exc:
        load_queries(src)
    assert str(exc.value) == (f"{src}: column 'query': missing column (found: prompt); if your file names it "
                              "differently, pass --query_column NAME; for the released IMHI outputs pass "
                              "--queries_dir with the IMHI test instructions")
    assert load_queries(src, query_column="prompt") == [{"row_id": 0, "query": "hi", "goldens": ""}]


# ---------------------------------------------------------------- what a model run prints

def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO),
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def tiny_lora_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """A LoRA adapter on the tiny LLaMA: loading it through peft is what raised transformers' FutureWarning."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("tiny-lora")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])).save_pretrained(out)
    return out


@pytest.mark.slow
def test_model_run_prints_nothing_alarming(tiny_llama_dir, tiny_lora_dir, tmp_path):
    proc = subprocess.run([sys.executable, AI, "--aligner_path", str(tiny_llama_dir), "--lora_path",
                           str(tiny_lora_dir), "--template", "hh-rlhf", "--dataset", "hh-rlhf", "--aligned_model",
                           "Claude-3", "--limit", "2", "--max_new_tokens", "2", "--device", "cpu",
                           "--model_output_path", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, env=clean_env(), timeout=DEADLINE_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    both = proc.stdout + proc.stderr
    for noise in ("Warning", "warnings.warn", "unable to detect", "Loading weights", "Traceback"):
        assert noise not in both, noise
    assert set(re.findall(r"([\w.-]+):\s+\d+%\|", proc.stderr)) == {"Claude-3"}  # one bar, the rows'
    assert proc.stdout.splitlines()[0].startswith("Claude-3: 2 rows in, 2 aligned, 0 resumed")


@pytest.mark.slow
def test_training_run_prints_nothing_alarming(tiny_llama_dir, tmp_path):
    """Trainer unwraps every model it saves through accelerate, which imports an installed deepspeed."""
    rows = [[f"\n\nHuman: question {i}?\n\nAssistant:", f"good answer {i}", f"bad {i}", i + 1, 0, 0.5, 0.5, 0, 1]
            for i in range(6)]
    write_table(tmp_path / "rewards.csv", ["prompt", "chosen_response", "rejected_response", "chosen_score1",
                                           "rejected_score1", "chosen_score2", "rejected_score2", "chosen_score3",
                                           "rejected_score3"], rows)
    build = load(BD)
    build.main(build.BuildConfig(input=str(tmp_path / "rewards.csv"), output_dir=str(tmp_path / "data"), val_size=1))
    proc = subprocess.run([sys.executable, TA, "--data_dir", str(tmp_path / "data"), "--output_dir",
                           str(tmp_path / "out"), "--model_name_or_path", str(tiny_llama_dir), "--stages", "warmup",
                           "--max_steps", "1", "--no_eval", "--max_length", "128", "--lora", "--torch_threads", "1"],
                          cwd=REPO, capture_output=True, text=True, env=clean_env(), timeout=DEADLINE_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    both = proc.stdout + proc.stderr
    for noise in ("Warning", "warnings.warn", "unable to detect", "Loading weights", "Writing model shards"):
        assert noise not in both, noise
    assert "train_aligner: stages warmup done in " in proc.stdout


QUIET_PROBE = """
import sys
from types import SimpleNamespace
from metaaligner import cli
if sys.argv[1] == "quiet":
    cli.quiet_libraries()
elif sys.argv[1] == "deepspeed":
    cli.quiet_libraries([SimpleNamespace(deepspeed="configs/deepspeed/zero3.json")])
import os, torch
from accelerate.utils import extract_model_from_parallel
extract_model_from_parallel(torch.nn.Linear(1, 1))  # what Trainer does with every model it saves
print("DS_ACCELERATOR=" + os.environ.get("DS_ACCELERATOR", ""))
"""


@pytest.mark.slow
def test_deepspeed_accelerator_warning_only_without_quieting():
    import torch

    if importlib.util.find_spec("deepspeed") is None or torch.cuda.is_available():
        pytest.skip("the warning appears only where deepspeed is installed and CUDA is not")
    runs = {mode: subprocess.run([sys.executable, "-c", QUIET_PROBE, mode], cwd=REPO, capture_output=True, text=True,
                                 env=clean_env(), timeout=DEADLINE_S) for mode in ("loud", "quiet", "deepspeed")}
    assert "unable to detect" in runs["loud"].stdout + runs["loud"].stderr  # the control: the warning is real
    assert "unable to detect" not in runs["quiet"].stdout + runs["quiet"].stderr
    assert runs["quiet"].stdout.strip().splitlines()[-1] == "DS_ACCELERATOR=cpu"
    # a run that uses DeepSpeed keeps DeepSpeed's own accelerator detection
    assert runs["deepspeed"].stdout.strip().splitlines()[-1] == "DS_ACCELERATOR="


# ---------------------------------------------------------------- --help: every default, no reST markup

STAGE_SCRIPTS = sorted(s for s in ENTRY_SCRIPTS
                       if s.split("/")[0] in ("inference", "training", "evaluation", "dynamic_multi_objective_dataset",
                                              "baseline_models")
                       or (s.startswith("scripts/") and s.count("/") == 1))


def option_blocks(text: str) -> dict[str, str]:
    """--help's option entries: the invocation (``--limit LIMIT``) -> its whole help, lines joined."""
    blocks, current = {}, None
    for line in text.split("\noptions:\n", 1)[1].splitlines():
        if line.startswith("  -"):
            invocation, _, help_text = line.strip().partition("  ")
            current = invocation
            blocks[current] = help_text.strip()
        elif current is not None and line.startswith("   "):
            blocks[current] = f"{blocks[current]} {line.strip()}".strip()
        else:
            current = None
    return blocks


def test_stage_scripts_are_all_found():
    folders = {s.split("/")[0] for s in STAGE_SCRIPTS}
    assert folders == {"inference", "training", "evaluation", "dynamic_multi_objective_dataset", "baseline_models",
                       "scripts"}
    assert len(STAGE_SCRIPTS) >= 28 and "baseline_models/sepo/select_tokens.py" in STAGE_SCRIPTS


@pytest.mark.parametrize("script", STAGE_SCRIPTS)
def test_help_shows_every_default_and_no_rest_markup(script):
    text = load(script).make_parser().format_help()
    assert "``" not in text, script
    blocks = option_blocks(text)
    assert len(blocks) >= 3, script
    for invocation, help_text in blocks.items():
        if invocation.startswith("-h"):
            continue
        bare = not re.search(r"--[\w-]+ [A-Z]", invocation)  # a flag without a value: off unless given
        shown = re.search(r"\bdefault\b|\(required\)$", help_text, re.I)
        assert bare or shown, (script, invocation, help_text)


def test_help_defaults_as_users_read_them(tmp_path, capsys):
    text = load(AI).make_parser().format_help()
    blocks = option_blocks(text)
    assert blocks["--batch_size BATCH_SIZE, --batch-size BATCH_SIZE"].endswith("[>= 1] (default: 16)")
    assert blocks["--max_new_tokens MAX_NEW_TOKENS, --max-new-tokens MAX_NEW_TOKENS"].endswith(
        "(the released script used 1024) [>= 1] (default: 256)")
    assert blocks["--limit LIMIT"].endswith("[>= 1] (default: none)")
    assert blocks["--resume"].startswith("continue an interrupted run")  # a bare flag: off unless given
    assert blocks["--resume"].endswith("and inputs)")
    # a help text that states its default keeps it, and gets no second one
    assert blocks["--aligner_path ALIGNER_PATH, --aligner-path ALIGNER_PATH"].count("default") == 1
    # a True boolean shows it, and its --no_ twin says what it does
    blocks = option_blocks(load("inference/policy_generation.py").make_parser().format_help())
    assert blocks["--chat_template, --chat-template"].endswith("(default: true)")
    assert blocks["--no_chat_template, --no-chat-template"] == "turn --chat_template off (the same as --chat_template false)"
    # required flags say so
    blocks = option_blocks(load("scripts/run_paper.py").make_parser().format_help())
    assert blocks["--config CONFIG"].endswith("(required)")
    # a --config_file default is the one --help shows
    yaml_file = tmp_path / "defaults.yaml"
    yaml_file.write_text("batch_size: 4\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.parse(load(AI).make_parser(), ["--config_file", str(yaml_file), "--help"])
    assert exc.value.code == 0
    blocks = option_blocks(capsys.readouterr().out)
    assert blocks["--batch_size BATCH_SIZE, --batch-size BATCH_SIZE"].endswith("[>= 1] (default: 4)")


def test_help_without_rest_markup_keeps_the_names():
    # the docstring is reST (``name``); --help prints the name alone
    assert "Writes ``<model_output_path>/<model_name>.csv`` for a file" in (REPO / "inference/policy_generation.py").read_text()
    text = " ".join(load("inference/policy_generation.py").make_parser().format_help().split())
    assert "Writes <model_output_path>/<model_name>.csv for a file" in text


def test_default_text_and_notes():
    import argparse

    assert [cli.default_text(v) for v in (None, [], True, False, 0.0, 1e-05, "", "a", ["x", "y"])] == [
        "none", "none", "true", "false", "0.0", "1e-05", "empty", "a", "x y"]
    parser = argparse.ArgumentParser()
    states = parser.add_argument("--a", default=3, help="x; default: the config's")
    other = parser.add_argument("--b", default=-1, help="-1 = registry default")
    torch_default = parser.add_argument("--c", default=0, help="0: torch's default")
    required = parser.add_argument("--d", required=True, help="d")
    flag = parser.add_argument("--e", action="store_true", help="e")
    assert [cli.default_note(a) for a in (states, other, torch_default, required, flag)] == [
        "", " (default: -1)", " (default: 0)", " (required)", ""]
    assert cli.plain_text("writes ``rewards.csv``") == "writes rewards.csv"


# plain_parser for argparse scripts, cli.make_parser for one with a config dataclass (bench_serve): the same help
BENCHMARK_SCRIPTS = sorted(p.name for p in (REPO / "benchmarks").glob("*.py")
                           if re.search(r"plain_parser\(|cli\.make_parser\(", p.read_text(encoding="utf-8")))


def test_every_benchmark_builds_its_parser_with_plain_parser():
    scripts = sorted(p.name for p in (REPO / "benchmarks").glob("*.py") if "parser" in p.read_text(encoding="utf-8"))
    assert scripts == BENCHMARK_SCRIPTS and {"bench_aligner_inference.py", "bench_serve.py"} <= set(scripts)


@pytest.mark.parametrize("script", BENCHMARK_SCRIPTS)
def test_benchmark_help_shows_every_default_and_no_rest_markup(script):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--help"], capture_output=True,
                          text=True, timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr
    assert "``" not in done.stdout, script
    for invocation, help_text in option_blocks(done.stdout).items():
        if invocation.startswith("-h"):
            continue
        bare = not re.search(r"--[\w-]+ [A-Z]", invocation)
        assert bare or re.search(r"\bdefault\b|\(required\)$", help_text, re.I), (script, invocation, help_text)
