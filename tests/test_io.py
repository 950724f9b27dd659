"""IO: table reading with one-line errors, resumable outputs, and the shipped samples/ tree."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from metaaligner.errors import DataError
from metaaligner.io import ResumableWriter, read_records, read_table, write_csv
from metaaligner.samples import IMHI_SHIPPED_POLICIES, build_samples, csv_bytes, gzip_bytes, join_imhi_queries

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
IMHI_TASKS = ["CAMS", "DR", "Irf", "MultiWD", "SAD", "dreaddit", "loneliness", "t-sid"]


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_csv_gz_jsonl_and_empty_cells(tmp_path):
    rows = [{"query": "q1, with comma", "goldens": "", "generated_text": "multi\nline \"quoted\""},
            {"query": "q2", "goldens": "g2", "generated_text": ""}]
    write_csv(tmp_path / "a.csv.gz", rows, ["query", "goldens", "generated_text"])
    assert gzip.decompress((tmp_path / "a.csv.gz").read_bytes()).startswith(b"query,goldens,generated_text")
    assert read_table(tmp_path / "a.csv.gz", required=["query", "generated_text"]) == rows
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_records(tmp_path / "b.jsonl") == rows


def test_missing_column_empty_file_and_bad_cells_name_file_row_column(tmp_path):
    (tmp_path / "m.csv").write_text("query,goldens\nq,g\n")
    with pytest.raises(DataError) as err:
        read_table(tmp_path / "m.csv", required=["query", "generated_text"])
    assert _one_line(err) == f"{tmp_path / 'm.csv'}: column 'generated_text': missing column (found: goldens, query)"

    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError) as err:
        read_table(tmp_path / "e.csv", required=["query"])
    assert _one_line(err) == f"{tmp_path / 'e.csv'}: file is empty"

    (tmp_path / "h.csv").write_text("query,generated_text\n")
    with pytest.raises(DataError) as err:
        read_table(tmp_path / "h.csv", required=["query"])
    assert _one_line(err) == f"{tmp_path / 'h.csv'}: file has a header but no rows"

    (tmp_path / "n.jsonl").write_text('{"query": "a", "generated_text": "b"}\n{"query": 3, "generated_text": "b"}\n')
    with pytest.raises(DataError) as err:
        read_table(tmp_path / "n.jsonl", required=["query", "generated_text"])
    assert _one_line(err) == f"{tmp_path / 'n.jsonl'}: row 2, column 'query': expected text, got int"

    (tmp_path / "x.csv").write_text("query\na,b\n")
    with pytest.raises(DataError) as err:
        read_table(tmp_path / "x.csv", required=["query"])
    assert _one_line(err) == f"{tmp_path / 'x.csv'}: row 1: more cells than header columns"

    (tmp_path / "bad.csv.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="not a valid gzip file"):
        read_table(tmp_path / "bad.csv.gz")


def test_resumable_writer_drops_a_cut_last_line_and_keeps_every_row_once(tmp_path):
    out = tmp_path / "out.csv"
    writer = ResumableWriter(out, ["row_id", "text"])
    writer.append([{"row_id": 0, "text": "a"}, {"row_id": 1, "text": "b"}])
    writer.close()
    with open(writer.partial, "a", encoding="utf-8") as fh:
        fh.write('{"row_id": 2, "te')  # a kill in the middle of a write
    resumed = ResumableWriter(out, ["row_id", "text"], resume=True)
    assert resumed.done == {0, 1}
    resumed.append([{"row_id": 2, "text": "c"}, {"row_id": 3, "text": "d"}])
    rows = resumed.finish(order=[0, 1, 2, 3])
    assert [r["text"] for r in rows] == ["a", "b", "c", "d"]
    assert read_records(out) == [{"row_id": "0", "text": "a"}, {"row_id": "1", "text": "b"},
                                 {"row_id": "2", "text": "c"}, {"row_id": "3", "text": "d"}]
    assert not writer.partial.exists()
    # without resume, an old partial file is discarded
    ResumableWriter(out, ["row_id", "text"]).append([{"row_id": 9, "text": "z"}])
    assert ResumableWriter(out, ["row_id", "text"]).done == set()


def test_imhi_join_checks_goldens_row_by_row(tmp_path):
    (tmp_path / "ins.csv").write_text("query,gpt-3.5-turbo\nq1,g1\nq2,g2\nq3,g3\n")
    (tmp_path / "ok.csv").write_text("goldens,generated_text\ng1,a1\ng2,\n")
    assert join_imhi_queries(tmp_path / "ok.csv", tmp_path / "ins.csv") == [
        {"query": "q1", "goldens": "g1", "generated_text": "a1"}, {"query": "q2", "goldens": "g2", "generated_text": ""}]
    (tmp_path / "bad.csv").write_text("goldens,generated_text\ng1,a1\nWRONG,a2\n")
    with pytest.raises(DataError) as err:
        join_imhi_queries(tmp_path / "bad.csv", tmp_path / "ins.csv")
    assert _one_line(err).startswith(f"{tmp_path / 'bad.csv'}: row 2, column 'goldens': goldens differ from")
    (tmp_path / "long.csv").write_text("goldens,generated_text\n" + "g1,a\n" * 4)
    with pytest.raises(DataError, match="4 rows but .* has only 3"):
        join_imhi_queries(tmp_path / "long.csv", tmp_path / "ins.csv")


def test_gzip_output_is_deterministic():
    data = csv_bytes([{"query": "q", "goldens": "g", "generated_text": "a"}], ["query", "goldens", "generated_text"])
    assert data == b"query,goldens,generated_text\nq,g,a\n"
    assert gzip_bytes(data) == gzip_bytes(data) and gzip.decompress(gzip_bytes(data)) == data


def test_shipped_samples_tree():
    for dataset, policies in {"HH-RLHF_model_output": ["Claude-3", "gpt-3.5-turbo", "llama2-chat-70B"],
                              "UltraFeedback_model_output": ["Vicuna-13B", "Vicuna-7B", "gpt-3.5-turbo"]}.items():
        for policy in policies:
            rows = read_table(REPO / "samples" / dataset / f"{policy}.csv.gz", required=["query", "goldens", "generated_text"])
            assert len(rows) == 1200
    vicuna = read_records(REPO / "samples/UltraFeedback_model_output/Vicuna-7B.csv.gz")
    assert sum(1 for r in vicuna if not r["generated_text"].strip()) == 227
    for policy in IMHI_SHIPPED_POLICIES:
        names = sorted(p.name for p in (REPO / "samples/IMHI_model_output" / policy).iterdir())
        assert names == sorted(f"{t}.csv.gz" for t in IMHI_TASKS)
    dr = read_records(REPO / "samples/IMHI_model_output/llama2-chat-70B/DR.csv.gz")
    assert len(dr) == 300 and list(dr[0]) == ["query", "goldens", "generated_text"]
    total = sum(p.stat().st_size for p in (REPO / "samples").rglob("*") if p.is_file())
    assert total < 25 * 2**20


@pytest.mark.skipif(not (SHARED / "metaaligner-samples").is_dir(), reason="needs ../shared/data")
def test_build_reproduces_shipped_bytes(tmp_path):
    shared = tmp_path / "shared"
    (shared / "metaaligner-samples" / "IMHI_model_output").mkdir(parents=True)
    for name in ("HH-RLHF_model_output", "UltraFeedback_model_output"):
        (shared / "metaaligner-samples" / name).symlink_to(SHARED / "metaaligner-samples" / name)
    (shared / "metaaligner-samples/IMHI_model_output/llama2-chat-70B").symlink_to(
        SHARED / "metaaligner-samples/IMHI_model_output/llama2-chat-70B")
    (shared / "imhi-test-instruction").symlink_to(SHARED / "imhi-test-instruction")
    report = build_samples(shared, tmp_path / "out", ["llama2-chat-70B"])
    assert report.skipped == [f"{shared}/metaaligner-samples/IMHI_model_output/llama2-chat-70B/swmh.csv: "
                              "no imhi-test-instruction/swmh.csv to take queries from"]
    assert len(report.written) == 6 + 8 and report.rows == 6 * 1200 + 8 * 300
    for path in report.written:
        rel = path.relative_to(tmp_path / "out")
        assert path.read_bytes() == (REPO / "samples" / rel).read_bytes(), rel
    assert gzip.decompress((REPO / "samples/HH-RLHF_model_output/Claude-3.csv.gz").read_bytes()) == \
        (SHARED / "metaaligner-samples/HH-RLHF_model_output/Claude-3.csv").read_bytes()
