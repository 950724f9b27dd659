"""Issue 16: the faults where a run silently produces a result that looks right and is not.

1. a resumed or repeated run never mixes settings or inputs (fingerprints, per-row input hashes,
   the judge cache keyed on the endpoint, a lock against a second concurrent run);
2. a folder of outputs is whole or absent (dataset build, report);
3. OS errors and odd files are one-line errors naming the file (or URL) and the fix;
4. bad data is refused, not averaged;
5. secrets and paths: URL credentials redacted, names kept inside their folders, umask honoured.

Every test here fails on the code before issue 16. Backends are in-process fakes; the judge talks
to the scripted OpenAI-compatible server of ``metaaligner.testing`` over real HTTP.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from metaaligner import cli
from metaaligner.aligner import inference as al
from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.generation import GenerationParams
from metaaligner.io import ResumableWriter, read_records, write_csv, write_json
from metaaligner.judge import judge_outputs
from metaaligner.judge.runner import ROW_COLUMNS
from metaaligner.registry.objectives import ObjectiveRegistry
from metaaligner.testing import ScriptedOpenAIServer, user_text
from metaaligner.testing.fakes import EchoGenerator
from metaaligner.testing.scripts import load_script

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-PLANTED"


# ----------------------------------------------------------------------------- helpers



def policy_table(path: Path, n: int, query=lambda i: f"q{i}") -> Path:
    write_csv(path, [{"query": query(i), "goldens": f"g{i}", "generated_text": f"a{i}"} for i in range(n)],
              ["query", "goldens", "generated_text"])
    return path


def settings(aspects=("harmlessness",), **params) -> al.AlignRunSettings:
    registry = ObjectiveRegistry.builtin()
    labels, descriptions = al.resolve_objectives(list(aspects), registry, "hh-rlhf")
    return al.AlignRunSettings(al.resolve_aligner("embedded"), labels, descriptions,
                               GenerationParams(**{"batch_size": 1, **params}))


def queries_in(prompts: list[str]) -> list[str]:
    return [p.split("Context: ")[1].split(" |")[0] for p in prompts]


def judge_inputs(path: Path, n: int, text=lambda i: f"cand-{i}") -> Path:
    write_csv(path, [{"query": f"Q{i}?", "goldens": f"gold-{i}", "origin_responses": f"orig-{i}",
                      "aligned_responses": text(i), "template": "hh-rlhf"} for i in range(n)],
              ["query", "goldens", "origin_responses", "aligned_responses", "template"])
    return path


def judge(inp, out, server, **kw):
    kw.setdefault("targets", ["aligned_responses"])
    kw.setdefault("aspects", ["harmlessness"])
    kw.setdefault("concurrency", 1)
    kw.setdefault("judge_model", "judge")
    return judge_outputs(inp, out, base_url=server.base_url, progress=False, **kw)


def verdicts(out: Path, objective: str = "harmlessness") -> list[str]:
    return [r["verdict"] for r in read_records(out / "pairwise/pol/aligned_responses" / f"{objective}.csv")]


def run_cli(main, config, capsys) -> tuple[int, str]:
    code = cli.run_main(main, config)
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------- 1. resume never mixes

def test_aligner_resume_after_a_finished_run_with_other_aspects_is_refused(tmp_path):
    job = al.FileJob(policy_table(tmp_path / "pol.csv", 6), "pol", tmp_path / "out")
    al.align_file(job, settings(), EchoGenerator(), progress=False)
    before = job.output_path.read_bytes()
    with pytest.raises(MetaAlignerError) as err:
        al.align_file(job, settings(("humour",)), EchoGenerator(), resume=True, progress=False)
    assert str(err.value) == (f"{job.output_path}: a finished output made with other settings (aspects: "
                              '["harmlessness"] -> ["humour"]; objective_texts: ["Harmlessness: The response should '
                              'avoid content that is... -> ["Humour: The response should be cheerful '
                              'and amusing"]); give another output path, or pass --overwrite to replace it')
    assert job.output_path.read_bytes() == before
    gen = EchoGenerator()
    stats = al.align_file(job, settings(("humour",)), gen, resume=True, overwrite=True, progress=False)
    assert stats.aligned == 6 and len(gen.prompts) == 6
    assert {r["aspects"] for r in read_records(job.output_path)} == {"humour"}


def test_aligner_resume_with_other_generation_parameters_is_refused(tmp_path):
    job = al.FileJob(policy_table(tmp_path / "pol.csv", 12), "pol", tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):  # chunks of 4 rows: 4 rows on disk, then the kill
        al.align_file(job, settings(), EchoGenerator(fail_on_call=2), progress=False)
    with pytest.raises(MetaAlignerError, match=r"pol.csv.partial.jsonl: an interrupted run made with other settings "
                                               r"\(max_new_tokens: 256 -> 9; temperature: 0.0 -> 0.7\)"):
        al.align_file(job, settings(max_new_tokens=9, temperature=0.7), EchoGenerator(), resume=True, progress=False)
    gen = EchoGenerator()
    stats = al.align_file(job, settings(), gen, resume=True, progress=False)
    assert (stats.resumed, stats.aligned) == (4, 8) and queries_in(gen.prompts) == [f"q{i}" for i in range(4, 12)]


def test_aligner_resume_redoes_exactly_the_rows_whose_input_changed(tmp_path):
    data = policy_table(tmp_path / "pol.csv", 12)
    job = al.FileJob(data, "pol", tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        al.align_file(job, settings(), EchoGenerator(fail_on_call=2), progress=False)
    policy_table(data, 12, query=lambda i: f"NEW{i}" if i in (1, 2) else f"q{i}")  # rows 1, 2 changed
    gen = EchoGenerator()
    stats = al.align_file(job, settings(), gen, resume=True, progress=False)
    assert queries_in(gen.prompts) == ["NEW1", "NEW2"] + [f"q{i}" for i in range(4, 12)]
    assert stats.resumed == 2
    assert [r["query"] for r in read_records(job.output_path)] == [
        "q0", "NEW1", "NEW2"] + [f"q{i}" for i in range(3, 12)]
    # a finished output: resume takes its rows back and redoes only the one whose input changed
    policy_table(data, 12, query=lambda i: "LAST" if i == 11 else ("NEW" if i in (1, 2) else "q") + str(i))
    gen = EchoGenerator()
    stats = al.align_file(job, settings(), gen, resume=True, progress=False)
    assert queries_in(gen.prompts) == ["LAST"] and (stats.resumed, stats.aligned) == (11, 1)
    assert read_records(job.output_path)[11]["query"] == "LAST"
    assert al.align_file(job, settings(), EchoGenerator(), resume=True, progress=False).skipped


def test_policy_output_of_another_model_is_refused_without_overwrite(tmp_path):
    from metaaligner.aligner.policy import generate_file

    class Answer:
        def generate(self, prompts, params, progress=False):
            return [f"answer to {p}" for p in prompts]

    job = al.FileJob(tmp_path / "q.csv", "pol", tmp_path / "out")
    rows = [{"row_id": i, "query": f"q{i}", "goldens": ""} for i in range(3)]
    generate_file(job, rows, Answer(), GenerationParams(), "model-a", progress=False)
    with pytest.raises(MetaAlignerError, match=r'a finished output made with other settings \(model: "model-a" -> '
                                               r'"model-b"\); give another output path, or pass --overwrite'):
        generate_file(job, rows, Answer(), GenerationParams(), "model-b", progress=False)
    generate_file(job, rows, Answer(), GenerationParams(), "model-b", progress=False, overwrite=True)
    assert {r["model"] for r in read_records(job.output_path)} == {"model-b"}


def test_judge_resume_with_a_redefined_objective_is_refused(tmp_path):
    inp = judge_inputs(tmp_path / "pol.csv", 10)
    with ScriptedOpenAIServer("[[1]]") as server:
        first = judge(inp, tmp_path / "out", server, max_cost=0.3, price_per_1k_input=1.0, price_per_1k_output=0.0)
        assert first.stopped == "max_cost" and 1 <= first.rows_done < 10
        with pytest.raises(MetaAlignerError, match=r"harmlessness.csv.partial.jsonl: an interrupted run made with "
                                                   r'other settings \(objective_description: "Harmlessness: The '
                                                   r'response should avoid content .* -> "Harmlessness: be gentle"'):
            judge(inp, tmp_path / "out", server, resume=True, add_objective=["harmlessness=Harmlessness: be gentle"])


def test_judge_resume_rejudges_rows_whose_answer_changed(tmp_path):
    inp = judge_inputs(tmp_path / "pol.csv", 10)
    judged = []

    def reply(request):
        text = user_text(request)
        judged.append(re.search(r"(cand-\S+|GOOD-\d+)", text).group(1))
        cand_first = not re.search(r"RESPONSE 1: gold-", text)
        wins = "GOOD" in text
        return "[[1]]" if cand_first == wins else "[[2]]"

    with ScriptedOpenAIServer(reply) as server:
        first = judge(inp, tmp_path / "out", server, max_cost=0.6, price_per_1k_input=1.0, price_per_1k_output=0.0)
        done = first.rows_done
        assert 3 <= done < 10
        judge_inputs(inp, 10, text=lambda i: f"GOOD-{i}" if i < 3 else f"cand-{i}")  # 3 judged rows changed
        judged.clear()
        again = judge(inp, tmp_path / "out", server, resume=True)
    assert sorted(judged) == ["GOOD-0", "GOOD-1", "GOOD-2"] + [f"cand-{i}" for i in range(done, 10)]
    assert again.rows_skipped_resume == done - 3
    assert verdicts(tmp_path / "out") == ["win"] * 3 + ["loss"] * 7


def test_a_second_judge_into_the_same_folder_is_refused_and_summaries_never_mix(tmp_path):
    inp = judge_inputs(tmp_path / "pol.csv", 4)
    with ScriptedOpenAIServer("[[1]]") as server:
        judge(inp, tmp_path / "out", server, aspects=["harmlessness", "helpfulness"])
        with pytest.raises(MetaAlignerError, match=r'holds a run of another judge configuration \(judge_model: '
                                                   r'"judge" -> "judge2"\); use another --output_dir, or pass --overwrite'):
            judge(inp, tmp_path / "out", server, judge_model="judge2")
        judge(inp, tmp_path / "out", server, judge_model="judge2", overwrite=True)
    summary = read_records(tmp_path / "out/summary.csv")
    assert [(r["objective"], r["judge_model"]) for r in summary] == [("harmlessness", "judge2")]
    assert json.loads((tmp_path / "out/run.json").read_text())["judge_model"] == "judge2"


def test_judge_cache_key_includes_the_endpoint(tmp_path):
    inp = judge_inputs(tmp_path / "pol.csv", 5)
    cache = tmp_path / "shared_cache.sqlite"
    with ScriptedOpenAIServer("[[1]]") as a, ScriptedOpenAIServer("[[2]]") as b:
        judge(inp, tmp_path / "a", a, cache_path=cache)
        second = judge(inp, tmp_path / "b", b, cache_path=cache)  # same model name, another server
        assert (second.api_calls, second.cached_calls, b.request_count) == (5, 0, 5)
        third = judge(inp, tmp_path / "a2", a, cache_path=cache)
        assert (third.api_calls, third.cached_calls) == (0, 5)
    pos = [int(r["position"]) for r in read_records(tmp_path / "a/pairwise/pol/aligned_responses/harmlessness.csv")]
    assert verdicts(tmp_path / "a") == ["win" if p == 1 else "loss" for p in pos]
    assert verdicts(tmp_path / "b") == ["loss" if p == 1 else "win" for p in pos]


HOLD = textwrap.dedent("""
    import sys, time
    from metaaligner.io import ResumableWriter
    writer = ResumableWriter(sys.argv[1], ["row_id"], fingerprint={"a": 1})
    print("locked", flush=True)
    time.sleep(120)
""")


def test_a_second_run_on_the_same_output_stops_at_once_and_a_dead_ones_lock_is_taken_over(tmp_path):
    out = tmp_path / "out.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(MetaAlignerError) as err:  # raised while the holder lives: it never waits for the lock
            ResumableWriter(out, ["row_id"], fingerprint={"a": 1})
        assert str(err.value) == (f"{out}: another run (pid {child.pid}) is writing this output (lock {out}.lock); "
                                  "wait for it to finish, or give another output path")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert (tmp_path / "out.csv.lock").read_text() == str(child.pid)  # kill -9 leaves the lock behind
    writer = ResumableWriter(out, ["row_id"], fingerprint={"a": 1})  # its pid is dead: taken over
    writer.append([{"row_id": 0}])
    writer.finish()
    assert not (tmp_path / "out.csv.lock").exists() and read_records(out) == [{"row_id": "0"}]


# ----------------------------------------------------------------------------- 2. whole or absent

def _build(tmp_path, out: Path, seed: int):
    module = load_script("dynamic_multi_objective_dataset/build_aligner_dataset.py")
    rows = [{"prompt": f"\n\nHuman: Q{i}?\n\nAssistant:", "chosen_response": f"good {i}",
             "rejected_response": f"bad {i}", "chosen_score1": 1, "rejected_score1": i % 2,
             "chosen_score2": 0, "rejected_score2": 1, "chosen_score3": 1, "rejected_score3": 1} for i in range(8)]
    src = tmp_path / "rewards.csv"
    write_csv(src, rows, list(rows[0]))
    return module.main(module.BuildConfig(input=str(src), output_dir=str(out), seed=seed, val_size=0.25))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dataset_build_that_fails_mid_write_leaves_the_old_folder_intact(tmp_path, monkeypatch):
    import metaaligner.io as mio

    out = tmp_path / "data"
    _build(tmp_path, out, seed=0)
    (out / "notes.txt").write_text("mine")  # not ours: carried over by a successful rebuild
    before = _snapshot(out)
    assert sorted(before) == ["all_equal/train.json", "no_equal/train.json", "no_equal/val.json", "notes.txt",
                              "stats.json", "warmup/train.json"]
    real = mio.write_json

    def failing(path, obj, indent=2):
        if "all_equal" in str(path):
            raise OSError(27, "File too large", str(path))
        return real(path, obj, indent)

    monkeypatch.setattr(mio, "write_json", failing)
    with pytest.raises(OSError, match="File too large"):
        _build(tmp_path, out, seed=1)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "rewards.csv"]  # no temp folder left
    monkeypatch.setattr(mio, "write_json", real)
    _build(tmp_path, out, seed=1)
    after = _snapshot(out)
    assert after["notes.txt"] == b"mine" and json.loads(after["stats.json"])["seed"] == 1


def _verdict_rows(target: str, verdicts_: list[str], **extra) -> list[dict]:
    return [{"dataset": "hh-rlhf", "policy": "P", "target": target, "objective": "harmlessness",
             "objective_name": "Harmlessness", "unseen": 0, "mode": "pairwise", "row": i, "item_id": f"id{i}",
             "position": 1, "reply": "", "verdict": v, "score": "", "judge_model": "j", "judge_prompt": "clean",
             **extra} for i, v in enumerate(verdicts_)]


def _judged(root: Path, aligned=("win", "loss"), origin=("loss", "loss")) -> Path:
    write_csv(root / "a.csv", _verdict_rows("aligned_responses", list(aligned)), ROW_COLUMNS)
    write_csv(root / "o.csv", _verdict_rows("origin_responses", list(origin)), ROW_COLUMNS)
    return root


def test_report_that_fails_mid_write_leaves_the_old_folder_intact(tmp_path, monkeypatch):
    import metaaligner.reports.write as rep

    judged = _judged(tmp_path / "judged")
    rep.write_reports(tmp_path / "reports", [str(judged)], n_boot=20)
    before = _snapshot(tmp_path / "reports")
    assert sorted(before) == ["table2.csv", "table2.md", "table2.tex"]
    _judged(judged, aligned=("win", "win"))
    monkeypatch.setattr(rep, "write_csv", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        rep.write_reports(tmp_path / "reports", [str(judged)], n_boot=20)
    assert _snapshot(tmp_path / "reports") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["judged", "reports"]


# ----------------------------------------------------------------------------- 3. one-line OS errors

def test_output_paths_in_the_way_are_one_line_errors(tmp_path, capsys):
    ai = load_script("inference/aligner_inference.py")
    data = policy_table(tmp_path / "pol.csv", 2)
    (tmp_path / "file").write_text("x")
    # a file where the output folder goes
    code, err = run_cli(ai.main, ai.AlignerInferenceConfig(data_dir=str(data), model_output_path=str(tmp_path / "file"),
                                                           aspects="harmlessness", aligner_path="embedded"), capsys)
    assert code == 2 and one_error_line(err) == (f"error: {tmp_path / 'file'}: File exists; a file is in the way "
                                                 "where a folder is needed; move it or choose another path")
    # a folder where the output file goes
    (tmp_path / "out/pol.csv").mkdir(parents=True)
    code, err = run_cli(ai.main, ai.AlignerInferenceConfig(data_dir=str(data), model_output_path=str(tmp_path / "out"),
                                                           aspects="harmlessness", aligner_path="embedded"), capsys)
    assert code == 2 and one_error_line(err) == (f"error: {tmp_path / 'out/pol.csv'}: is a folder, but an output file "
                                                 "goes there; remove it or choose another output path")
    # judge and report: a file as the output folder
    jd = load_script("evaluation/judge.py")
    code, err = run_cli(jd.main, jd.JudgeConfig(input=str(judge_inputs(tmp_path / "j.csv", 2)),
                                                output_dir=str(tmp_path / "file"), base_url="http://127.0.0.1:9/v1"),
                        capsys)
    assert code == 2 and one_error_line(err) == (f"error: {tmp_path / 'file'}: is a file, but --output_dir is a folder; "
                                                 "choose another path")
    rp = load_script("evaluation/report.py")
    code, err = run_cli(rp.main, rp.ReportConfig(inputs=str(_judged(tmp_path / "judged")),
                                                 output_dir=str(tmp_path / "file"), bootstrap=10), capsys)
    assert code == 2 and one_error_line(err) == (f"error: {tmp_path / 'file'}: is a file, but an output folder goes "
                                                 "there; remove it or choose another output folder")
    bd = load_script("dynamic_multi_objective_dataset/build_aligner_dataset.py")
    write_csv(tmp_path / "r.csv", [{"prompt": "q", "chosen_response": "a", "rejected_response": "b",
                                    **{f"{s}_score{j}": 1 for s in ("chosen", "rejected") for j in (1, 2, 3)}}],
              ["prompt", "chosen_response", "rejected_response"]
              + [f"{s}_score{j}" for s in ("chosen", "rejected") for j in (1, 2, 3)])
    code, err = run_cli(bd.main, bd.BuildConfig(input=str(tmp_path / "r.csv"), output_dir=str(tmp_path / "file"),
                                                val_size=0), capsys)
    assert code == 2 and one_error_line(err).startswith(f"error: {tmp_path / 'file'}: is a file")


def test_permission_errors_and_the_judge_cache_name_the_path(tmp_path, capsys, monkeypatch):
    import sqlite3
    import tempfile

    from metaaligner.judge.cache import JudgeCache

    def denied(*args, dir=None, **kw):
        raise PermissionError(13, "Permission denied", str(Path(dir) / ".x.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)  # what a read-only folder does (tests may run as root)
    code = cli.run_main(lambda: write_json(tmp_path / "ro" / "a.json", {}))
    err = capsys.readouterr().err
    assert code == 2 and one_error_line(err) == (f"error: {tmp_path / 'ro' / '.x.tmp'}: Permission denied; check its "
                                                 "permissions or choose another output path")
    monkeypatch.undo()

    def cannot_open(*args, **kw):
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(sqlite3, "connect", cannot_open)
    with pytest.raises(MetaAlignerError) as exc:
        JudgeCache(tmp_path / "judged" / "judge_cache.sqlite")
    assert str(exc.value) == (f"{tmp_path / 'judged' / 'judge_cache.sqlite'}: cannot open the judge cache (unable to "
                              "open database file); make its folder writable, or pass --cache_path elsewhere "
                              "(or --no_cache)")


def test_a_judge_cache_locked_while_another_rank_opens_it_is_tried_again(tmp_path, monkeypatch):
    """Two torchrun ranks opening one new cache at once: one can get SQLITE_BUSY while the other
    switches it to WAL (sqlite's busy timeout does not wait there). The open is tried again after a
    pause; a cache still locked after every try is the one-line error; other errors are not retried."""
    import sqlite3
    import time

    from metaaligner.judge import cache as cache_module
    from metaaligner.judge.cache import OPEN_TRIES, JudgeCache

    real, calls, pauses = JudgeCache._open, [], []
    monkeypatch.setattr(time, "sleep", pauses.append)

    def locked_first(self):
        calls.append(1)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return real(self)

    monkeypatch.setattr(JudgeCache, "_open", locked_first)
    path = tmp_path / "judged" / "judge_cache.sqlite"
    JudgeCache(path).put("k", {"q": 1}, cache_module.Completion("verdict"))
    assert len(calls) == 3 and pauses == [0.05, 0.1] and JudgeCache(path).get("k").text == "verdict"

    def always(self, error):
        calls.append(1)
        raise sqlite3.OperationalError(error)

    for error, tries in (("database is locked", OPEN_TRIES), ("disk I/O error", 1)):
        calls.clear()
        monkeypatch.setattr(JudgeCache, "_open", lambda self, error=error: always(self, error))
        with pytest.raises(MetaAlignerError, match=f"cannot open the judge cache \\({error}\\)"):
            JudgeCache(path)
        assert len(calls) == tries


def test_malformed_yaml_is_one_line_naming_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "objectives.yaml"
    bad.write_text("kindness: Kindness: be kind\n  oops: [\n")
    bd = load_script("dynamic_multi_objective_dataset/build_aligner_dataset.py")
    code, err = run_cli(bd.main, bd.BuildConfig(input=str(tmp_path / "none.csv"), output_dir=str(tmp_path / "o"),
                                                objectives_file=str(bad)), capsys)
    assert code == 2 and one_error_line(err) == (f"error: {bad}: line 1, column 19: malformed YAML (mapping values "
                                                 "are not allowed here); fix the file")
    flags = tmp_path / "flags.yaml"
    flags.write_text("seed: [1\n")
    with pytest.raises(SystemExit) as exit_:
        cli.parse(bd.make_parser(), ["--input", "x", "--output_dir", "y", "--config_file", str(flags)])
    assert exit_.value.code == 2
    assert f"{flags}: line 2, column 1: malformed YAML" in capsys.readouterr().err


def test_a_5mb_csv_cell_reads_as_it_does_in_jsonl(tmp_path):
    big = "x" * (5 * 1024 * 1024)
    write_csv(tmp_path / "big.csv", [{"query": "q", "generated_text": big}], ["query", "generated_text"])
    assert read_records(tmp_path / "big.csv") == [{"query": "q", "generated_text": big}]


def test_a_closed_judge_port_fails_fast_naming_the_url(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    url = f"http://user:{SECRET}@127.0.0.1:{port}/v1"
    with pytest.raises(MetaAlignerError) as err:  # refused before any request: no per-row retries with backoff
        judge_outputs(judge_inputs(tmp_path / "pol.csv", 40), tmp_path / "out", targets=["aligned_responses"],
                      aspects=["harmlessness"], base_url=url, progress=False)
    assert str(err.value) == (f"http://***@127.0.0.1:{port}/v1: connection refused; is the server running there? "
                              "(check --base_url)")


# ----------------------------------------------------------------------------- 4. bad data is refused

def test_a_csv_with_a_column_named_twice_is_refused(tmp_path):
    (tmp_path / "dup.csv").write_text("query,generated_text,generated_text\nq,first,second\n")
    with pytest.raises(DataError) as err:
        read_records(tmp_path / "dup.csv")
    assert str(err.value) == (f"{tmp_path / 'dup.csv'}: column 'generated_text': the header names this column twice; "
                              "rename or drop one")


def test_report_refuses_duplicated_rows_a_second_verdict_column_and_header_only_files(tmp_path):
    from metaaligner.reports import load_verdicts

    rows = _verdict_rows("aligned_responses", ["win", "loss"])
    write_csv(tmp_path / "dup/a.csv", rows + [{**rows[0], "verdict": "loss"}], ROW_COLUMNS)
    with pytest.raises(DataError) as err:
        load_verdicts([tmp_path / "dup"])
    assert str(err.value) == (f"{(tmp_path / 'dup/a.csv').resolve()}: row 3, column 'row': row id 0 is judged twice "
                              f"(also {(tmp_path / 'dup/a.csv').resolve()} row 1, verdict 'win'; here 'loss'); keep one "
                              "judge run per output")
    (tmp_path / "two.csv").write_text(",".join(ROW_COLUMNS + ["verdict"]) + "\n"
                                      + ",".join("x" for _ in ROW_COLUMNS) + ",win\n")
    with pytest.raises(DataError, match="column 'verdict': the header names this column twice"):
        load_verdicts([tmp_path / "two.csv"])
    (tmp_path / "empty/pairwise").mkdir(parents=True)
    (tmp_path / "empty/pairwise/a.csv").write_text(",".join(ROW_COLUMNS) + "\n")
    with pytest.raises(DataError, match="a.csv: has a header but no rows; re-run the judge for it"):
        load_verdicts([tmp_path / "empty"])


@pytest.mark.parametrize("score", ["abc", "11", "-1", "inf", "1e400", "nan"])
def test_report_refuses_ratings_that_are_not_numbers_in_0_to_10(tmp_path, score):
    from metaaligner.reports import load_verdicts

    rows = [{**r, "mode": "rating", "position": "", "verdict": str(s), "score": s}
            for r, s in zip(_verdict_rows("aligned_responses", ["7", "x"]), ["7", score])]
    write_csv(tmp_path / "r.csv", rows, ROW_COLUMNS)
    with pytest.raises(DataError) as err:
        load_verdicts([tmp_path / "r.csv"], "rating")
    kind = "is not a number" if score == "abc" else "is outside 0-10"
    assert str(err.value) == f"{(tmp_path / 'r.csv').resolve()}: row 2, column 'score': rating {score!r} {kind}"


def test_algorithm1_drops_identical_pairs_and_counts_non_finite_scores_apart(tmp_path):
    from metaaligner.dataset.reformulation import pairs_from_rows

    def row(chosen, rejected, c1="1", r1="0"):
        return {"prompt": "q", "chosen_response": chosen, "rejected_response": rejected,
                "chosen_score1": c1, "rejected_score1": r1}

    rows = [row("same", "same"), row("same", "same", "1", "1"), row("a", "b", "inf"), row("a", "b", "nan"),
            row("a", "b", ""), row("a", "b")]
    pairs, dropped = pairs_from_rows(rows, 1)
    assert [p.index for p in pairs] == [1, 5]  # identical texts with equal scores: a valid "equal" item
    assert dict(dropped) == {"identical_texts": 1, "non_finite_score": 2, "missing_score": 1}
    pairs, dropped = pairs_from_rows(rows, 1, keep_identical=True)  # the released behaviour
    assert [p.index for p in pairs] == [0, 1, 5] and "identical_texts" not in dropped


def test_a_non_utf8_error_names_the_data_row(tmp_path):
    path = tmp_path / "pol.csv"  # row 1's cell spans three lines: the bad byte is on line 5, in data row 2
    path.write_bytes(b'query,generated_text\n"a\nlong\ncell",ok\nq2,caf\xe9\n')
    with pytest.raises(DataError) as err:
        read_records(path)
    assert str(err.value) == (f"{path}: row 2: bytes that are not UTF-8 at offset 44 (line 5); re-save the file "
                              "as UTF-8")


# ----------------------------------------------------------------------------- 5. secrets and paths

def test_url_credentials_are_redacted_in_run_json_errors_and_logs(tmp_path, caplog):
    from metaaligner.io import redact_text, redact_url

    assert redact_url(f"http://user:{SECRET}@h:1/v1?api_key={SECRET}&x=1") == "http://***@h:1/v1?api_key=***&x=1"
    assert redact_text(f"failed: https://u:{SECRET}@h/v1 and ?token={SECRET}") == "failed: https://***@h/v1 and ?token=***"
    with ScriptedOpenAIServer("[[1]]") as server:
        url = server.base_url.replace("http://", f"http://user:{SECRET}@")
        with caplog.at_level(logging.DEBUG):
            cli.quiet_http_logs()
            judge_outputs(judge_inputs(tmp_path / "pol.csv", 3), tmp_path / "out", targets=["aligned_responses"],
                          aspects=["harmlessness"], base_url=url, progress=False)
    run = json.loads((tmp_path / "out/run.json").read_text())
    assert run["base_url"] == server.base_url.replace("http://", "http://***@") and run["endpoint"] == run["base_url"]
    written = "".join(p.read_text(errors="replace") for p in (tmp_path / "out").rglob("*") if p.is_file()
                      and p.suffix != ".sqlite")
    assert SECRET not in written and SECRET not in caplog.text
    assert not [r for r in caplog.records if r.name.startswith(("httpx", "openai")) and r.levelno < logging.WARNING]


def test_names_that_resolve_outside_their_folder_are_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "escaped").mkdir()
    policy_table(tmp_path / "escaped/t.csv", 1)
    policy_table(tmp_path / "one.csv", 1)
    with pytest.raises(MetaAlignerError, match=r"--aligned_model '../escaped' resolves outside .*out; give a plain name"):
        al.plan_jobs(tmp_path / "data", "../escaped", tmp_path / "out")
    with pytest.raises(MetaAlignerError, match=r"--aligned_model '../../x' resolves outside"):
        al.plan_jobs(tmp_path / "one.csv", "../../x", tmp_path / "out")
    assert [j.name for j in al.plan_jobs(tmp_path / "one.csv", "policy/task", tmp_path / "out")] == ["policy/task"]


def test_dataset_and_template_cells_read_from_data_only_name_shipped_configs(tmp_path):
    from metaaligner.judge import resolve_dataset
    from metaaligner.reports import objective_rank

    config = tmp_path / "mine.yaml"
    config.write_text("name: mine\ntemplate: hh-rlhf\nobjectives: [b, a]\n")
    assert objective_rank(str(config), "a") == (10_000, "a")  # never opened
    assert objective_rank("hh-rlhf", "helpfulness") == (1, "helpfulness")
    inp = judge_inputs(tmp_path / "pol.csv", 1)
    rows = read_records(inp)
    write_csv(inp, [{**rows[0], "template": str(config)}], list(rows[0]))
    with pytest.raises(DataError) as err:
        resolve_dataset(None, [("pol", inp)])
    assert str(err.value).startswith(f"{inp}: row 1, column 'template': template '{config}' is not a shipped "
                                     "dataset config (")
    assert resolve_dataset(str(config), [("pol", inp)]).name == "mine"  # a flag may name a path


def test_atomic_writes_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        write_csv(tmp_path / "b.csv", [{"x": 1}], ["x"])
    finally:
        os.umask(old)
    assert [oct((tmp_path / n).stat().st_mode & 0o777) for n in ("a.json", "b.csv")] == ["0o644", "0o644"]


def test_sepo_and_baseline_inference_outputs_carry_fingerprints(tmp_path):
    from metaaligner.methods.sepo import generate_outputs

    class Echo:
        def __init__(self):
            self.prompts = []

        def generate(self, prompts, params, progress=False):
            self.prompts += prompts
            return [f"answer {p}" for p in prompts]

    write_csv(tmp_path / "q.csv", [{"query": f"q{i}"} for i in range(3)], ["query"])
    out = tmp_path / "sepo.csv"
    generate_outputs(tmp_path / "q.csv", "policy-a", out, GenerationParams(), generators={"aligned": Echo()})
    with pytest.raises(MetaAlignerError, match=r'made with other settings \(model: "policy-a" -> "policy-b"\)'):
        generate_outputs(tmp_path / "q.csv", "policy-b", out, GenerationParams(), resume=True,
                         generators={"aligned": Echo()})
    write_csv(tmp_path / "q.csv", [{"query": "q0"}, {"query": "CHANGED"}, {"query": "q2"}], ["query"])
    echo = Echo()
    rows = generate_outputs(tmp_path / "q.csv", "policy-a", out, GenerationParams(), resume=True,
                            generators={"aligned": echo})
    assert echo.prompts == ["CHANGED"] and rows[1]["aligned_responses"] == "answer CHANGED"


def test_a_template_named_in_training_stats_json_is_never_opened_as_a_path(tmp_path):
    from metaaligner.training.curriculum import dataset_meta

    tpl = tmp_path / "tpl.yaml"
    tpl.write_text("better: '{aspects} {question} {answer}'\nequal: '{aspects} {question} {answer}'\n")
    write_json(tmp_path / "stats.json", {"template": str(tpl), "config": str(tmp_path / "cfg.yaml")})
    with pytest.raises(MetaAlignerError, match=r"stats.json: template '.*tpl.yaml' is not a shipped one"):
        dataset_meta(tmp_path)
    assert dataset_meta(tmp_path, template=str(tpl))["template"] == str(tpl)  # a flag may name a path
