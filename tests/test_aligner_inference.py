"""Aligner inference: prompts over the shipped samples, template resolution, iterative alignment,
empty answers, resume after a kill, one-line errors, and the Python API."""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from metaaligner.aligner import inference as al
from metaaligner.errors import MetaAlignerError
from metaaligner.generation import GenerationParams
from metaaligner.io import read_records, read_table
from metaaligner.registry.objectives import ObjectiveRegistry
from metaaligner.testing.fakes import EchoGenerator
from metaaligner.testing.waits import DEADLINE_S, wait_for

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "inference" / "aligner_inference.py"
HH_PREFIX = ("You are an assistant to human. You will be provided with a context and an answer. Consider the context, "
             "then edit the answer to improve it considering these aspects: Harmlessness: The response should avoid "
             "content that is offensive, discriminatory, or harmful; Helpfulness: The response should provide useful "
             "resources and suggestions to the user; Humour: The response should be cheerful and amusing | Context: ")


def _script():
    name = "aligner_inference_script"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[name]


def run_inprocess(argv: list[str], capsys) -> tuple[int, str, str]:
    """What ``python inference/aligner_inference.py ARGV`` does, without a new interpreter."""
    from metaaligner import cli

    module = _script()
    code = cli.run_main(module.main, *cli.parse(module.make_parser(), argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def run_script(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=DEADLINE_S, **kw)




# ---------------------------------------------------------------- dry runs over the shipped samples

def test_dry_run_claude3_writes_1200_exact_prompts(tmp_path, capsys):
    # a bogus aligner path: the dry run must not load (or even look for) a model
    code, out, err = run_inprocess(["--aligner_path", str(tmp_path / "no-such-model"), "--template", "hh-rlhf",
                                    "--data_dir", "samples/HH-RLHF_model_output", "--aligned_model", "Claude-3",
                                    "--aspects", "harmlessness,helpfulness,humour",
                                    "--model_output_path", str(tmp_path), "--dry_run"], capsys)
    assert code == 0, err
    lines = (tmp_path / "Claude-3.prompts.jsonl").read_text(encoding="utf-8").splitlines()
    rows = read_table(REPO / "samples/HH-RLHF_model_output/Claude-3.csv.gz", required=["query", "generated_text"])
    assert len(lines) == len(rows) == 1200
    for line, row in zip(lines, rows):
        item = json.loads(line)
        assert list(item) == ["query", "prompt"] and item["query"] == row["query"]
        assert item["prompt"] == HH_PREFIX + row["query"] + " | Answer: " + row["generated_text"] + " | Edit: "
    assert "Claude-3: 1200 prompts (0 empty answers" in out
    assert not (tmp_path / "Claude-3.csv").exists()


def test_vicuna7b_empty_answers_are_empty_and_counted(tmp_path, capsys):
    # the raw embedded model has no metaaligner.json, so the dataset config names the template
    code, out, err = run_inprocess(["--aligner_path", "embedded", "--dataset", "ultrafeedback", "--aligned_model", "Vicuna-7B",
                                    "--model_output_path", str(tmp_path), "--dry_run"], capsys)
    assert code == 0, err
    assert "Vicuna-7B: 1200 prompts (227 empty answers" in out
    prompts = [json.loads(x)["prompt"] for x in (tmp_path / "Vicuna-7B.prompts.jsonl").read_text().splitlines()]
    assert sum(p.endswith("| Answer:  | Edit: ") for p in prompts) == 226
    # row 981 is whitespace only: it reaches the aligner verbatim (as released), not as ""
    blank = read_records(REPO / "samples" / "UltraFeedback_model_output" / "Vicuna-7B.csv.gz")[981]["generated_text"]
    assert blank.startswith("\n \n") and not blank.strip() and len(blank) > 100
    assert prompts[981].endswith("| Answer: " + blank + " | Edit: ")
    assert not any("| Answer: nan |" in p for p in prompts)
    assert all(p.startswith("You are an assistant to human. You will be provided with a query and an answer.")
               for p in prompts)


def test_answers_are_verbatim_only_missing_cells_become_empty():
    assert [al.normalize_answer(a) for a in (None, float("nan"), "", " \n ", " a ")] == ["", "", "", " \n ", " a "]
    assert [al.is_empty_answer(a) for a in (None, float("nan"), " \n ", " a ")] == [True, True, True, False]
    assert al.build_prompts("hh-rlhf", ["q"], ["  "], ["H"])[0].endswith("| Context: q | Answer:    | Edit: ")


def test_dry_run_imhi_policy_folder_and_whole_dataset(tmp_path, capsys):
    code, out, _ = run_inprocess(["--aligner_path", "embedded", "--dataset", "imhi", "--aligned_model", "llama2-chat-70B", "--limit", "2",
                                  "--model_output_path", str(tmp_path), "--dry_run"], capsys)
    assert code == 0
    files = sorted(p.name for p in (tmp_path / "llama2-chat-70B").iterdir())
    assert files == sorted(f"{t}.prompts.jsonl" for t in ["CAMS", "DR", "Irf", "MultiWD", "SAD", "dreaddit",
                                                            "loneliness", "t-sid"])
    first = json.loads((tmp_path / "llama2-chat-70B/DR.prompts.jsonl").read_text().splitlines()[0])
    assert first["prompt"].startswith('Edit the following Question-Answer pair to make it better considering these '
                                      'aspects "Correctness: the explanations should make correct predictions; ')
    assert "done: 8 file(s), 16 rows in" in out


# ---------------------------------------------------------------- template and aligner resolution

def test_template_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setattr(al, "DEMO_ALIGNER_DIR", tmp_path / "absent")
    folder = tmp_path / "my-aligner"
    folder.mkdir()
    with pytest.raises(MetaAlignerError) as err:
        al.resolve_aligner(str(folder))
    assert "\n" not in str(err.value) and "cannot tell which prompt template" in str(err.value)
    # a path that merely *contains* a dataset name is not a template choice
    assert al.resolve_aligner(str(tmp_path / "MetaAligner-UltraFeedback-7B"), dataset_template="imhi").template == "imhi"
    (folder / "metaaligner.json").write_text(json.dumps({"template": "ultrafeedback", "objectives": ["honesty"],
                                                         "dataset": "ultrafeedback"}))
    src = al.resolve_aligner(str(folder), dataset_template="imhi")
    assert (src.template, src.template_from, src.objectives, src.objective_group) == \
        ("ultrafeedback", "metaaligner.json", ("honesty",), "ultrafeedback")
    assert al.resolve_aligner(str(folder), template="paper").template_from == "flag"
    default = al.resolve_aligner(None)
    assert (default.model, default.template, default.label) == ("embedded", "hh-rlhf", al.EMBEDDED_LABEL)
    with pytest.raises(MetaAlignerError, match="unknown template 'hh'"):
        al.resolve_aligner(None, template="hh")


def test_shipped_demo_aligner_is_the_default_when_present(tmp_path, monkeypatch):
    demo = tmp_path / "demo_aligner"
    demo.mkdir()
    (demo / "adapter_config.json").write_text("{}")
    (demo / "metaaligner.json").write_text('{"template": "hh-rlhf"}')
    monkeypatch.setattr(al, "DEMO_ALIGNER_DIR", demo)
    src = al.resolve_aligner(None, dataset_template="imhi")
    assert (src.model, src.template, src.template_from, src.label) == (str(demo), "hh-rlhf", "metaaligner.json", "demo_aligner")
    assert al.resolve_aligner("embedded").model == "embedded"


def test_objectives_keys_free_text_and_groups():
    registry = ObjectiveRegistry.builtin()
    labels, descs = al.resolve_objectives("honesty,len", registry, "ultrafeedback")
    assert labels == ["honesty", "len"] and descs[1] == "Length: the response should be concise and avoid redundant content."
    free = "Brevity: the response should be short, plain"
    assert al.resolve_objectives(free, registry) == ([free], [free])
    assert al.resolve_objectives(["humour", free], registry)[1] == ["Humour: The response should be cheerful and amusing", free]
    with pytest.raises(MetaAlignerError, match="unknown objective 'politeness'"):
        al.resolve_objectives("humour,politeness", registry)
    with pytest.raises(MetaAlignerError, match="unknown objective"):
        al.resolve_objectives(free, registry, allow_free_text=False)


def test_plan_jobs_layouts(tmp_path):
    (tmp_path / "data/IMHI-like/pol").mkdir(parents=True)
    for name in ["data/a.csv", "data/b.jsonl", "data/IMHI-like/pol/t1.csv.gz", "data/IMHI-like/pol/t2.csv"]:
        (tmp_path / name).write_text("x")
    out = tmp_path / "out"
    assert [(j.name, j.output_path) for j in al.plan_jobs(tmp_path / "data", "a", out)] == [("a", out / "a.csv")]
    assert [j.name for j in al.plan_jobs(tmp_path / "data", None, out)] == ["a", "b"]
    assert [j.prompts_path for j in al.plan_jobs(tmp_path / "data/IMHI-like", "pol", out)] == \
        [out / "pol/t1.prompts.jsonl", out / "pol/t2.prompts.jsonl"]
    assert al.plan_jobs(tmp_path / "data/a.csv", "Claude", out)[0].output_path == out / "Claude.csv"
    with pytest.raises(MetaAlignerError, match="no table for --aligned_model 'c'; found: a, b"):
        al.plan_jobs(tmp_path / "data", "c", out)


# ---------------------------------------------------------------- alignment runs (fake backend)

def _settings(iterations=1, batch_size=2):
    registry = ObjectiveRegistry.builtin()
    labels, descs = al.resolve_objectives("harmlessness,humour", registry, "hh-rlhf")
    return al.AlignRunSettings(source=al.resolve_aligner("embedded"), aspect_labels=labels, descriptions=descs,
                               params=GenerationParams(batch_size=batch_size), iterations=iterations)


def _table(tmp_path, n=10):
    path = tmp_path / "pol.csv"
    lines = ["query,goldens,generated_text"] + [f"q{i},g{i},{'' if i % 3 == 0 else f'a{i}'}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_iterative_alignment_feeds_answers_back(tmp_path):
    job = al.FileJob(_table(tmp_path, 4), "pol", tmp_path / "out")
    gen = EchoGenerator()
    stats = al.align_file(job, _settings(iterations=3), gen, progress=False)
    rows = read_records(job.output_path)
    assert list(rows[0]) == ["query", "goldens", "origin_responses", "aligned_responses", "aligned_responses_1",
                             "aligned_responses_2", "aligner", "template", "aspects"]
    assert rows[1]["origin_responses"] == "a1" and rows[1]["aligned_responses_1"] == "aligned[a1]"
    assert rows[1]["aligned_responses_2"] == "aligned[aligned[a1]]"
    assert rows[1]["aligned_responses"] == "aligned[aligned[aligned[a1]]]"
    assert rows[0]["aligned_responses_1"] == "aligned[]"  # the empty answer went in as ""
    assert (rows[0]["aligner"], rows[0]["template"], rows[0]["aspects"]) == (al.EMBEDDED_LABEL, "hh-rlhf", "harmlessness,humour")
    assert len(gen.prompts) == 12 and stats.empty_answers == 2 and stats.aligned == 4


def test_interrupted_run_resumes_every_row_once(tmp_path):
    job = al.FileJob(_table(tmp_path, 10), "pol", tmp_path / "out")
    settings = _settings(batch_size=1)  # chunks of 4 rows
    with pytest.raises(KeyboardInterrupt):
        al.align_file(job, settings, EchoGenerator(fail_on_call=2), progress=False)
    assert not job.output_path.exists()
    gen = EchoGenerator()
    stats = al.align_file(job, settings, gen, resume=True, progress=False)
    assert (stats.resumed, stats.aligned) == (4, 6)
    assert [p.split("Context: ")[1].split(" |")[0] for p in gen.prompts] == [f"q{i}" for i in range(4, 10)]
    rows = read_records(job.output_path)
    assert [r["query"] for r in rows] == [f"q{i}" for i in range(10)]
    # a finished output is not redone; other settings refuse to mix with a partial file
    assert al.align_file(job, settings, EchoGenerator(), resume=True, progress=False).skipped
    with pytest.raises(KeyboardInterrupt):
        al.align_file(job, settings, EchoGenerator(fail_on_call=2), progress=False)
    other = _settings(batch_size=1)
    other.aspect_labels = ["humour"]
    with pytest.raises(MetaAlignerError, match="made with other settings \\(aspects: "):
        al.align_file(job, other, EchoGenerator(), resume=True, progress=False)


def test_python_api_with_a_backend_object():
    gen = EchoGenerator()
    aligner = al.Aligner(generator=gen)
    assert aligner.align("Q?", "old", "harmlessness,humour") == "aligned[old]"
    assert aligner.align(["Q1", "Q2"], ["a", None], ["helpfulness", "Brevity: be short"]) == ["aligned[a]", "aligned[]"]
    assert gen.prompts[1].startswith("You are an assistant to human.") and \
        "aspects: Helpfulness: The response should provide useful resources and suggestions to the user; Brevity: be short |" in gen.prompts[1]
    assert aligner.prompts("Q", "", "humour") == gen.prompts[0].replace(
        "Harmlessness: The response should avoid content that is offensive, discriminatory, or harmful; ", "").replace(
        "Answer: old", "Answer: ").replace("Context: Q?", "Context: Q")
    assert aligner.align("Q", "x", "humour", iterations=2) == "aligned[aligned[x]]"
    with pytest.raises(MetaAlignerError, match="2 questions but 1 answers"):
        aligner.align(["a", "b"], ["c"], "humour")


# ---------------------------------------------------------------- the script, for real

def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "nocol.csv").write_text("query,goldens\nq,g\n")
    (tmp_path / "empty.csv").write_text("")
    base = ["--template", "hh-rlhf", "--aspects", "harmlessness", "--model_output_path", str(tmp_path), "--dry_run"]
    code, _, err = run_inprocess(["--data_dir", str(tmp_path / "nocol.csv"), *base], capsys)
    assert (code, err) == (2, f"error: {tmp_path / 'nocol.csv'}: column 'generated_text': missing column (found: goldens, query); "
                         "if your file names it differently, pass --answer_column NAME\n")
    code, _, err = run_inprocess(["--data_dir", str(tmp_path / "empty.csv"), *base], capsys)
    assert (code, err) == (2, f"error: {tmp_path / 'empty.csv'}: file is empty\n")
    code, _, err = run_inprocess(["--data_dir", str(tmp_path / "missing.csv"), *base], capsys)
    assert (code, err) == (2, f"error: {tmp_path / 'missing.csv'}: no such file or folder (--data_dir)\n")
    code, _, err = run_inprocess(["--data_dir", "samples/HH-RLHF_model_output", "--aspects", "harmlessness", "--dry_run",
                                  "--aligner_path", str(tmp_path)], capsys)
    assert code == 2 and err.count("\n") == 1 and "cannot tell which prompt template" in err
    # a real interpreter: exit status 2, one line on stderr, no traceback
    proc = run_script(["--dataset", "hh-rlhf", "--aspects", "harmlessness,politeness", "--dry_run",
                       "--model_output_path", str(tmp_path)])
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown objective 'politeness'; known keys: ") and proc.stderr.count("\n") == 1


@pytest.mark.slow
def test_killed_run_resumes_every_row_once(tiny_llama_dir, tmp_path, capsys):
    data = tmp_path / "pol.csv"
    data.write_text("query,goldens,generated_text\n" + "".join(f"question {i},g,answer {i}\n" for i in range(16)))
    args = ["--aligner_path", str(tiny_llama_dir), "--template", "hh-rlhf", "--aspects", "harmlessness",
            "--data_dir", str(data), "--model_output_path", str(tmp_path / "out"), "--batch_size", "1",
            "--max_new_tokens", "12", "--backend", "hf", "--device", "cpu"]
    partial = tmp_path / "out/pol.csv.partial.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    # the first chunk (4 rows) is on disk; a run that finishes first fails the wait (metaaligner.testing.waits)
    wait_for(lambda: partial.exists() and partial.read_text().count("\n") >= 4,
             "the first 4 rows in pol.csv.partial.jsonl (to kill the run mid-way)", process=proc, interval=0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = partial.read_text().count("\n")
    assert 4 <= done_before < 16 and not (tmp_path / "out/pol.csv").exists()
    code, out, err = run_inprocess([*args, "--resume"], capsys)  # the same main(), in this process
    assert code == 0, err[-2000:]
    assert f"{16 - done_before} aligned, {done_before} resumed" in out
    rows = read_records(tmp_path / "out/pol.csv")
    assert [r["origin_responses"] for r in rows] == [f"answer {i}" for i in range(16)]
    assert all(r["aligner"] == str(tiny_llama_dir) for r in rows)
    assert not partial.exists()


# ---------------------------------------------------------------- policy generation

def test_policy_generation_joins_imhi_queries_and_resumes(tmp_path, capsys):
    from metaaligner.aligner.policy import generate_file, load_queries

    (tmp_path / "ins").mkdir()
    (tmp_path / "released").mkdir()
    (tmp_path / "ins/DR.csv").write_text("query,gpt-3.5-turbo\nPost one?,Yes. Reasoning: a\nPost two?,No. Reasoning: b\n")
    (tmp_path / "released/DR.csv").write_text("goldens,generated_text\nYes. Reasoning: a,x\nNo. Reasoning: b,\n")
    with pytest.raises(MetaAlignerError, match="pass --queries_dir"):
        load_queries(tmp_path / "released/DR.csv")
    rows = load_queries(tmp_path / "released/DR.csv", queries_dir=tmp_path / "ins")
    assert rows == [{"row_id": 0, "query": "Post one?", "goldens": "Yes. Reasoning: a"},
                    {"row_id": 1, "query": "Post two?", "goldens": "No. Reasoning: b"}]
    job = al.FileJob(tmp_path / "released/DR.csv", "pol/DR", tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        generate_file(job, rows, EchoGenerator(fail_on_call=1), GenerationParams(batch_size=1), "m", progress=False)
    gen = EchoGenerator()
    gen.generate = lambda prompts, params, progress=False: [p.upper() for p in prompts]
    stats = generate_file(job, rows, gen, GenerationParams(batch_size=1), "m", resume=True, progress=False)
    assert (stats.generated, stats.resumed) == (2, 0)
    assert read_records(tmp_path / "out/pol/DR.csv") == [
        {"query": "Post one?", "goldens": "Yes. Reasoning: a", "generated_text": "POST ONE?", "model": "m"},
        {"query": "Post two?", "goldens": "No. Reasoning: b", "generated_text": "POST TWO?", "model": "m"}]
    # the generated file is what aligner inference reads
    code, out, err = run_inprocess(["--data_dir", str(tmp_path / "out/pol"), "--dataset", "imhi",
                                    "--model_output_path", str(tmp_path / "aligned"), "--dry_run"], capsys)
    assert code == 0, err
    assert "DR: 2 prompts (0 empty answers" in out


def test_repeatable_add_objective_and_objectives_file(tmp_path, capsys):
    (tmp_path / "mine.yaml").write_text("brief: 'Brevity: the response should be short'\n")
    code, _, err = run_inprocess(["--dataset", "ultrafeedback", "--aligned_model", "gpt-3.5-turbo", "--limit", "1",
                                  "--add_objective", "safety=Safety: never endanger anyone, ever",
                                  "--add_objective", "kind=Kindness: be kind", "--objectives_file", str(tmp_path / "mine.yaml"),
                                  "--aspects", "honesty,safety,kind,brief", "--model_output_path", str(tmp_path),
                                  "--dry_run"], capsys)
    assert code == 0, err
    prompt = json.loads((tmp_path / "gpt-3.5-turbo.prompts.jsonl").read_text())["prompt"]
    assert ("aspects: Honesty: the response should not tell lies; Safety: never endanger anyone, ever; "
            "Kindness: be kind; Brevity: the response should be short | ") in prompt


# ---------------------------------------------------------------- the released command lines (issue 12, points 5 and 8)

def _released_command(out: Path) -> list[str]:
    """The released README's alignment command, flag for flag (run from inference/)."""
    return ["--aligner_path", "MetaAligner/MetaAligner-HH-RLHF-1.1B", "--data_dir", "../samples/HH-RLHF_model_output",
            "--aligned_model", "Claude-3", "--model_output_path", str(out), "--cuda", "--batch_size", "16", "--llama",
            "--aspects", "harmlessness,helpfulness,humour"]


def test_released_readme_command_runs_from_inference_dir(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "aligner_inference.py", *_released_command(tmp_path), "--dry_run"],
                          capture_output=True, text=True, env=env, cwd=REPO / "inference", timeout=DEADLINE_S, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == (f"Claude-3: 1200 prompts (0 empty answers, 1814902 chars, ~453725 tokens) "
                                           f"-> {tmp_path / 'Claude-3.prompts.jsonl'}")
    assert "aligner MetaAligner/MetaAligner-HH-RLHF-1.1B, template hh-rlhf (from checkpoints.yaml), " \
           "aspects harmlessness,helpfulness,humour, 1 file(s)" in proc.stderr
    assert "--llama is not needed" in proc.stderr
    row = read_table(REPO / "samples/HH-RLHF_model_output/Claude-3.csv.gz", required=["query", "generated_text"])[0]
    first = json.loads((tmp_path / "Claude-3.prompts.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first["prompt"] == HH_PREFIX + row["query"] + " | Answer: " + row["generated_text"] + " | Edit: "


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU message")
def test_released_command_without_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO / "inference")
    code, _, err = run_inprocess(_released_command(tmp_path) + ["--limit", "1"], capsys)
    assert (code, err) == (2, "error: --device cuda (--cuda): no CUDA device is visible; drop the flag to run on the CPU\n")
    assert not (tmp_path / "Claude-3.csv").exists()
    # the released generation command's --cuda, the same way
    proc = subprocess.run([sys.executable, str(REPO / "inference/policy_generation.py"), "--model", "embedded",
                           "--data_dir", "../samples/HH-RLHF_model_output/Claude-3.csv.gz", "--limit", "1", "--cuda",
                           "--model_output_path", str(tmp_path / "pol")], capture_output=True, text=True, timeout=DEADLINE_S,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=REPO / "inference", check=False)
    assert (proc.returncode, proc.stderr) == (2, ("error: --device cuda (--cuda): no CUDA device is visible; drop the "
                                                  "flag to run on the CPU\n"))
    assert not (tmp_path / "pol").exists()


def test_released_flags_map_to_ours():
    cfg = functools.partial(_script().AlignerInferenceConfig, dry_run=True)  # a dry run needs no GPU
    flags = _script().released_flags
    assert flags(cfg(cuda=True)) == "cuda"
    assert flags(cfg(cuda=True, device="cuda:1")) == "cuda:1"
    assert flags(cfg(llama=True)) is None
    assert flags(cfg(device="cpu")) == "cpu"
    with pytest.raises(MetaAlignerError, match=r"^--cuda contradicts --device cpu; give one of them$"):
        flags(cfg(cuda=True, device="cpu"))
    with pytest.raises(MetaAlignerError, match=r"^--lora needs --lora_path ADAPTER_FOLDER$"):
        flags(cfg(lora=True))
    assert flags(_script().AlignerInferenceConfig(cuda=True, base_url="http://127.0.0.1:1/v1")) == "cuda"  # served: no local GPU


HH = ("hh-rlhf", ("harmlessness", "helpfulness", "humour"))
UF = ("ultrafeedback", ("instruction_following", "honesty", "truthfulness", "helpfulness"))
IMHI = ("imhi", ("correct", "informative", "professional"))
UNPUBLISHED = "MetaAligner/MetaAligner-IMHI-1.1B"  # the README's ninth model, not on the hub (issue 31, section 8)
RELEASED = {f"MetaAligner/MetaAligner-{d}-{s}": spec for d, spec in
            (("HH-RLHF", HH), ("UltraFeedback", UF), ("IMHI", IMHI)) for s in ("1.1B", "7B", "13B")
            if f"MetaAligner/MetaAligner-{d}-{s}" != UNPUBLISHED}


def test_the_eight_published_checkpoints_are_known_by_name():
    import yaml

    table = yaml.safe_load(al.KNOWN_CHECKPOINTS_FILE.read_text(encoding="utf-8"))
    assert sorted(n for n in table if n.startswith("MetaAligner/")) == sorted([*RELEASED, UNPUBLISHED])
    assert len(RELEASED) == 8 and table[UNPUBLISHED]["published"] is False
    assert all(table[name].get("published", True) for name in RELEASED)
    for name, (template, objectives) in RELEASED.items():
        source = al.resolve_aligner(name)
        assert (source.model, source.template, source.template_from, source.objective_group, source.objectives) == \
            (name, template, "checkpoints.yaml", template, objectives)
    aligner7b = al.resolve_aligner("aligner/aligner-7b-v1.0")
    assert (aligner7b.template, aligner7b.template_from, aligner7b.objectives) == \
        ("aligner", "checkpoints.yaml", ("harmlessness", "helpfulness"))
    # the flag still wins, and a known checkpoint beats the dataset config's template
    assert al.resolve_aligner("MetaAligner/MetaAligner-IMHI-7B", template="paper").template_from == "flag"
    assert al.resolve_aligner("MetaAligner/MetaAligner-IMHI-7B", dataset_template="hh-rlhf").template == "imhi"


def test_the_unpublished_imhi_1_1b_is_refused_by_name(tmp_path, monkeypatch):
    with pytest.raises(MetaAlignerError, match=r"^MetaAligner/MetaAligner-IMHI-1\.1B: not on the Hugging Face hub "
                                               r"\(.*\): use MetaAligner/MetaAligner-IMHI-7B or MetaAligner/"
                                               r"MetaAligner-IMHI-13B, or an aligner folder of your own"):
        al.resolve_aligner(UNPUBLISHED, template="imhi")
    monkeypatch.chdir(tmp_path)  # a local folder of that name is the user's own copy: used
    (tmp_path / UNPUBLISHED).mkdir(parents=True)
    assert al.resolve_aligner(UNPUBLISHED).template == "imhi"


def test_known_checkpoints_are_never_guessed_from_a_path(tmp_path):
    (tmp_path / "MetaAligner-HH-RLHF-7B").mkdir()
    for name in ["MetaAligner/MetaAligner-HH-RLHF-7B-v2", "metaaligner/metaaligner-hh-rlhf-7b", "my/HH-RLHF-aligner",
                 str(tmp_path / "MetaAligner-HH-RLHF-7B"), "./MetaAligner/MetaAligner-HH-RLHF-7B"]:
        with pytest.raises(MetaAlignerError, match="cannot tell which prompt template aligner"):
            al.resolve_aligner(name)
    # a local copy with its own metaaligner.json is read from that file, not from the table
    local = tmp_path / "MetaAligner" / "MetaAligner-HH-RLHF-7B"
    local.mkdir(parents=True)
    (local / "metaaligner.json").write_text('{"template": "paper", "objectives": ["honesty"]}')
    source = al.resolve_aligner(str(local))
    assert (source.template, source.template_from, source.objectives) == ("paper", "metaaligner.json", ("honesty",))


def test_aligner_7b_dry_run_uses_its_published_template(tmp_path, capsys):
    code, out, err = run_inprocess(["--aligner_path", "aligner/aligner-7b-v1.0", "--data_dir",
                                    "samples/HH-RLHF_model_output/gpt-3.5-turbo.csv.gz", "--aligned_model", "Aligner-7B",
                                    "--limit", "2", "--model_output_path", str(tmp_path), "--dry_run"], capsys)
    assert code == 0, err
    rows = read_table(REPO / "samples/HH-RLHF_model_output/gpt-3.5-turbo.csv.gz", required=["query", "generated_text"])
    prompts = [json.loads(x)["prompt"] for x in (tmp_path / "Aligner-7B.prompts.jsonl").read_text().splitlines()]
    assert prompts == [("BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more "
                        f"helpful and harmless: {r['query']} | {r['generated_text']} ASSISTANT:") for r in rows[:2]]
    assert "Aligner-7B: 2 prompts (0 empty answers" in out


def test_release_objective_spellings_resolve_to_our_keys(tmp_path, capsys):
    code, _, err = run_inprocess(["--aligner_path", "MetaAligner/MetaAligner-UltraFeedback-7B", "--data_dir",
                                  "samples/UltraFeedback_model_output", "--aligned_model", "gpt-3.5-turbo", "--limit", "1",
                                  "--aspects", "IF,specificity,length", "--model_output_path", str(tmp_path), "--dry_run"],
                                 capsys)
    assert code == 0, err
    prompt = json.loads((tmp_path / "gpt-3.5-turbo.prompts.jsonl").read_text())["prompt"]
    assert prompt.startswith("You are an assistant to human. You will be provided with a query and an answer. Consider "
                             "the query, then edit the answer to improve it considering these aspects: Instruction "
                             "following: the response should follow the instructions of the query; Specificity: the "
                             "response should refer to facts and details and avoid vague arguments.; Length: the "
                             "response should be concise and avoid redundant content. | Query: ")


# ---------------------------------------------------------------- Self-Refinement (Table 3)

def test_self_refinement_revises_the_policys_own_answers(tmp_path, capsys):
    from metaaligner.aligner.policy import self_refine_file

    data = tmp_path / "pol.csv"
    data.write_text("query,goldens,generated_text\nQ one?,G1,first answer\nQ two?,G2,\n")
    rows = al.load_policy_rows(data)
    job = al.FileJob(data, "Self-Refinement", tmp_path / "out")
    gen = EchoGenerator()
    gen.generate = lambda prompts, params, progress=False: (gen.prompts.extend(prompts) or
                                                            [f"revised {i}" for i in range(len(prompts))])
    descriptions = ["Humour: The response should be cheerful and amusing", "Honesty: the response should not tell lies"]
    stats = self_refine_file(job, rows, gen, GenerationParams(batch_size=4), "my/policy", ["humour", "honesty"],
                             descriptions, progress=False)
    assert gen.prompts[0] == ("Here is a question and an answer you wrote earlier. Revise the answer so that it better "
                              "meets these objectives: Humour: The response should be cheerful and amusing; Honesty: "
                              "the response should not tell lies\n\nQuestion: Q one?\n\nAnswer: first answer\n\n"
                              "Reply with the revised answer only.")
    assert gen.prompts[1].endswith("\n\nQuestion: Q two?\n\nAnswer: \n\nReply with the revised answer only.")
    assert (stats.generated, stats.output) == (2, str(tmp_path / "out/Self-Refinement.csv"))
    assert read_records(tmp_path / "out/Self-Refinement.csv") == [
        {"query": "Q one?", "goldens": "G1", "origin_responses": "first answer", "aligned_responses": "revised 0",
         "aligner": "self-refine:my/policy", "template": "self-refine", "aspects": "humour,honesty"},
        {"query": "Q two?", "goldens": "G2", "origin_responses": "", "aligned_responses": "revised 1",
         "aligner": "self-refine:my/policy", "template": "self-refine", "aspects": "humour,honesty"}]


def test_self_refine_flag_dry_run_names_the_dataset_objectives(tmp_path):
    script = REPO / "inference" / "policy_generation.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script), "--self_refine", "--dataset", "hh-rlhf", "--aspects", "humor,harmless",
                           "--data_dir", "samples/HH-RLHF_model_output/Claude-3.csv.gz", "--model", "meta-llama/Llama-2-7b-chat-hf",
                           "--model_name", "Self-Refinement", "--limit", "3", "--model_output_path", str(tmp_path),
                           "--cuda", "--llama", "--dry_run"], capture_output=True, text=True, env=env, cwd=REPO, timeout=DEADLINE_S,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"Self-Refinement: 3 queries -> {tmp_path / 'Self-Refinement.prompts.jsonl'}" in proc.stdout
    first = json.loads((tmp_path / "Self-Refinement.prompts.jsonl").read_text().splitlines()[0])["prompt"]
    assert first.startswith("Here is a question and an answer you wrote earlier. Revise the answer so that it better "
                            "meets these objectives: Humour: The response should be cheerful and amusing; Harmlessness: "
                            "The response should avoid content that is offensive, discriminatory, or harmful\n\n"
                            "Question: \n\nHuman: ")


def test_python_api_with_a_released_name_needs_no_template_and_loads_nothing():
    aligner = al.Aligner("MetaAligner/MetaAligner-UltraFeedback-7B")
    assert aligner.prompts("Q?", "A.", "helpful,length") == (
        "You are an assistant to human. You will be provided with a query and an answer. Consider the query, then "
        "edit the answer to improve it considering these aspects: Helpfulness: the response should provide useful "
        "resources and suggestions to the user; Length: the response should be concise and avoid redundant content. "
        "| Query: Q? | Answer: A. | Edit: ")
    assert aligner._generator is None


def test_self_refinement_resume_never_mixes_settings(tmp_path):
    """A finished Self-Refinement output made with other decoding or objective texts is refused."""
    from metaaligner.aligner.policy import self_refine_file

    data = tmp_path / "pol.csv"
    data.write_text("query,goldens,generated_text\nQ one?,G1,first answer\n")
    rows = al.load_policy_rows(data)
    job = al.FileJob(data, "Self-Refinement", tmp_path / "out")
    gen = EchoGenerator()
    gen.generate = lambda prompts, params, progress=False: ["revised"] * len(prompts)
    descriptions = ["Humour: The response should be cheerful and amusing"]
    self_refine_file(job, rows, gen, GenerationParams(batch_size=4), "my/policy", ["humour"], descriptions,
                     progress=False)
    with pytest.raises(MetaAlignerError, match="max_new_tokens"):
        self_refine_file(job, rows, gen, GenerationParams(batch_size=4, max_new_tokens=9), "my/policy", ["humour"],
                         descriptions, resume=True, progress=False)
    with pytest.raises(MetaAlignerError, match="objective_texts"):
        self_refine_file(job, rows, gen, GenerationParams(batch_size=4), "my/policy", ["humour"],
                         ["Humour: be funny"], resume=True, progress=False)
    stats = self_refine_file(job, rows, gen, GenerationParams(batch_size=4), "my/policy", ["humour"],
                             ["Humour: be funny"], progress=False, overwrite=True)
    assert stats.generated == 1


def test_benchmark_bound_counts_the_live_rows_kv_reads():
    """bench_aligner_inference's roofline: per decode step the weights once plus each live row's own
    (unpadded) KV cache; the released way reads the weights once per row and step."""
    from types import SimpleNamespace

    import torch

    spec = importlib.util.spec_from_file_location("bench_aligner_inference",
                                                  REPO / "benchmarks" / "bench_aligner_inference.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up while the file runs
    spec.loader.exec_module(bench)
    config = SimpleNamespace(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576)
    model = SimpleNamespace(config=SimpleNamespace(get_text_config=lambda: config),
                            parameters=lambda: iter([torch.zeros(1)]))
    assert bench.kv_bytes_per_token(model) == 2 * 30 * 3 * 64 * 4  # SmolLM2-135M: 46 KB per token
    # 1e8 params, compute ~free (1e9 GFLOP/s), 1 GB/s; rows of 10 and 20 prompt tokens, 3 and 2 new tokens
    args = ([10, 20], [3, 2], 10 ** 8, 1e9, 1.0)
    weights = 4e8 / 1e9
    assert bench.bound_seconds(*args) == pytest.approx(2 * weights)  # weights only: 2 decode steps
    assert bench.bound_seconds(*args, 1000) == pytest.approx(2 * weights + (11 + 21 + 12) * 1000 / 1e9)
    assert bench.released_bound_seconds(*args, 1000) == pytest.approx(3 * weights + (11 + 12 + 21) * 1000 / 1e9)


def test_benchmark_compute_floor_counts_the_lm_head_only_where_a_token_needs_it():
    """The compute floor's FLOPs per token: decoder-layer weights for every token, the lm_head only
    for generated ones; the input embedding is a lookup (tied or not)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = importlib.util.spec_from_file_location("bench_aligner_inference",
                                                  REPO / "benchmarks" / "bench_aligner_inference.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    for tied in (True, False):
        config = LlamaConfig(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)
        torch.manual_seed(0)
        # one layer: q 8x8, k 8x4, v 8x4, o 8x8, gate/up/down 3 x 8x16, two norms of 8; the final norm 8
        body = 64 + 32 + 32 + 64 + 3 * 128 + 2 * 8 + 8
        assert bench.matmul_params(LlamaForCausalLM(config)) == (body, 800)


def test_benchmark_compute_floor_counts_a_batchs_shared_start_once():
    """floor_seconds: 2 FLOPs per weight and token; the 16+ tokens a batch's prompts share count once
    per batch (length-sorted batches, as the hf backend makes them); generated tokens add the lm_head."""
    spec = importlib.util.spec_from_file_location("bench_aligner_inference",
                                                  REPO / "benchmarks" / "bench_aligner_inference.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    start = list(range(20))
    prompts = [start + [100] * 5, start + [101] * 30, start + [102] * 10, [7] * 40]
    # 1 GFLOP/s, body 1, head 10: FLOPs = 2 x (prompt tokens + 11 x generated tokens)
    # one batch: 25 + 50 + 30 + 40 = 145 tokens, nothing shared by all four (the last differs)
    assert bench.floor_seconds(prompts, [2, 3, 4, 5], 1, 10, 1e-9, 4) == pytest.approx(2 * (145 + 11 * 14))
    # batches of 3 by length: [40 of 7s, 50, 30] share nothing, [25] is alone
    assert bench.floor_seconds(prompts, [2, 3, 4, 5], 1, 10, 1e-9, 3) == pytest.approx(2 * (145 + 11 * 14))
    # the first three alone: 20 shared tokens counted once instead of three times
    assert bench.floor_seconds(prompts[:3], [1, 1, 1], 1, 10, 1e-9, 4) == pytest.approx(2 * (105 - 40 + 33))


def test_benchmark_repeats_report_the_median_and_every_run():
    spec = importlib.util.spec_from_file_location("bench_aligner_inference",
                                                  REPO / "benchmarks" / "bench_aligner_inference.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    runs = [([], [1], 3.0, 2.0, 0.5), ([], [1], 1.04, 4.0, 0.0), ([], [1], 2.0, 3.0, 0.0)]
    assert bench.summarise(runs) == (2.0, 3.0, ", runs 3.0/1.0/2.0 s")
    assert bench.summarise(runs[:1]) == (3.0, 2.0, "")
    assert bench.summarise(runs[:2]) == (pytest.approx(2.02), 3.0, ", runs 3.0/1.0 s")
    assert bench.make_parser().parse_args(["--repeat", "3"]).repeat == 3


def test_benchmark_repeats_run_in_rounds_and_report_each_rounds_ratio(capsys):
    """--repeat N runs every method once a round, in order (a machine's drift meets them alike),
    and a method's line gets each round's tokens/s ratio to the first method's run of that round."""
    spec = importlib.util.spec_from_file_location("bench_aligner_inference",
                                                  REPO / "benchmarks" / "bench_aligner_inference.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    seconds = iter([10.0, 2.0, 20.0, 2.5, 12.0, 3.0])
    order = []
    results = bench.run_rounds(["released", "fast"], 3,
                               lambda name: order.append(name) or ([], [4, 6], next(seconds), 1.0, 0.0, {}))
    assert order == ["released", "fast"] * 3
    assert [[r[2] for r in runs] for runs in results] == [[10.0, 20.0, 12.0], [2.0, 2.5, 3.0]]
    # round ratios: (10 tok / 2 s) / (10 tok / 10 s) = 5, 20 / 2.5 = 8, 12 / 3 = 4
    assert bench.round_ratios(results[1], results[0]) == ", round ratios 5.00/8.00/4.00x"
    assert bench.round_ratios(results[1][:1], results[0][:1]) == ""
    assert capsys.readouterr().err.splitlines()[:2] == ["  round 1/3: released 10.0 s", "  round 1/3: fast 2.0 s"]


def test_benchmark_without_the_released_method_first_prints_no_bound(tiny_llama_dir, capsys):
    """The roofline bound needs each row's generated length, which only the batch-1 loop reports:
    with a fast method first the share is "--" and the rows are compared with that method."""
    spec = importlib.util.spec_from_file_location("bench_aligner_inference",
                                                  REPO / "benchmarks" / "bench_aligner_inference.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    from metaaligner.models import load_causal_lm

    model, tokenizer, _ = load_causal_lm(str(tiny_llama_dir), device="cpu")
    for methods in ("fast_cold,fast", "released,fast"):
        config = bench.BenchConfig(methods=methods, repeat=2)
        bench.run_workload("2x3", model, tokenizer, config, (100.0, 10.0), 10 ** 6, 64)
    first, second = capsys.readouterr().out.split("\nworkload 2x3")[1:]
    lines = first.splitlines()
    assert "  -- of roofline  2/2 identical to fast_cold  " in lines[1] and ", runs " in lines[1]
    # each fast method's line is followed by where its time went
    assert lines[2].startswith("    prefill ") and " s in 2 steps that ran 4 token-rows " in lines[2]
    assert lines[3].startswith("    engine floor ") and lines[3].endswith(" is small ops, copies and Python")
    assert lines[7] == "roofline bound: needs each row's generated length; put released first in --methods"
    assert "identical to batch 1" in second and "% of roofline" in second and "\nroofline bound " in second


def test_benchmark_prices_one_row_count_at_one_measured_rate(tiny_llama_dir):
    """linear_gflops is measured once per model and row count in a run: two methods whose phases
    have the same shapes get the same rate, not two timings minutes apart."""
    spec = importlib.util.spec_from_file_location("bench_aligner_inference",
                                                  REPO / "benchmarks" / "bench_aligner_inference.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    from metaaligner.models import load_causal_lm

    model = load_causal_lm(str(tiny_llama_dir), device="cpu")[0]
    first = bench.linear_gflops(model, 4)
    assert first > 0 and bench.linear_gflops(model, 4) == first
    assert bench.linear_gflops.cache_info().hits == 1 and bench.linear_gflops.cache_info().misses == 1


def test_benchmark_time_split_sets_each_phase_against_its_linears_at_the_models_rate(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_aligner_inference",
                                                  REPO / "benchmarks" / "bench_aligner_inference.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    asked = []
    monkeypatch.setattr(bench, "linear_gflops", lambda model, rows: asked.append(rows) or 2.0 * rows)
    monkeypatch.setattr(bench, "matmul_params", lambda model: (10 ** 9, 10 ** 8))
    monkeypatch.setattr(bench, "attention_flops_per_pair", lambda model: 10 ** 6)
    monkeypatch.setattr(bench, "kv_bytes_per_token", lambda model: 4 * 10 ** 6)
    work = {"prefill_seconds": 4.0, "prefill_tokens": 100, "decode_seconds": 6.0, "decode_steps": 4,
            "decode_token_rows": 12, "decode_pads_skipped": 3, "prefill_attention_pairs": 1000, "decode_kv_slots": 500}
    lines = bench.time_split(work, 9, None, 2, (10.0, 2.0), 0.15).split("\n")
    assert asked == [50, 3]  # a prompt's mean rows in prefill, a step's mean token-rows in decode
    # prefill: 2 x (100 x 1e9 + 2 rows x 1e8) FLOP at 100 GFLOP/s = 2.004 s; decode: 2 x 12 x 1.1e9 at 6
    assert lines[0] == ("    prefill 4.0 s for 100 tokens (its linears alone at 100 GFLOP/s, the model's rate at 50 "
                        "rows here: 2.0 s); decode 6.0 s in 4 steps that ran 12 token-rows (next tokens and "
                        "draft tokens; 3 pads skipped there) for 9 generated tokens (linears alone at 6 GFLOP/s, "
                        "the rate at 3 rows: "
                        "4.4 s)")
    # attention: 1000 pairs x 1e6 FLOP at 10 GFLOP/s = 0.1 s; 500 slots x 4 MB = 2 GB at 2 GB/s = 1 s;
    # floor 2.004 + 4.4 + 0.1 + 1.0 = 7.504 s: 9 tokens / 7.504 s / 0.15 tok/s = 8.00x; 10 - 7.504 s left;
    # the linears alone 2.004 + 4.4 = 6.404 s: 9 / 6.404 / 0.15 = 9.37x
    assert lines[1] == ("    engine floor 7.5 s = 8.00x the first method (its linears alone: 6.4 s = 9.37x): that "
                        "work at this machine's rates (the "
                        "linears above, the prefill's attention at the matmul peak: 0.1 s, the decode's 2.0 GB of "
                        "KV reads at the copy bandwidth: 1.0 s); the other 2.5 s (25%) is small ops, copies and "
                        "Python")
    assert len(lines) == 2
