"""Table 2 / Table 3 / Figure 3 / the rating study from fixed per-row verdict files, checked against
hand-computed values."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from metaaligner.errors import MetaAlignerError
from metaaligner.io import read_records, write_csv
from metaaligner.judge.metrics import bootstrap_ci, paired_bootstrap_diff, summarize_pairwise
from metaaligner.judge.runner import ROW_COLUMNS
from metaaligner.reports import (
    PAPER_STEPS,
    device_hours,
    labelled_inputs,
    load_verdicts,
    ratings_data,
    table2,
    table2_latex,
    table2_markdown,
    table3,
    table3_markdown,
    write_reports,
)

REPO = Path(__file__).resolve().parent.parent


def verdict_rows(policy, objective, target, verdicts, positions=None, dataset="hh-rlhf", name=None, mode="pairwise",
                 scores=None, unseen=0, parser=""):
    rows = []
    for i, verdict in enumerate(verdicts):
        rows.append({"dataset": dataset, "policy": policy, "target": target, "objective": objective,
                     "objective_name": name or objective.capitalize(), "unseen": unseen, "mode": mode, "row": i,
                     "item_id": f"id{i}", "position": (positions or [1 + i % 2] * len(verdicts))[i]
                     if mode == "pairwise" else "", "reply": "", "verdict": verdict,
                     "score": "" if scores is None else scores[i], "judge_model": "j", "judge_prompt": "clean",
                     "judge_parser": parser})
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    write_csv(path, rows, ROW_COLUMNS)
    return path


# Hand-computed: aligned W,T,T,L,L vs original W,L,L,L,invalid over the same 5 rows
#   W/N:            0.2 - 0.2 = +0.00%
#   (W+T/2)/N:      0.4 - 0.2 = +20.00%
#   (W+T)/(W+T+L):  3/5 - 1/4 = +35.00%   (the invalid row leaves the original's denominator)
ALIGNED = ["win", "tie", "tie", "loss", "loss"]
ORIGIN = ["win", "loss", "loss", "loss", "invalid"]


@pytest.fixture
def judged(tmp_path) -> Path:
    root = tmp_path / "judged"
    write_rows(root / "pairwise/P/aligned_responses/harmlessness.csv",
               verdict_rows("P", "harmlessness", "aligned_responses", ALIGNED))
    write_rows(root / "pairwise/P/origin_responses/harmlessness.csv",
               verdict_rows("P", "harmlessness", "origin_responses", ORIGIN))
    write_rows(root / "pairwise/Q/aligned_responses/helpfulness.csv",
               verdict_rows("Q", "helpfulness", "aligned_responses", ["win", "win"]))
    write_rows(root / "pairwise/Q/origin_responses/helpfulness.csv",
               verdict_rows("Q", "helpfulness", "origin_responses", ["loss", "win"]))
    (root / "summary.csv").write_text("mode,n\npairwise,5\n")  # not a per-row file: ignored
    return root


def test_table2_matches_hand_computed_values(judged):
    rows = load_verdicts([judged])
    assert len(rows) == 14
    expected = {"win": 0.0, "win_half_tie": 0.20, "win_plus_tie": 0.35, "paper": 0.35}
    for metric, gain in expected.items():
        cells = {(c.policy, c.objective): c for c in table2(rows, metric=metric, n_boot=500)}
        p = cells[("P", "harmlessness")]
        assert p.n == 5 and p.gain == pytest.approx(gain)
        assert p.low <= p.gain <= p.high
        q = cells[("Q", "helpfulness")]
        assert q.gain == pytest.approx(0.5)  # W,W vs L,W under every metric
    cells = table2(rows, n_boot=500)
    p = next(c for c in cells if c.policy == "P")
    assert (p.aligned, p.origin) == (pytest.approx(0.4), pytest.approx(0.2))
    md = table2_markdown(cells)
    assert md.splitlines()[0] == "| Policy | hh-rlhf: Harmlessness | hh-rlhf: Helpfulness |"
    assert re.search(r"^\| P \| \+20\.00% \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\] \| – \|$", md, re.M)
    assert re.search(r"^\| Q \| – \| \+50\.00% \[", md, re.M)
    assert "metric (W + T/2)/N; verdict parser not recorded" in md
    # P: 5 rows, gain +20% whose interval spans 0; Q: 2 rows W,W vs L,W, gain 50% in every resample but
    # the one that draws row 2 twice (0%), so its interval holds 0 too
    assert md.rstrip().endswith("Rows per cell: 2-5; 0 of 2 cells have a 95% interval that excludes 0 (no gain). "
                                "At this size the table cannot tell an effect from noise.")
    tex = table2_latex(cells)
    assert r"\multicolumn{2}{c}{hh-rlhf}" in tex and r"+20.00\%" in tex and "Policy & Harmlessness & Helpfulness" in tex
    assert summarize_pairwise(ORIGIN) == {"n": 5, "wins": 1, "ties": 0, "losses": 3, "invalid": 1, "win": 0.2,
                                          "win_half_tie": 0.2, "win_plus_tie": 0.25, "paper": 0.25, "tie_rate": 0.0,
                                          "invalid_rate": 0.2}


def test_bootstrap_intervals_contain_the_point_estimate():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.choice([0.0, 0.5, 1.0], size=int(rng.integers(5, 200)))
        b = rng.choice([0.0, 0.5, 1.0], size=a.size)
        gain, low, high = paired_bootstrap_diff(a, b, n_boot=300, seed=0)
        assert low <= gain <= high and gain == pytest.approx(a.mean() - b.mean())
        lo, hi = bootstrap_ci(a, n_boot=300, seed=0)
        assert lo <= a.mean() <= hi
    assert paired_bootstrap_diff([1, 1, 1], [0, 0, 0], n_boot=50) == (1.0, 1.0, 1.0)  # no variance, no width
    assert bootstrap_ci([0.5, 1.0], seed=3) == bootstrap_ci([0.5, 1.0], seed=3)      # seeded


def test_table2_refuses_mismatched_positions(tmp_path):
    write_rows(tmp_path / "a.csv", verdict_rows("P", "humour", "aligned_responses", ["win"], positions=[1]))
    write_rows(tmp_path / "o.csv", verdict_rows("P", "humour", "origin_responses", ["win"], positions=[2]))
    with pytest.raises(MetaAlignerError, match="different candidate positions"):
        table2(load_verdicts([tmp_path]))


def test_table3_with_gpu_hours_from_training_logs(tmp_path):
    root = tmp_path / "t3"
    for method, verdicts in {"SFT": ["loss", "tie"], "MetaAligner": ["win", "tie"], "Extra": ["win", "win"]}.items():
        write_rows(root / f"{method}.csv", verdict_rows(method, "harmlessness", "aligned_responses", verdicts))
    log = tmp_path / "aligner" / "train_log.jsonl"
    log.parent.mkdir()
    log.write_text("\n".join(json.dumps(r) for r in [
        {"stage": "warmup", "step": 1, "device_hours": 0.1}, {"stage": "warmup", "step": 2, "device_hours": 0.25},
        {"stage": "contrastive", "step": 1, "device_hours": 0.5}]) + "\nnot json\n")
    hours = device_hours({"MetaAligner": str(log.parent), "SFT": str(tmp_path / "missing.jsonl")})
    assert hours == {"MetaAligner": pytest.approx(0.75), "SFT": None}
    cells = table3(load_verdicts([root]), metric="win_half_tie", n_boot=200)
    assert {c.method: c.rate for c in cells} == {"SFT": 0.25, "MetaAligner": 0.75, "Extra": 1.0}
    md = table3_markdown(cells, hours)
    lines = md.splitlines()
    assert lines[0] == "| Method | hh-rlhf: Harmlessness | GPU hours |"
    assert [line.split(" | ")[0] for line in lines[2:5]] == ["| MetaAligner", "| SFT", "| Extra"]  # paper order first
    assert lines[2].startswith("| MetaAligner | 75.00% [") and lines[2].endswith(" | 0.75 |")
    assert lines[3].endswith(" | – |")
    # 2 rows each: Extra (W,W) has 100% in every resample, the others' intervals hold 50%
    assert md.rstrip().endswith("Rows per cell: 2; 1 of 3 cells have a 95% interval that excludes 50% "
                                "(as good as the golden answer).")


def test_both_metrics_side_by_side_and_captions_name_metric_and_parser(tmp_path):
    root = tmp_path / "judged"
    write_rows(root / "a.csv", verdict_rows("P", "harmlessness", "aligned_responses", ALIGNED, parser="released"))
    write_rows(root / "o.csv", verdict_rows("P", "harmlessness", "origin_responses", ORIGIN, parser="released"))
    written = write_reports(tmp_path / "rep", [str(root)], [str(root)], metric="win_plus_tie,win_half_tie", n_boot=100)
    md = (tmp_path / "rep/table2.md").read_text().splitlines()
    assert md[0] == "| Policy | hh-rlhf: Harmlessness (W+T)/(W+T+L) | hh-rlhf: Harmlessness (W+T/2)/N |"
    assert re.match(r"^\| P \| \+35\.00% \[[^]]+\] \| \+20\.00% \[[^]]+\] \|$", md[2])
    caption = ("metric (W + T)/(W + T + L), the paper's metric (ties counted as wins); (W + T/2)/N; verdict parser "
               "the released substring parser (the candidate's position digit anywhere in the reply = win, else '0' "
               "anywhere = tie, else loss; never invalid)")
    assert caption in md[-1]
    assert {(c.metric, c.parser) for c in written["table2"]} == {("win_plus_tie", "released"),
                                                                 ("win_half_tie", "released")}
    csv_rows = read_records(tmp_path / "rep/table2.csv")
    assert [(r["metric"], r["gain"][:5], r["parser"]) for r in csv_rows] == [
        ("win_plus_tie", "0.35", "released"), ("win_half_tie", "0.2", "released")]
    tex = (tmp_path / "rep/table2.tex").read_text()
    assert tex.startswith("% metric (W + T)/(W + T + L)") and r"+35.00\%" in tex and r"+20.00\%" not in tex
    t3 = (tmp_path / "rep/table3.md").read_text().splitlines()
    assert t3[0] == "| Method | hh-rlhf: Harmlessness (W+T)/(W+T+L) | hh-rlhf: Harmlessness (W+T/2)/N | GPU hours |"
    assert t3[2].startswith("| P | 60.00% [") and " | 40.00% [" in t3[2]  # aligned W,T,T,L,L: 3/5 and 2/5
    assert caption in t3[-1]
    strict = verdict_rows("S", "harmlessness", "aligned_responses", ["win"], parser="released_choice")
    assert "the strict parser released_choice (anchored; a reply unparsable after one reminder = invalid)" in \
        table3_markdown(table3(strict, n_boot=10))
    with pytest.raises(MetaAlignerError, match="unknown metric 'win_tie'"):
        write_reports(tmp_path / "rep", [str(root)], metric="win_tie")


# Figure 3 by hand: 4 rows; honesty (supervised) and speci (unseen), 7 cumulative steps.
#   before alignment: honesty L,L,T,W -> (W+T/2)/N 37.50%, (W+T)/(W+T+L) 50%; speci L,L,L,L -> 0%
#   after, every step: honesty W,W,T,L -> 62.50% / 75%; speci 0% at step 1 (not yet aligned on), then W,W,T,L
def figure3_steps(root: Path) -> list[str]:
    folders = []
    for k in range(1, 8):
        folder = root / f"{k}_step"
        speci = ["loss"] * 4 if k == 1 else ["win", "win", "tie", "loss"]
        for objective, verdicts, unseen, name in (("honesty", ["win", "win", "tie", "loss"], 0, "Honesty"),
                                                  ("speci", speci, 1, "Specificity")):
            write_rows(folder / f"aligned/{objective}.csv", verdict_rows(
                "gpt-3.5-turbo", objective, "aligned_responses", verdicts, dataset="ultrafeedback", name=name,
                unseen=unseen, parser="released"))
            if k == 1:
                before = ["loss", "loss", "tie", "win"] if objective == "honesty" else ["loss"] * 4
                write_rows(folder / f"origin/{objective}.csv", verdict_rows(
                    "gpt-3.5-turbo", objective, "origin_responses", before, dataset="ultrafeedback", name=name,
                    unseen=unseen, parser="released"))
        folders.append(str(folder))
    return folders


def test_figure3_paper_protocol_points_csv_and_png(tmp_path):
    folders = figure3_steps(tmp_path / "fig3")
    written = write_reports(tmp_path / "rep", figure3_inputs=folders, n_boot=100)
    points = {(p.objective, p.step_index): p for p in written["figure3"]}
    assert len(points) == 2 + 7 * 2
    assert [points[("honesty", k)].rate for k in range(8)] == [0.375] + [0.625] * 7
    assert [points[("speci", k)].rate for k in range(8)] == [0.0, 0.0] + [0.625] * 6
    assert [points[("speci", k)].aligned_on for k in range(8)] == [False, False] + [True] * 6
    assert [points[("honesty", k)].aligned_on for k in range(8)] == [False] + [True] * 7
    assert [points[("honesty", k)].step for k in range(8)] == ["before alignment", *PAPER_STEPS]
    assert points[("honesty", 0)].target == "origin_responses" and points[("honesty", 3)].target == "aligned_responses"
    p = points[("speci", 1)]
    assert (p.low, p.high, p.n, p.unseen, p.metric) == (0.0, 0.0, 4, True, "win_half_tie")
    assert all(q.low <= q.rate <= q.high for q in points.values())
    csv_rows = read_records(tmp_path / "rep/figure3.csv")
    assert len(csv_rows) == 16 and {"low", "high", "step", "aligned_on", "parser"} <= set(csv_rows[0])
    md = (tmp_path / "rep/figure3.md").read_text()
    assert "| Objective | Unseen | Before | Aligned Obj. | +Specificity | +Factuality | +Readability | +Fairness | " \
           "+Repetition | +Length |" in md
    assert "| Honesty | no | 37.50% | " + " | ".join(["62.50%"] * 7) + " |" in md
    assert "| Specificity | yes | 0.00% | 0.00% | " + " | ".join(["62.50%"] * 6) + " |" in md
    assert "metric (W + T/2)/N; verdict parser the released substring parser" in md
    png = (tmp_path / "rep/figure3.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000
    # the paper's metric: honesty after = (2 + 1) / 4, before = (1 + 1) / 4
    paper = write_reports(tmp_path / "rep2", figure3_inputs=folders, metric="win_plus_tie", n_boot=50)["figure3"]
    assert {(q.objective, q.step_index): q.rate for q in paper}[("honesty", 0)] == 0.5
    assert {(q.objective, q.step_index): q.rate for q in paper}[("honesty", 7)] == 0.75


def test_labelled_inputs_for_steps_and_conditions():
    assert labelled_inputs(["a/x", "b/y"], PAPER_STEPS) == [("Aligned Obj.", "a/x"), ("+Specificity", "b/y")]
    assert labelled_inputs(["All 4=r/all", "r/honesty/"]) == [("All 4", "r/all"), ("honesty", "r/honesty/")]
    eight = [f"s{i}" for i in range(8)]  # more folders than paper steps: folder names
    assert [label for label, _ in labelled_inputs(eight, PAPER_STEPS)] == eight


def test_rating_study_report_png_and_numbers(tmp_path):
    runs = {}
    for label, base in (("all", 6), ("honesty", 5)):
        root = tmp_path / "rating" / label
        for target, score in (("origin_responses", 4), ("aligned_responses", base)):
            write_rows(root / f"{target}/honesty.csv", verdict_rows(
                "gpt-3.5-turbo", "honesty", target, [str(score), str(score + 2), "invalid"], dataset="ultrafeedback",
                mode="rating", scores=[score, score + 2, ""]))
            write_rows(root / f"{target}/helpfulness.csv", verdict_rows(
                "gpt-3.5-turbo", "helpfulness", target, [str(score + 1)] * 2, dataset="ultrafeedback",
                name="Helpfulness", mode="rating", scores=[score + 1] * 2))
        runs[label] = root
    cells = {(c.condition, c.objective): c for c in ratings_data(
        [("All 4", load_verdicts([runs["all"]], "rating")), ("Honesty", load_verdicts([runs["honesty"]], "rating"))],
        n_boot=100)}
    assert sorted(cells) == [("All 4", "helpfulness"), ("All 4", "honesty"), ("Honesty", "helpfulness"),
                             ("Honesty", "honesty"), ("Unaligned", "helpfulness"), ("Unaligned", "honesty")]
    assert cells[("Unaligned", "honesty")].mean == 5.0 and cells[("Unaligned", "honesty")].valid == 2
    assert cells[("All 4", "honesty")].mean == 7.0 and cells[("Honesty", "honesty")].mean == 6.0
    assert cells[("All 4", "helpfulness")].mean == 7.0 and cells[("All 4", "helpfulness")].low == 7.0
    written = write_reports(tmp_path / "rep", rating_inputs=[f"All 4={runs['all']}", f"Honesty={runs['honesty']}"],
                            n_boot=100)
    assert [p.name for p in written["files"]] == ["ratings.png", "ratings.md", "ratings.csv"]
    png = (tmp_path / "rep/ratings.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    md = (tmp_path / "rep/ratings.md").read_text().splitlines()
    assert md[0] == "| Policy | Condition | Honesty | Helpfulness |"  # the dataset config's objective order
    assert re.match(r"^\| gpt-3\.5-turbo \| Unaligned \| 5\.00 \[4\.00, 6\.00\] \| 5\.00 \[5\.00, 5\.00\] \|$", md[2])
    assert [line.split(" | ")[1] for line in md[2:5]] == ["Unaligned", "All 4", "Honesty"]
    assert len(read_records(tmp_path / "rep/ratings.csv")) == 6


def test_report_script_writes_all_formats(judged, tmp_path, capsys):
    sys.path.insert(0, str(REPO / "evaluation"))
    import report

    out = tmp_path / "reports"
    report.main(report.ReportConfig(inputs=str(judged), table3_inputs=str(judged), output_dir=str(out),
                                    metric="paper", bootstrap=200))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["table2.csv", "table2.md", "table2.tex", "table3.csv", "table3.md", "table3.tex"]
    csv_rows = {r["policy"]: r for r in read_records(out / "table2.csv")}
    assert float(csv_rows["P"]["gain"]) == pytest.approx(0.35) and csv_rows["P"]["metric"] == "paper"
    assert "+35.00%" in capsys.readouterr().out
    with pytest.raises(MetaAlignerError, match="nothing to report"):
        report.main(report.ReportConfig(output_dir=str(out)))


def test_report_script_profile_metric_and_figure3_flag(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "evaluation"))
    import report

    folders = figure3_steps(tmp_path / "fig3")
    out = tmp_path / "reports"
    labelled = ",".join(f"S{k}={f}" for k, f in enumerate(folders, start=1))
    report.main(report.ReportConfig(figure3_inputs=labelled, output_dir=str(out), profile="paper", bootstrap=50))
    rows = read_records(out / "figure3.csv")
    assert {r["metric"] for r in rows} == {"win_plus_tie"}  # the paper profile's metric
    assert [r["step"] for r in rows if r["objective"] == "honesty"] == ["before alignment"] + [f"S{k}" for k in range(1, 8)]
    assert "| Honesty | no | 50.00% | " + " | ".join(["75.00%"] * 7) + " |" in capsys.readouterr().out
    with pytest.raises(MetaAlignerError, match="unknown judge profile"):
        report.main(report.ReportConfig(figure3_inputs=labelled, output_dir=str(out), profile="nope"))


def test_imhi_table2_pools_each_policys_tasks_swmh_included(tmp_path):
    """IMHI as the paper reports it: one Table 2 row per policy over its tasks' rows (swmh wherever it
    was judged), each task's row count under the table, the per-task table as a supplement."""
    root = tmp_path / "judged"
    for policy, task, aligned, origin in [
        ("llama2-chat-7B", "CAMS", ["win", "tie", "loss"], ["loss", "loss", "loss"]),
        ("llama2-chat-7B", "swmh", ["win", "win"], ["tie", "win"]),
        ("vicuna_7B", "CAMS", ["loss", "loss"], ["win", "loss"]),
    ]:
        for target, verdicts in (("aligned_responses", aligned), ("origin_responses", origin)):
            write_rows(root / f"pairwise/{policy}/{task}/{target}/correct.csv",
                       verdict_rows(f"{policy}/{task}", "correct", target, verdicts, dataset="imhi",
                                    name="Correctness"))
    write_rows(root / "pairwise/hh/aligned.csv", verdict_rows("P/x", "harmlessness", "aligned_responses", ["win"]))
    write_rows(root / "pairwise/hh/origin.csv", verdict_rows("P/x", "harmlessness", "origin_responses", ["loss"]))
    written = write_reports(tmp_path / "rep", [str(root)], n_boot=200)
    cells = {(c.dataset, c.policy): c for c in written["table2"]}
    assert set(cells) == {("imhi", "llama2-chat-7B"), ("imhi", "vicuna_7B"), ("hh-rlhf", "P/x")}  # HH: no tasks
    pooled = cells[("imhi", "llama2-chat-7B")]
    # (W + T/2)/N over the 5 pooled rows: aligned (3 + 0.5)/5 = 0.7, original (1 + 0.5)/5 = 0.3
    assert (pooled.n, pooled.aligned, pooled.origin, round(pooled.gain, 6)) == (5, 0.7, 0.3, 0.4)
    assert pooled.task_rows == "CAMS=3,swmh=2" and cells[("imhi", "vicuna_7B")].task_rows == "CAMS=2"
    assert cells[("hh-rlhf", "P/x")].task_rows == ""
    md = (tmp_path / "rep/table2.md").read_text()
    assert "| llama2-chat-7B | – | +40.00% [" in md
    tasks = md.split("Rows per task (imhi: each policy's row pools its tasks; – = no verdicts for the task):\n\n")[1]
    assert tasks.splitlines()[:4] == [
        "| Policy | CAMS | DR | Irf | MultiWD | SAD | dreaddit | loneliness | swmh | t-sid | all |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        "| llama2-chat-7B | 3 | – | – | – | – | – | – | 2 | – | 5 |",
        "| vicuna_7B | 2 | – | – | – | – | – | – | – | – | 2 |"]
    supplement = (tmp_path / "rep/table2_tasks.md").read_text()
    assert supplement.startswith("Supplement to table2.md: one row per policy/task of imhi")
    assert [line.split(" | ")[0] for line in supplement.splitlines() if line.startswith("| ") and "/" in line] == [
        "| llama2-chat-7B/CAMS", "| llama2-chat-7B/swmh", "| vicuna_7B/CAMS"]
    per_task = {r["policy"]: r for r in read_records(tmp_path / "rep/table2_tasks.csv")}
    assert float(per_task["llama2-chat-7B/CAMS"]["gain"]) == pytest.approx(0.5 - 0.0)   # (1 + 0.5)/3 - 0/3
    assert float(per_task["llama2-chat-7B/swmh"]["gain"]) == pytest.approx(1.0 - 0.75)
