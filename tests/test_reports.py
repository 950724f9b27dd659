"""Table 2 / Table 3 / Figure 3 from fixed per-row verdict files, checked against hand-computed values."""
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
from metaaligner.reports import (device_hours, figure3_data, load_verdicts, table2, table2_latex, table2_markdown,
                                 table3, table3_markdown, write_reports)

REPO = Path(__file__).resolve().parent.parent


def verdict_rows(policy, objective, target, verdicts, positions=None, dataset="hh-rlhf", name=None, mode="pairwise",
                 scores=None, unseen=0):
    rows = []
    for i, verdict in enumerate(verdicts):
        rows.append({"dataset": dataset, "policy": policy, "target": target, "objective": objective,
                     "objective_name": name or objective.capitalize(), "unseen": unseen, "mode": mode, "row": i,
                     "item_id": f"id{i}", "position": (positions or [1 + i % 2] * len(verdicts))[i]
                     if mode == "pairwise" else "", "reply": "", "verdict": verdict,
                     "score": "" if scores is None else scores[i], "judge_model": "j", "judge_prompt": "clean"})
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    write_csv(path, rows, ROW_COLUMNS)
    return path


# Hand-computed: aligned W,T,T,L,L vs original W,L,L,L,invalid over the same 5 rows
#   W/N:        0.2 - 0.2 = +0.00%
#   (W+T/2)/N:  0.4 - 0.2 = +20.00%
#   (W+T)/N:    0.6 - 0.2 = +40.00%
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
    expected = {"win": 0.0, "win_half_tie": 0.20, "paper": 0.40}
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
    assert "(W + T/2)/N" in md
    tex = table2_latex(cells)
    assert r"\multicolumn{2}{c}{hh-rlhf}" in tex and r"+20.00\%" in tex and "Policy & Harmlessness & Helpfulness" in tex
    assert summarize_pairwise(ORIGIN) == {"n": 5, "wins": 1, "ties": 0, "losses": 3, "invalid": 1, "win": 0.2,
                                          "win_half_tie": 0.2, "paper": 0.2, "tie_rate": 0.0, "invalid_rate": 0.2}


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


def test_figure3_png_and_numbers(tmp_path):
    root = tmp_path / "rating"
    for target, base in (("origin_responses", 4), ("aligned_responses", 6)):
        write_rows(root / f"{target}/honesty.csv", verdict_rows(
            "gpt-3.5-turbo", "honesty", target, [str(base), str(base + 2), "invalid"], dataset="ultrafeedback",
            mode="rating", scores=[base, base + 2, ""]))
        write_rows(root / f"{target}/speci.csv", verdict_rows(
            "gpt-3.5-turbo", "speci", target, [str(base + 1)] * 2, dataset="ultrafeedback", name="Specificity",
            mode="rating", scores=[base + 1] * 2, unseen=1))
    bars = {(b.objective, b.target): b for b in figure3_data(load_verdicts([root], "rating"), n_boot=100)}
    assert bars[("honesty", "origin_responses")].mean == 5.0 and bars[("honesty", "origin_responses")].valid == 2
    assert bars[("honesty", "aligned_responses")].mean == 7.0 and bars[("speci", "aligned_responses")].unseen
    written = write_reports(tmp_path / "rep", rating_inputs=[str(root)], n_boot=100)
    png = (tmp_path / "rep" / "figure3.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    md = (tmp_path / "rep" / "figure3.md").read_text()
    assert "| gpt-3.5-turbo | Honesty | no | 5.00 [" in md and "| +2.00 |" in md
    assert "| gpt-3.5-turbo | Specificity | yes | 5.00 [5.00, 5.00] | 7.00 [7.00, 7.00] | +2.00 |" in md
    assert len(written["figure3"]) == 4


def test_report_script_writes_all_formats(judged, tmp_path, capsys):
    sys.path.insert(0, str(REPO / "evaluation"))
    import report

    out = tmp_path / "reports"
    report.main(report.ReportConfig(inputs=str(judged), table3_inputs=str(judged), output_dir=str(out),
                                    metric="paper", bootstrap=200))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["table2.csv", "table2.md", "table2.tex", "table3.csv", "table3.md", "table3.tex"]
    csv_rows = {r["policy"]: r for r in read_records(out / "table2.csv")}
    assert float(csv_rows["P"]["gain"]) == pytest.approx(0.4) and csv_rows["P"]["metric"] == "paper"
    assert "+40.00%" in capsys.readouterr().out
    with pytest.raises(MetaAlignerError, match="nothing to report"):
        report.main(report.ReportConfig(output_dir=str(out)))
