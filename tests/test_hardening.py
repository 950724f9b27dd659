"""Issue 34, hardening second round: no write outside the output folder, no silent data loss on
malformed input, every flag validated, resume that sees every setting, every error one line naming
its file, an installed package that finds its data, tests that hold on a busy machine.

Every test here fails on the code before issue 34. Backends are in-process fakes; the judge talks to
the scripted OpenAI-compatible server of ``metaaligner.testing`` over real HTTP (real ``openai``
client); interruptions and file size limits are real child processes.
"""
from __future__ import annotations

import ast
import gzip
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from metaaligner import cli
from metaaligner.aligner import inference as al
from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.generation import GenerationParams
from metaaligner.io import ResumableWriter, read_records, redact_text, write_csv
from metaaligner.judge import judge_outputs
from metaaligner.registry.objectives import ObjectiveRegistry, build_registry
from metaaligner.testing import Fault, ScriptedOpenAIServer
from metaaligner.testing.fakes import EchoGenerator
from metaaligner.testing.scripts import load_script
from metaaligner.testing.waits import DEADLINE_S

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-PLANTED-key-0123"
CHILD_ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# ----------------------------------------------------------------------------- helpers

def policy_table(path: Path, n: int, answer=lambda i: f"a{i}") -> Path:
    write_csv(path, [{"query": f"q{i}", "goldens": f"g{i}", "generated_text": answer(i)} for i in range(n)],
              ["query", "goldens", "generated_text"])
    return path


def settings(**params) -> al.AlignRunSettings:
    registry = ObjectiveRegistry.builtin()
    labels, descriptions = al.resolve_objectives(["harmlessness"], registry, "hh-rlhf")
    return al.AlignRunSettings(al.resolve_aligner("embedded"), labels, descriptions,
                               GenerationParams(**{"batch_size": 2, **params}))


def align(inp: Path, out: Path, **kw) -> al.AlignStats:
    job = al.FileJob(inp, "pol", out)
    return al.align_file(job, settings(), EchoGenerator(), progress=False, **kw)


def judge_inputs(path: Path, n: int, text=lambda i: f"cand-{i}") -> Path:
    write_csv(path, [{"query": f"Q{i}?", "goldens": f"gold-{i}", "origin_responses": f"orig-{i}",
                      "aligned_responses": text(i), "template": "hh-rlhf"} for i in range(n)],
              ["query", "goldens", "origin_responses", "aligned_responses", "template"])
    return path


def one_error_line(err: str) -> str:
    lines = [line for line in re.split(r"[\r\n]", err) if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def run_cli(main, config, capsys) -> tuple[int, str]:
    code = cli.run_main(main, config)
    return code, capsys.readouterr().err


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ============================================================================= 1. security

@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("side", ["{}.partial.jsonl", ".{}.fingerprint.json", "{}.lock"])
def test_a_symlink_planted_at_a_side_file_is_refused_never_followed(tmp_path, side, resume):
    out, outside = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    outside.mkdir()
    inp = policy_table(tmp_path / "in.csv", 4)
    target = outside / "victim.txt"
    target.write_text("keep me\n")
    link = out / side.format("pol.csv")
    link.symlink_to(target)
    with pytest.raises(MetaAlignerError) as err:
        align(inp, out, resume=resume)
    assert str(err.value) == (f"{link}: is a symbolic link (to {target}); refusing to write through a link this "
                              "run did not create; remove it, or choose another output path")
    assert target.read_text() == "keep me\n" and sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert not (out / "pol.csv").exists()


def test_a_dangling_symlink_at_the_partial_file_creates_nothing_outside(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    outside.mkdir()
    (out / "pol.csv.partial.jsonl").symlink_to(outside / "new.jsonl")
    with pytest.raises(MetaAlignerError, match="is a symbolic link"):
        ResumableWriter(out / "pol.csv", ["row_id"], fingerprint={"a": 1}).append([{"row_id": 0}])
    assert list(outside.iterdir()) == []


def test_other_appending_writers_and_the_judge_cache_refuse_planted_links(tmp_path):
    from metaaligner.io import open_no_follow
    from metaaligner.judge.cache import JudgeCache

    outside = tmp_path / "victim"
    outside.write_text("keep\n")
    for name in ("train_log.jsonl", "judge_cache.sqlite", "judge_cache.sqlite-wal"):
        link = tmp_path / "run" / name
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(outside)
        with pytest.raises(MetaAlignerError, match="is a symbolic link"):
            if name.startswith("judge_cache"):
                JudgeCache(tmp_path / "run" / "judge_cache.sqlite")
            else:
                open_no_follow(link, "a")
        link.unlink()
    assert outside.read_text() == "keep\n"


@pytest.mark.parametrize("key", ["../../../../../escaped", "/abs/key", "..", ".hidden", "a/b", "-flag"])
def test_objective_keys_are_names_never_paths(tmp_path, key):
    spec = tmp_path / "objectives.json"
    spec.write_text(json.dumps({key: "Escape: write outside the output folder."}))
    with pytest.raises(MetaAlignerError) as err:
        build_registry(str(spec))
    assert f"objective key {key!r} is not a plain name" in str(err.value)
    with pytest.raises(MetaAlignerError, match="is not a plain name"):
        build_registry(None, [f"{key}=Escape: somewhere else."])


def test_the_judge_writes_nothing_outside_its_output_dir(tmp_path, capsys):
    """The issue's case end to end: an objectives file key '../../../../../escaped' (refused where the
    registry is built), and a planted folder link inside the output folder (the path is resolved)."""
    script = load_script("evaluation/judge.py")
    inp = judge_inputs(tmp_path / "in" / "pol.csv", 2)
    out = tmp_path / "a" / "b" / "judged"
    spec = tmp_path / "objectives.yaml"
    spec.write_text("'../../../../../escaped': 'Escape: be elsewhere.'\n")
    with ScriptedOpenAIServer("[[1]]") as server:
        config = script.JudgeConfig(input=str(inp), output_dir=str(out), base_url=server.base_url,
                                    judge_model="j", target="aligned_responses", aspects="../../../../../escaped",
                                    objectives_file=str(spec), concurrency=1)
        code, err = run_cli(script.main, config, capsys)
        assert code == 2 and "is not a plain name" in one_error_line(err)
        assert server.request_count == 0
        # a link planted inside the output folder that leads out of it
        (out / "pairwise").mkdir(parents=True)
        (out / "pairwise" / "pol").symlink_to(tmp_path / "a", target_is_directory=True)
        config.aspects, config.objectives_file = "harmlessness", None
        code, err = run_cli(script.main, config, capsys)
        assert code == 2 and "resolves outside" in one_error_line(err)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "in/pol.csv", "objectives.yaml"] + sorted(str(p.relative_to(tmp_path)) for p in out.rglob("*") if p.is_file())
    assert not any(p.is_file() for p in (tmp_path / "a").iterdir())


def test_an_upstream_401_echoing_the_key_never_reaches_stderr_or_the_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    script = load_script("evaluation/judge.py")
    inp = judge_inputs(tmp_path / "pol.csv", 2)
    out = tmp_path / "judged"
    with ScriptedOpenAIServer(lambda request: Fault(status=401, echo_auth=True)) as server:
        config = script.JudgeConfig(input=str(inp), output_dir=str(out), base_url=server.base_url, judge_model="j",
                                    target="aligned_responses", aspects="harmlessness", concurrency=1)
        code, err = run_cli(script.main, config, capsys)
        assert server.fault_count >= 1
    line = one_error_line(err)
    assert code == 2 and "HTTP 401" in line and "Authorization: ***" in line and SECRET not in err
    db = sqlite3.connect(out / "judge_cache.sqlite")
    failures = [row[0] for row in db.execute("SELECT error FROM failures")]
    db.close()
    assert failures and all("Authorization: ***" in f and SECRET not in f for f in failures)
    assert [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()] == []


def test_the_openai_backend_error_line_carries_no_key(monkeypatch):
    from metaaligner.generation import get_generator

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with ScriptedOpenAIServer(lambda request: Fault(status=401, echo_auth=True)) as server:
        gen = get_generator("openai", "m", base_url=server.base_url, chat_template=True, max_retries=0)
        with pytest.raises(MetaAlignerError) as err:
            gen.generate(["hello"], GenerationParams(max_new_tokens=4))
    assert "401" in str(err.value) and SECRET not in str(err.value) and "***" in str(err.value)


@pytest.mark.parametrize("text, expected", [
    ("HTTP 401: Authorization: Bearer abc123def456", "HTTP 401: Authorization: ***"),
    ('{"error": {"message": "bad header bearer tok3n-value"}}', '{"error": {"message": "bad header bearer ***"}}'),
    ("invalid key sk-proj-abcdef123456", "invalid key sk-***"),
    ('{"api_key": "abcdefgh", "n": 1}', '{"api_key": "***", "n": 1}'),
    (f"echo: {SECRET}!", "echo: ***!"),
    ("http://user:pw@host/v1?key=zz", "http://***@host/v1?key=***"),
    ("Basic authentication failed; token limit 4096", "Basic authentication failed; token limit 4096"),
])
def test_one_redaction_helper_removes_keys_and_bearer_tokens(text, expected, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert redact_text(text) == expected


# ============================================================================= 2. data loss

UNBALANCED = 'query,goldens,generated_text\n"q0,g0,a0\nq1,g1,a1\nq2,g2,a2\n'
SHORT_ROW = "query,goldens,generated_text\nq0,g0,a0\nq1,g1\nq2,g2,a2\n"


@pytest.mark.parametrize("text, message", [
    (UNBALANCED, "row 1: a quoted cell is never closed (a '\"' opened on line 2 or later runs to the end of the "
                 "file); close or double the quote"),
    (SHORT_ROW, "row 2: fewer cells than header columns (2 of 3, line 3); a cell is missing or a line break split "
                "the row"),
    ('query,goldens,generated_text\n"q0"x,g0,a0\n', "row 1: malformed CSV on line 2 (',' expected after '\"'); "
                                                     "quote cells that hold quotes, commas or line breaks, doubling "
                                                     "inner quotes"),
])
def test_a_malformed_csv_is_one_line_naming_file_and_row_and_replaces_nothing(tmp_path, text, message):
    inp = policy_table(tmp_path / "in.csv", 6)
    out = tmp_path / "out"
    align(inp, out)
    before = files_under(out)
    assert len(read_records(out / "pol.csv")) == 6
    inp.write_text(text)
    with pytest.raises(DataError) as err:
        align(inp, out, overwrite=True)
    assert str(err.value) == f"{inp}: {message}"
    assert files_under(out) == before


def test_a_row_with_more_cells_and_blank_lines_are_read_as_before(tmp_path):
    (tmp_path / "x.csv").write_text('a,b\n1,2\n\n3,"4\n5"\n')
    assert read_records(tmp_path / "x.csv") == [{"a": "1", "b": "2"}, {"a": "3", "b": "4\n5"}]


SWAP_CHILD = textwrap.dedent(r"""
    import os, signal, sys
    from pathlib import Path
    import metaaligner.io as mio

    folder, kill_at = Path(sys.argv[1]), int(sys.argv[2])
    calls = {"n": 0}
    def killing(real):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return wrapped
    for name in ("rename", "replace", "link"):
        setattr(os, name, killing(getattr(os, name)))
    with mio.atomic_folder(folder) as tmp:
        for i in range(3):
            (tmp / f"new{i}.txt").write_text("new")
        (tmp / "shared.txt").write_text("new")
    print("finished", calls["n"])
""")


def _old_folder(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True)
    for i in range(5):
        (folder / f"old{i}.txt").write_text("old")
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.txt").write_text("old")
    (folder / "shared.txt").write_text("old")
    return files_under(folder)


def test_a_kill_anywhere_inside_the_folder_swap_loses_no_file(tmp_path):
    """Killed at every rename/link of the swap in turn: the next run finds the old folder whole or the
    new one whole (old files carried over), never a folder missing files, and no hidden leftover."""
    from metaaligner.io import recover_folder

    reference = tmp_path / "ref" / "data"
    old = _old_folder(reference)
    done = subprocess.run([sys.executable, "-c", SWAP_CHILD, str(reference), "0"], env=CHILD_ENV,
                          capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr
    new, total = files_under(reference), int(done.stdout.split()[-1])
    assert new == {**old, **{f"new{i}.txt": b"new" for i in range(3)}, "shared.txt": b"new"}
    assert total >= 4
    for kill_at in range(1, total + 1):
        folder = tmp_path / f"k{kill_at}" / "data"
        _old_folder(folder)
        child = subprocess.run([sys.executable, "-c", SWAP_CHILD, str(folder), str(kill_at)], env=CHILD_ENV,
                               capture_output=True, text=True, timeout=DEADLINE_S)
        assert child.returncode == -9, (kill_at, child.stdout, child.stderr)
        recover_folder(folder)
        assert files_under(folder) in (old, new), kill_at
        assert sorted(p.name for p in folder.parent.iterdir()) == ["data"], kill_at


def test_leftovers_of_an_interrupted_swap_are_recovered_or_reported(tmp_path, caplog):
    from metaaligner.io import recover_folder

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "data"
    _old_folder(folder)
    unfinished = tmp_path / f".data.{dead.pid}.x1y2.tmp"
    unfinished.mkdir()
    (unfinished / "half.txt").write_text("half")
    legacy = tmp_path / ".data.abcd1234.tmp"  # an older version moved old files into it
    legacy.mkdir()
    (legacy / "old9.txt").write_text("old")
    with caplog.at_level(logging.WARNING):
        lines = recover_folder(folder)
    assert lines == [f"{folder}: removed {unfinished.name}, the unfinished build of an interrupted run",
                     f"{legacy}: left by an interrupted run of an older version; it may hold files of {folder}: "
                     "move back what you need, then delete it"]
    assert not unfinished.exists() and (legacy / "old9.txt").read_text() == "old"
    assert lines[1] in caplog.text
    # the previous folder moved aside and the new one never renamed in: the old one is put back
    os.rename(folder, tmp_path / ".data.old")
    assert recover_folder(folder)[0] == (f"{folder}: put back the previous output (.data.old) an interrupted run "
                                         "had moved aside")
    assert (folder / "old0.txt").read_text() == "old"


# ============================================================================= 5. one line, naming the file

def _gz(path: Path, text: str) -> bytes:
    data = gzip.compress(text.encode("utf-8"))
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[: len(data) // 2], "truncated gzip file (it ends before its end-of-stream marker); download "
                                          "or copy it again"),
    (lambda data: data[:10] + bytes(20) + data[30:], "not a valid gzip file or corrupted"),
])
def test_a_truncated_or_corrupted_gzip_is_one_line_naming_the_file(tmp_path, damage, message, capsys):
    rows = "".join(f"q{i},g{i},answer {i} " + "x" * 50 + "\n" for i in range(200))
    good = _gz(tmp_path / "pol.csv.gz", "query,goldens,generated_text\n" + rows)
    (tmp_path / "pol.csv.gz").write_bytes(damage(good))
    with pytest.raises(DataError) as err:
        read_records(tmp_path / "pol.csv.gz")
    assert str(err.value).startswith(f"{tmp_path / 'pol.csv.gz'}: {message}")
    # the judge and the UltraFeedback converter read through the same reader
    judged = judge_inputs(tmp_path / "j.csv", 200)
    (tmp_path / "j.csv.gz").write_bytes(damage(gzip.compress(judged.read_bytes())))
    with pytest.raises(DataError, match=r"j\.csv\.gz: (truncated|not a valid)"):
        judge_outputs(tmp_path / "j.csv.gz", tmp_path / "judged", targets=["aligned_responses"],
                      aspects=["harmlessness"], dry_run=True, dataset="hh-rlhf", progress=False)
    uf = load_script("dynamic_multi_objective_dataset/prepare_ultrafeedback.py")
    records = "".join(json.dumps({"instruction": f"i{i}", "completions": []}) + "\n" for i in range(300))
    (tmp_path / "uf.jsonl.gz").write_bytes(damage(gzip.compress(records.encode())))
    code, err = run_cli(uf.main, uf.PrepareUltraFeedbackConfig(input=str(tmp_path / "uf.jsonl.gz"),
                                                               output_dir=str(tmp_path / "uf"), progress=False), capsys)
    assert code == 2 and f"{tmp_path / 'uf.jsonl.gz'}: " in one_error_line(err)


def test_a_jsonl_row_naming_a_key_twice_is_refused_like_a_csv_column(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"query": "q", "answer": "a"}\n{"query": "q1", "answer": "a", "query": "q2"}\n')
    with pytest.raises(DataError) as err:
        read_records(tmp_path / "x.jsonl")
    assert str(err.value) == f"{tmp_path / 'x.jsonl'}: row 2, column 'query': the object names this key twice; rename or drop one"
    (tmp_path / "x.json").write_text('[{"a": 1, "a": 2}]')
    with pytest.raises(DataError, match="column 'a': an object names this key twice"):
        read_records(tmp_path / "x.json")


FSIZE_CHILD = textwrap.dedent(r"""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
    sys.argv = sys.argv[2:]
    import runpy
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def _run_limited(limit: int, script: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FSIZE_CHILD, str(limit), str(REPO / script), *argv],
                          env={**CHILD_ENV, "OPENAI_API_KEY": ""}, capture_output=True, text=True, timeout=DEADLINE_S)


def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    """`ulimit -f`: every write past the limit fails with EFBIG; the error names the file written."""
    inp = judge_inputs(tmp_path / "pol.csv", 40, text=lambda i: f"cand-{i} " + "long answer " * 300)
    out = tmp_path / "judged"
    with ScriptedOpenAIServer("[[1]]") as server:
        proc = _run_limited(120_000, "evaluation/judge.py", "--input", str(inp), "--output_dir", str(out),
                            "--base_url", server.base_url, "--judge_model", "j", "--target", "aligned_responses",
                            "--aspects", "harmlessness", "--concurrency", "1")
    line = one_error_line(proc.stderr)
    assert proc.returncode == 2 and line.startswith(f"error: {out}/"), proc.stderr[-3000:]
    assert "File too large" in line or "the judge cache failed" in line
    # without the cache, the rows' own file (long replies) hits the limit: named too
    with ScriptedOpenAIServer("[[1]] " + "because " * 400) as server:
        proc = _run_limited(60_000, "evaluation/judge.py", "--input", str(inp), "--output_dir", str(tmp_path / "j2"),
                            "--base_url", server.base_url, "--judge_model", "j", "--target", "aligned_responses",
                            "--aspects", "harmlessness", "--concurrency", "1", "--cache", "false")
    line = one_error_line(proc.stderr)
    assert proc.returncode == 2 and line.startswith(f"error: {tmp_path / 'j2'}/") and "File too large" in line, \
        proc.stderr[-3000:]


def test_a_malformed_judge_prompt_yaml_names_its_file(tmp_path, capsys):
    script = load_script("evaluation/judge.py")
    bad = tmp_path / "my_prompts.yaml"
    bad.write_text("pairwise:\n  general:\n    user: [unclosed\n")
    config = script.JudgeConfig(input=str(judge_inputs(tmp_path / "pol.csv", 1)), output_dir=str(tmp_path / "out"),
                                judge_prompt=str(bad), judge_model="j", dry_run=True, dataset="hh-rlhf")
    code, err = run_cli(script.main, config, capsys)
    assert code == 2 and one_error_line(err).startswith(f"error: {bad}: line ")
    bad.write_text("pairwise:\n  general:\n    user: [a, list]\n")
    code, err = run_cli(script.main, config, capsys)
    assert code == 2 and one_error_line(err) == (f"error: {bad}: pairwise/general: user must be a string, got list "
                                                 "['a', 'list']")


BOMB = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        + "".join(f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
        + "helpfulness: {description: *i}\n")   # 9^9 strings once expanded (the old loader str()-ed them: a hang)


def test_a_billion_laughs_objectives_file_is_refused_at_once(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    code = ("import sys; from metaaligner.registry.objectives import build_registry\n"
            "from metaaligner.errors import MetaAlignerError\n"
            "try:\n    build_registry(sys.argv[1])\nexcept MetaAlignerError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(bomb)], env=CHILD_ENV, capture_output=True, text=True,
                          timeout=DEADLINE_S)  # a hang guard only: the refusal comes before any expansion
    assert proc.stdout.strip() == (f"{bomb}: line 2, column 8: malformed YAML (an alias (*a); aliases are not "
                                   "allowed in data files, write the value out); fix the file"), proc.stderr


@pytest.mark.parametrize("text, message", [
    ("x: &x [*x]\n", "line 1, column 8: malformed YAML (an alias (*x); aliases are not allowed in data files, write "
                     "the value out); fix the file"),
    ("honesty: [short, concise]\n", "objective 'honesty' must map to a description string, got list"),
    ("honesty: {description: [short, concise]}\n", "objective 'honesty': description must be a string, got list "
                                                   "['short', 'concise']"),
    ('honesty: {description: "Honesty: be honest.", weight: 2}\n', "objective 'honesty': unknown keys ['weight']; "
                                                                 "allowed: description, name"),
])
def test_objectives_yaml_is_type_checked_and_aliases_are_refused(tmp_path, text, message):
    spec = tmp_path / "objectives.yaml"
    spec.write_text(text)
    with pytest.raises(MetaAlignerError) as err:
        build_registry(str(spec))
    assert str(err.value) == f"{spec}: {message}"


def test_a_recursive_alias_in_a_dataset_config_or_a_config_file_is_one_line(tmp_path, capsys):
    from metaaligner.registry.datasets import load_dataset_config

    config = tmp_path / "ds.yaml"
    config.write_text("name: ds\ntemplate: hh-rlhf\nobjectives: &o [harmlessness, *o]\n")
    with pytest.raises(DataError, match=r"ds\.yaml: line 3, column 31: malformed YAML \(an alias \(\*o\)"):
        load_dataset_config(str(config))
    config.write_text("name: ds\ntemplate: hh-rlhf\nobjectives: harmlessness\n")
    with pytest.raises(DataError) as err:
        load_dataset_config(str(config))
    assert str(err.value) == f"{config}: objectives must be a list of str, got str 'harmlessness'"
    flags = tmp_path / "flags.yaml"
    flags.write_text("limit: &l 2\nbatch_size: *l\n")
    script = load_script("inference/aligner_inference.py")
    with pytest.raises(SystemExit):
        cli.parse(script.make_parser(), ["--config_file", str(flags)])
    assert capsys.readouterr().err.startswith(f"error: {flags}: line 2, column 13: malformed YAML (an alias (*l)")


def test_every_http_client_logger_is_quiet_after_one_call(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(f"{record.name}: {record.getMessage()}")

    root = logging.getLogger()
    handler = Keep(level=logging.DEBUG)
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        cli.quiet_http_logs()
        for name in ("httpx", "httpx2._client", "httpcore2.connection", "openai._base_client", "urllib3.pool",
                     "httpx3"):
            logging.getLogger(name).info('HTTP Request: POST http://127.0.0.1/v1 "HTTP/1.1 200 OK"')
        logging.getLogger("httpx2").warning("retrying")
        logging.getLogger("aligner_inference").info(f"key {SECRET}")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert records == ["httpx2: retrying", "aligner_inference: key ***"]


# ============================================================================= 3. every flag checked first

ENTRY_SCRIPTS = sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("*/**/*.py")
                       if p.parts[len(REPO.parts)] not in ("tests", "metaaligner") and "def make_parser" in p.read_text()
                       and "cli" in p.read_text())


def _dataclass_fields(script: str):
    import dataclasses

    parser = load_script(script).make_parser()
    for kind in getattr(parser, "dataclass_types", []):
        for f in dataclasses.fields(kind):
            yield kind, f


def _numeric(f) -> bool:
    kind = str(f.type)
    return any(kind.startswith(t) for t in ("int", "float")) and "bool" not in kind


def test_every_numeric_flag_of_every_stage_declares_its_rule():
    """The class, not the examples: each int/float flag of each stage script names its range next to its
    help text (seeds take any integer)."""
    assert len(ENTRY_SCRIPTS) >= 25
    missing = [f"{script}: --{f.name}" for script in ENTRY_SCRIPTS for _, f in _dataclass_fields(script)
               if _numeric(f) and f.name != "seed" and cli.CHECK_KEY not in f.metadata]
    assert missing == []


def _outside(rule) -> float | None:
    """A value just outside the rule's range (and not one of its extra values)."""
    if rule.ge is not None:
        step = 1 if isinstance(rule.ge, int) else 0.5
        return next(rule.ge - k * step for k in (1, 2, 3) if rule.ge - k * step not in rule.also)
    if rule.gt is not None:
        return rule.gt
    if rule.le is not None:
        return rule.le + 0.5
    if rule.lt is not None:
        return rule.lt
    return None


def _required(script: str) -> list[str]:
    import dataclasses

    return [a for _, f in _dataclass_fields(script) if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING for a in (f"--{f.name}", "x")]


RANGE_RULES = sorted({(script, f.name) for script in ENTRY_SCRIPTS for _, f in _dataclass_fields(script)
                      if cli.CHECK_KEY in f.metadata and _outside(f.metadata[cli.CHECK_KEY]) is not None})


@pytest.mark.parametrize("script, name", RANGE_RULES)
def test_each_range_rule_refuses_a_value_outside_it_in_one_line(script, name, capsys):
    rule = next(f.metadata[cli.CHECK_KEY] for _, f in _dataclass_fields(script) if f.name == name)
    value = _outside(rule)
    with pytest.raises(SystemExit) as exc:
        cli.parse(load_script(script).make_parser(), [*_required(script), f"--{name}", str(value)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: --{name} must be {rule.range_text()}, got {value!r}\n"
    # the boundary itself is accepted, and --help shows the rule next to the flag
    bound = next(v for v in (rule.ge, rule.le) if v is not None) if (rule.ge, rule.le) != (None, None) else None
    if bound is not None:
        # with the flags the rule needs beside it (a vLLM-only flag needs --backend vllm)
        needed = [a for k, allowed in rule.only_with.items() for a in (f"--{k}", str(allowed[0]))]
        cli.parse(load_script(script).make_parser(), [*_required(script), *needed, f"--{name}", str(bound)])
    assert f"[{rule.describe()}]" in " ".join(load_script(script).make_parser().format_help().split())


@pytest.mark.parametrize("script, argv, line", [
    ("inference/aligner_inference.py", ["--max_new_tokens", "0"], "--max_new_tokens must be >= 1, got 0"),
    ("inference/aligner_inference.py", ["--max_new_tokens", "-5"], "--max_new_tokens must be >= 1, got -5"),
    ("inference/aligner_inference.py", ["--batch_size", "0"], "--batch_size must be >= 1, got 0"),
    ("inference/aligner_inference.py", ["--batch_size", "-2"], "--batch_size must be >= 1, got -2"),
    ("inference/aligner_inference.py", ["--temperature", "-1"], "--temperature must be >= 0, got -1.0"),
    ("inference/aligner_inference.py", ["--limit", "0"], "--limit must be >= 1, got 0"),
    ("inference/aligner_inference.py", ["--backend", "hf", "--base_url", "http://127.0.0.1:9/v1"],
     "--base_url needs --backend openai or auto (got --backend hf): it would be ignored"),
    ("inference/policy_generation.py", ["--backend", "vllm", "--base_url", "http://127.0.0.1:9/v1"],
     "--base_url needs --backend openai or auto (got --backend vllm): it would be ignored"),
    ("evaluation/judge.py", ["--concurrency", "0"], "--concurrency must be >= 1, got 0"),
    ("evaluation/judge.py", ["--limit", "-1"], "--limit must be >= 0, got -1"),
    ("evaluation/judge.py", ["--max_cost", "-1"], "--max_cost must be >= 0, got -1.0"),
    ("evaluation/judge.py", ["--mode", "rating", "--both_orders"], "--both_orders does not go with --mode rating"),
    ("evaluation/judge.py", ["--timeout", "0"], "--timeout must be > 0, got 0.0"),
    ("evaluation/judge.py", ["--max_retries", "-1"], "--max_retries must be >= 0, got -1"),
    ("evaluation/judge.py", ["--price_per_1k_input", "-2"], "--price_per_1k_input must be >= 0, or -1.0, got -2.0"),
    ("dynamic_multi_objective_dataset/build_aligner_dataset.py", ["--tie_tolerance", "-1"],
     "--tie_tolerance must be >= 0, got -1.0"),
    ("evaluation/report.py", ["--bootstrap", "0"], "--bootstrap must be >= 1, got 0"),
])
def test_the_issues_flags_are_refused_before_work_starts(script, argv, line, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse(load_script(script).make_parser(), [*_required(script), *argv])
    assert exc.value.code == 2 and capsys.readouterr().err == f"error: {line}\n"


def test_pairs_pass_when_they_agree_and_configs_built_in_python_are_checked_too(tmp_path, capsys):
    ai = load_script("inference/aligner_inference.py")
    cli.parse(ai.make_parser(), ["--backend", "openai", "--base_url", "http://127.0.0.1:9/v1"])
    cli.parse(ai.make_parser(), ["--base_url", "http://127.0.0.1:9/v1"])  # auto picks openai
    judge = load_script("evaluation/judge.py")
    cli.parse(judge.make_parser(), ["--both_orders"])
    config = judge.JudgeConfig(input=str(judge_inputs(tmp_path / "pol.csv", 1)), output_dir=str(tmp_path / "out"),
                               concurrency=0, judge_model="j", dry_run=True, dataset="hh-rlhf")
    code, err = run_cli(judge.main, config, capsys)
    assert code == 2 and one_error_line(err) == "error: --concurrency must be >= 1, got 0"
    assert not (tmp_path / "out").exists()


# ============================================================================= 6. installed, not only checked out

@pytest.mark.slow
def test_the_readme_main_job_runs_from_an_installed_package(tmp_path):
    """The package as a plain `pip install .` lays it out (a copy in site-packages, no samples beside it):
    from inside the checkout the shipped config finds samples/ in the working tree; from elsewhere it
    finds them through $METAALIGNER_DATA, or says in one line how to get them."""
    import shutil

    from metaaligner.registry.datasets import DATA_ENV

    site = tmp_path / "venv" / "lib" / "site-packages"
    shutil.copytree(REPO / "metaaligner", site / "metaaligner", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in CHILD_ENV.items() if k != DATA_ENV} | {"PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    where = subprocess.run([sys.executable, "-c", "import metaaligner; print(metaaligner.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=DEADLINE_S)
    assert where.stdout.strip() == str(site / "metaaligner" / "__init__.py"), where.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def main_job(cwd: Path, *extra: str, **more_env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "inference/aligner_inference.py"), "--dataset", "hh-rlhf",
                               "--aligned_model", "Claude-3", "--limit", "2", "--max_new_tokens", "4", *extra],
                              cwd=cwd, env={**env, **more_env}, capture_output=True, text=True, timeout=DEADLINE_S)

    out = tmp_path / "aligned"
    proc = main_job(REPO, "--model_output_path", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_records(out / "Claude-3.csv")
    claude = read_records(REPO / "samples/HH-RLHF_model_output/Claude-3.csv.gz")
    assert [r["query"] for r in rows] == [r["query"] for r in claude[:2]] and all(r["aligned_responses"] for r in rows)
    proc = main_job(elsewhere, "--dry_run", "--model_output_path", str(tmp_path / "dry"))
    line = one_error_line(proc.stderr)
    assert proc.returncode == 2 and line.startswith(
        "error: samples/HH-RLHF_model_output: no such samples folder of --dataset hh-rlhf under $METAALIGNER_DATA "
        f"(unset), the current folder ({elsewhere.resolve()}) or its parents, or {site}; the "
        "samples ship with the repository, not the installed package: run from a checkout, set METAALIGNER_DATA")
    proc = main_job(elsewhere, "--dry_run", "--model_output_path", str(tmp_path / "dry"), **{DATA_ENV: str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(read_records(tmp_path / "dry" / "Claude-3.prompts.jsonl")) == 2


# ============================================================================= 7. tests that hold on a busy machine

_CLOCK = {"time", "monotonic", "perf_counter"}
_TIMING_NAME = re.compile(r"(_s|_secs|_seconds|^seconds|elapsed|duration|_wall)$")


def _reads_the_clock(node) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _CLOCK
               and isinstance(n.func.value, ast.Name) and n.func.value.id == "time" for n in ast.walk(node))


def test_no_test_depends_on_wall_clock_speed():
    """No assert bounds a duration (``second_s < 30``, ``time.time() - start < 1``), no test builds its own
    deadline (``time.time() + 60``) and no child process gets a short hang guard (``timeout=120``): waits go
    through metaaligner.testing.waits (readiness signal, process exit, one deadline a loaded machine never
    reaches, ``DEADLINE_S``, and a message saying what was waited for and how long)."""
    offenders = []
    for path in sorted((REPO / "tests").glob("*.py")):
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Assert):
                for cmp in (c for c in ast.walk(node.test) if isinstance(c, ast.Compare)):
                    timed = _reads_the_clock(cmp) or any(isinstance(n, ast.Name) and _TIMING_NAME.search(n.id)
                                                         for n in ast.walk(cmp))
                    if timed and any(isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE)) for op in cmp.ops):
                        offenders.append(f"{path.name}:{node.lineno}: {ast.get_source_segment(source, node)}")
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and _reads_the_clock(node):
                offenders.append(f"{path.name}:{node.lineno}: {ast.get_source_segment(source, node)}")
            # a child process's hang guard is a deadline too: the shared one (DEADLINE_S), not a guess
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "run" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "subprocess":
                offenders += [f"{path.name}:{node.lineno}: subprocess.run(..., timeout={k.value.value})"
                              for k in node.keywords if k.arg == "timeout" and isinstance(k.value, ast.Constant)]
    assert offenders == []


def test_a_wait_says_what_it_waited_for_how_long_and_why_it_stopped(tmp_path):
    from metaaligner.testing.waits import WaitTimeout, wait_for, wait_for_http

    log = tmp_path / "child.log"
    with open(log, "w") as fh:
        child = subprocess.Popen([sys.executable, "-c", "print('bind failed: port in use'); raise SystemExit(3)"],
                                 stdout=fh, stderr=subprocess.STDOUT)
    with pytest.raises(WaitTimeout) as err:
        wait_for(lambda: False, "the server to answer /health", process=child, log=log)
    assert re.fullmatch(r"waited [\d.]+ s for the server to answer /health, but the process exited first with "
                        r"code 3; its output ends: 'bind failed: port in use\\n'", str(err.value)), str(err.value)
    with pytest.raises(WaitTimeout, match=r"^waited 0 s \(the deadline, METAALIGNER_TEST_DEADLINE_S\) for a file; "
                                          "it did not come$"):
        wait_for(lambda: False, "a file", deadline_s=0.0)
    with ScriptedOpenAIServer("[[1]]") as server:
        assert wait_for_http(server.base_url.replace("/v1", "/health"), "the scripted server") >= 0


# ============================================================================= 4. resume that sees every setting

def _changed(value, f):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5
    if isinstance(value, list):
        return [*value, "x=An objective: added."]
    return f"{value}-other" if value else "other"


@pytest.mark.parametrize("script", ["inference/aligner_inference.py", "inference/policy_generation.py"])
def test_every_flag_but_a_short_named_list_is_in_the_resume_fingerprint(script):
    import dataclasses

    module = load_script(script)
    kind = module.make_parser().dataclass_types[0]
    base = kind()
    before = cli.config_fingerprint(base, module.NOT_IN_FINGERPRINT)
    for f in dataclasses.fields(kind):
        after = cli.config_fingerprint(dataclasses.replace(base, **{f.name: _changed(getattr(base, f.name), f)}),
                                       module.NOT_IN_FINGERPRINT)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        assert changed == ([] if f.name in module.NOT_IN_FINGERPRINT else [f"--{f.name}"]), f.name
    assert set(module.NOT_IN_FINGERPRINT) <= {"resume", "overwrite", "dry_run", "data_dir", "aligned_model", "limit",
                                              "model_output_path", "model_name", "llama", "lora"}
    with pytest.raises(ValueError, match=r"has no fields \['progress'\]"):
        cli.config_fingerprint(base, ("progress",))


@pytest.fixture
def echo_backend(monkeypatch):
    """The aligner script's main() with the fake backend instead of a model (its rows: aligned[<answer>])."""
    made = []

    def make_generator(*args, **kwargs):
        made.append(kwargs)
        return backends.pop(0) if backends else EchoGenerator()

    backends: list = []
    monkeypatch.setattr(al, "make_generator", make_generator)
    return backends


@pytest.mark.parametrize("first, second, diff", [
    (["--guard", "on"], ["--guard", "off"], '--guard: "on" -> "off"; guard: true -> false'),
    (["--dtype", "float32"], ["--dtype", "bfloat16"], '--dtype: "float32" -> "bfloat16"'),
    ([], ["--device", "cpu"], '--device: null -> "cpu"'),
])
def test_resume_with_another_guard_dtype_or_device_is_refused(tmp_path, capsys, echo_backend, first, second, diff):
    script = load_script("inference/aligner_inference.py")
    inp = policy_table(tmp_path / "pol.csv", 8)
    common = ["--aligner_path", "embedded", "--template", "hh-rlhf", "--aspects", "harmlessness", "--data_dir",
              str(inp), "--model_output_path", str(tmp_path / "out"), "--batch_size", "1", "--backend", "hf"]
    echo_backend.append(EchoGenerator(fail_on_call=2))  # interrupted after one chunk of 4 rows: a partial file is left
    code = cli.run_main(script.main, *cli.parse(script.make_parser(), [*common, *first]))
    assert code == 130 and (tmp_path / "out" / "pol.csv.partial.jsonl").exists()
    capsys.readouterr()
    code = cli.run_main(script.main, *cli.parse(script.make_parser(), [*common, *second, "--resume"]))
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and line == (f"error: {tmp_path / 'out' / 'pol.csv.partial.jsonl'}: an interrupted run made with "
                                  f"other settings ({diff}); resume with the same settings, or run without --resume "
                                  "to start over")
    code = cli.run_main(script.main, *cli.parse(script.make_parser(), [*common, *first, "--resume"]))
    out = capsys.readouterr()
    assert code == 0 and "rows in, 4 aligned, 4 resumed" in out.out, out.err
    # a finished output made with other settings is refused too, naming the flag
    code = cli.run_main(script.main, *cli.parse(script.make_parser(), [*common, *second, "--resume"]))
    assert code == 2 and f"a finished output made with other settings ({diff})" in one_error_line(capsys.readouterr().err)
