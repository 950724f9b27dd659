"""scripts/fetch_release_samples.py (issue 31, section 1): the release's samples/ files fetched from a real
HTTP server on 127.0.0.1 that serves some files whole, one corrupted, one not at all and one cut off
mid-body; each is verified against its git blob SHA-1 before anything is moved into place."""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from metaaligner import release_samples as rs
from metaaligner.errors import MetaAlignerError
from metaaligner.samples import csv_bytes
from metaaligner.testing.waits import DEADLINE_S

REPO = Path(__file__).resolve().parent.parent
SCRIPT = "scripts/fetch_release_samples.py"
SHARED_MANIFEST = REPO.parent / "shared" / "data" / "metaaligner-samples" / "RELEASE_MANIFEST.tsv"

HH = b'query,goldens,generated_text\n"\n\nHuman: hi\n\nAssistant:",hello,"Hi, there."\n'
UF = b"query,goldens,generated_text\nq1,g1,a1\nq2,g2,\n"
CUT = b"query,goldens,generated_text\n" + b"q,g,a long answer\n" * 200
IMHI_ROWS = [{"goldens": "Yes. The post says so.", "generated_text": "yes"},
             {"goldens": "No, it does not.", "generated_text": ""}]
IMHI = csv_bytes(IMHI_ROWS, ["goldens", "generated_text"])
SWMH = csv_bytes([{"goldens": "depression", "generated_text": "anxiety"}], ["goldens", "generated_text"])

# manifest path -> (what the server does, the released bytes)
FILES = {
    "HH-RLHF_model_output/Gemma-2B.csv": ("ok", HH),
    "HH-RLHF_model_output/Vicuna-7B.csv": ("corrupt", HH.replace(b"hello", b"hallo")),
    "UltraFeedback_model_output/Claude-3.csv": ("missing", UF),
    "UltraFeedback_model_output/llama2-chat-7B.csv": ("cut", CUT),
    "IMHI_model_output/vicuna_13B/CAMS.csv": ("ok", IMHI),
    "IMHI_model_output/vicuna_13B/swmh.csv": ("ok", SWMH),
}


class Handler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[str, bytes]] = {}
    hits: dict[str, int] = {}
    auth: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        path = self.path.split("/samples/", 1)[-1]
        self.hits[path] = self.hits.get(path, 0) + 1
        self.auth.append(self.headers.get("Authorization", ""))
        mode, data = self.routes.get(path, ("missing", b""))
        if mode == "cut_once":
            mode = "cut" if self.hits[path] == 1 else "ok"
        if mode == "missing":
            self.send_error(404)
            return
        body = data + b"tampered" if mode == "corrupt" else data
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if mode == "cut" else body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.routes = {path: (mode, data) for path, (mode, data) in FILES.items()}
    Handler.hits, Handler.auth = {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/release/samples"
    httpd.shutdown()
    httpd.server_close()


def write_manifest(path: Path, files: dict = FILES, sizes: bool = True) -> Path:
    lines = ["path\tgit_blob_sha1\tsize_bytes"]
    for name, (_, data) in files.items():
        lines.append(f"{name}\t{rs.git_blob_sha1(data)}\t{len(data) if sizes else ''}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def setup(tmp_path):
    queries = tmp_path / "imhi-test-instruction"
    queries.mkdir()
    (queries / "CAMS.csv").write_bytes(csv_bytes(
        [{"query": "Post: I feel low. Question: depressed?", "gpt-3.5-turbo": r["goldens"]} for r in IMHI_ROWS]
        + [{"query": "an extra row", "gpt-3.5-turbo": "x"}], ["query", "gpt-3.5-turbo"]))
    return write_manifest(tmp_path / "manifest.tsv"), tmp_path / "out", queries


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=DEADLINE_S,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def all_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_git_blob_sha1_is_gits_object_id():
    assert rs.git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"         # git hash-object /dev/null
    assert rs.git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"  # echo hello | git hash-object


def test_fetch_keeps_only_verified_files_and_names_every_failure(server, setup):
    manifest, out, queries = setup
    proc = run_script("--base_url", server, "--manifest", str(manifest), "--output_dir", str(out),
                      "--imhi_queries", str(queries), "--retries", "0")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"6 manifest file(s) for {out} (from {server})"
    per_file = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in lines[1:7]}
    assert list(per_file) == [f"[{i}/6] {p}" for i, p in enumerate(FILES, start=1)]
    said = dict(zip(FILES, per_file.values()))
    assert said["HH-RLHF_model_output/Gemma-2B.csv"].startswith("downloaded ")
    assert said["HH-RLHF_model_output/Vicuna-7B.csv"].startswith("refused, size mismatch; got ")
    assert said["UltraFeedback_model_output/Claude-3.csv"] == "download failed: HTTP 404 Not Found; nothing written"
    assert said["UltraFeedback_model_output/llama2-chat-7B.csv"] == (
        f"download failed: connection closed after {len(CUT) // 2} of {len(CUT)} bytes; nothing written")
    assert said["IMHI_model_output/vicuna_13B/CAMS.csv"].endswith(f"queries joined from {queries / 'CAMS.csv'}")
    assert said["IMHI_model_output/vicuna_13B/swmh.csv"].endswith(
        "as released (no query column: no instructions file for this task)")
    assert lines[-1] == "3 downloaded (0.0 MiB), 0 already present and verified, 3 failed"
    assert proc.stderr.strip().splitlines() == [
        "error: 3 of 6 files failed: HH-RLHF_model_output/Vicuna-7B.csv (refused, size mismatch); "
        "UltraFeedback_model_output/Claude-3.csv (download failed: HTTP 404 Not Found); "
        f"UltraFeedback_model_output/llama2-chat-7B.csv (download failed: connection closed after {len(CUT) // 2} "
        f"of {len(CUT)} bytes)"]
    # only the three verified files, whole, gzip-compressed; no partial or temporary file anywhere
    assert all_files(out) == ["HH-RLHF_model_output/Gemma-2B.csv.gz", "IMHI_model_output/vicuna_13B/CAMS.csv.gz",
                              "IMHI_model_output/vicuna_13B/swmh.csv.gz"]
    assert gzip.decompress((out / "HH-RLHF_model_output/Gemma-2B.csv.gz").read_bytes()) == HH
    assert gzip.decompress((out / "IMHI_model_output/vicuna_13B/swmh.csv.gz").read_bytes()) == SWMH
    joined = gzip.decompress((out / "IMHI_model_output/vicuna_13B/CAMS.csv.gz").read_bytes())
    assert joined.startswith(b"query,goldens,generated_text\nPost: I feel low. Question: depressed?,")
    entries = {e.path: e for e in rs.read_manifest(manifest)}
    cams = entries["IMHI_model_output/vicuna_13B/CAMS.csv"]
    assert rs.verify_file(out / f"{cams.path}.gz", cams) == rs.JOINED


def test_a_second_run_skips_verified_files_without_asking_the_server(server, setup):
    manifest, out, queries = setup
    args = ("--base_url", server, "--manifest", str(manifest), "--output_dir", str(out), "--imhi_queries",
            str(queries), "--retries", "0")
    run_script(*args)
    hits = dict(Handler.hits)
    Handler.routes.update({"UltraFeedback_model_output/Claude-3.csv": ("ok", UF),
                           "UltraFeedback_model_output/llama2-chat-7B.csv": ("ok", CUT)})
    proc = run_script(*args)
    assert "HH-RLHF_model_output/Gemma-2B.csv: present, verified (" in proc.stdout
    assert "IMHI_model_output/vicuna_13B/CAMS.csv: present, verified (queries joined) (" in proc.stdout
    for path in ("HH-RLHF_model_output/Gemma-2B.csv", "IMHI_model_output/vicuna_13B/CAMS.csv",
                 "IMHI_model_output/vicuna_13B/swmh.csv"):
        assert Handler.hits[path] == hits[path] == 1
    assert "2 downloaded (0.0 MiB), 3 already present and verified, 1 failed" in proc.stdout
    assert proc.stderr.strip() == ("error: 1 of 6 files failed: HH-RLHF_model_output/Vicuna-7B.csv "
                                   "(refused, size mismatch)")


def test_a_hash_mismatch_is_refused_and_the_old_file_kept(server, tmp_path):
    files = {"HH-RLHF_model_output/Vicuna-7B.csv": ("corrupt", HH)}
    manifest = write_manifest(tmp_path / "m.tsv", files, sizes=False)  # size unknown: the hash alone decides
    old = tmp_path / "out/HH-RLHF_model_output/Vicuna-7B.csv.gz"
    old.parent.mkdir(parents=True)
    old.write_bytes(gzip.compress(b"an older copy"))
    before = old.read_bytes()
    args = ("--base_url", server, "--manifest", str(manifest), "--output_dir", str(tmp_path / "out"), "--retries", "0")
    proc = run_script(*args)  # a differing file is not replaced without --overwrite, and not downloaded
    assert proc.returncode == 2 and Handler.hits == {}
    assert "HH-RLHF_model_output/Vicuna-7B.csv: differs from the release; " in proc.stdout
    proc = run_script(*args, "--overwrite")
    assert proc.returncode == 2 and Handler.hits == {"HH-RLHF_model_output/Vicuna-7B.csv": 1}
    assert "refused, git blob sha1 mismatch; got " in proc.stdout and "; the old file kept" in proc.stdout
    assert proc.stderr.strip().endswith("HH-RLHF_model_output/Vicuna-7B.csv (refused, git blob sha1 mismatch)")
    assert old.read_bytes() == before and all_files(tmp_path / "out") == ["HH-RLHF_model_output/Vicuna-7B.csv.gz"]
    Handler.routes["HH-RLHF_model_output/Vicuna-7B.csv"] = ("ok", HH)
    assert run_script(*args, "--overwrite").returncode == 0
    assert gzip.decompress(old.read_bytes()) == HH


def test_a_download_cut_off_is_retried_then_verified(server, tmp_path):
    files = {"UltraFeedback_model_output/llama2-chat-7B.csv": ("cut_once", CUT)}
    Handler.routes.update(files)
    entries = rs.read_manifest(write_manifest(tmp_path / "m.tsv", files))
    said = []
    fetcher = rs.Fetcher(tmp_path / "out", server, retries=1, retry_wait=0, echo=said.append)
    report = fetcher.run(entries)
    assert report.failed == [] and Handler.hits == {"UltraFeedback_model_output/llama2-chat-7B.csv": 2}
    assert gzip.decompress((tmp_path / "out/UltraFeedback_model_output/llama2-chat-7B.csv.gz").read_bytes()) == CUT
    assert said[0].startswith("[1/1] UltraFeedback_model_output/llama2-chat-7B.csv: downloaded ")


def test_check_downloads_nothing_and_lists_what_is_missing(server, setup):
    manifest, out, _ = setup
    proc = run_script("--base_url", server, "--manifest", str(manifest), "--output_dir", str(out), "--check",
                      "--only", "HH-RLHF_model_output/*")
    assert proc.returncode == 2 and Handler.hits == {} and not out.exists()
    assert proc.stdout.splitlines()[1] == (f"[1/2] HH-RLHF_model_output/Gemma-2B.csv: missing; looked for "
                                           f"{out / 'HH-RLHF_model_output/Gemma-2B.csv.gz'}")


def test_credentials_in_the_base_url_are_sent_as_a_header_and_never_printed(server, setup):
    manifest, out, _ = setup
    secret_url = server.replace("http://", "http://alice:s3cret-token@")
    proc = run_script("--base_url", secret_url, "--manifest", str(manifest), "--output_dir", str(out),
                      "--only", "HH-RLHF_model_output/Gemma-2B.csv")
    assert proc.returncode == 0, proc.stderr
    assert "s3cret" not in proc.stdout + proc.stderr and "http://***@127.0.0.1" in proc.stdout
    assert Handler.auth == ["Basic YWxpY2U6czNjcmV0LXRva2Vu"]  # alice:s3cret-token


@pytest.mark.parametrize("args, message", [
    (["--only", "HH-RLHF_model_output/Nope*"], "error: --only 'HH-RLHF_model_output/Nope*' matches no path of the "
                                               "manifest (paths look like HH-RLHF_model_output/Gemma-2B.csv)"),
    (["--base_url", "ftp://u:pw@example.org/samples"], "error: --base_url 'ftp://***@example.org/samples': expected "
                                                       "an http://, https:// or file:// URL of a samples/ folder"),
    (["--imhi_queries", "/nonexistent/imhi"], "error: --imhi_queries /nonexistent/imhi: no such folder (give the "
                                              "IMHI test instructions folder, auto or none)"),
])
def test_bad_input_is_one_line(setup, args, message):
    manifest, out, _ = setup
    proc = run_script("--manifest", str(manifest), "--output_dir", str(out), *args)
    assert (proc.returncode, proc.stderr) == (2, message + "\n") and not out.exists()


@pytest.mark.parametrize("line, message", [
    ("../escape.csv\t" + "a" * 40 + "\t", "line 2: path '../escape.csv' must be relative and stay inside"),
    ("/etc/passwd\t" + "a" * 40 + "\t", "line 2: path '/etc/passwd' must be relative"),
    ("x.csv\tnot-a-hash\t", "line 2: git_blob_sha1 'not-a-hash' is not 40 lower-case hex digits"),
    ("x.csv\t" + "a" * 40, "line 2: expected 3 tab-separated cells"),
])
def test_a_bad_manifest_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "m.tsv"
    path.write_text(f"path\tgit_blob_sha1\tsize_bytes\n{line}\n")
    with pytest.raises(MetaAlignerError, match="^" + str(path).replace("\\", "\\\\") + ": " + message.replace("(", r"\(")):
        rs.read_manifest(path)


def test_the_shipped_manifest_is_the_releases():
    entries = rs.read_manifest()
    assert len(entries) == 128 and rs.DEFAULT_BASE_URL.endswith("/26d8dad8a5c729c1a9ba4d8d5fa11131d9a34a01/samples")
    assert sum(e.path.startswith("HH-RLHF_model_output/") for e in entries) == 10
    assert sum(e.path.startswith("UltraFeedback_model_output/") for e in entries) == 10
    assert sum(e.path.endswith("/swmh.csv") for e in entries) == 12
    if SHARED_MANIFEST.is_file():
        assert rs.MANIFEST_FILE.read_bytes() == SHARED_MANIFEST.read_bytes()


def test_every_shipped_sample_verifies_against_the_manifest():
    """The repository's samples/ files are the release's: HH-RLHF and UltraFeedback byte for byte, IMHI
    with the queries joined in (dropping the query column gives the released bytes back)."""
    said = []
    report = rs.Fetcher(REPO / "samples", check_only=True, echo=said.append).run(rs.read_manifest())
    joined = [line for line in said if ": present, verified (queries joined) (" in line]
    assert len(report.present) == 46 and len(joined) == 40, said
    assert {path for path, _ in report.failed} == {e.path for e in rs.read_manifest()} - set(report.present)
    assert all(reason == "missing" for _, reason in report.failed)


def test_a_file_that_cannot_be_written_fails_alone(server, setup):
    manifest, out, _ = setup
    out.mkdir()
    (out / "UltraFeedback_model_output").write_text("a file where a folder goes")
    Handler.routes["UltraFeedback_model_output/Claude-3.csv"] = ("ok", UF)
    entries = rs.select(rs.read_manifest(manifest), ["HH-RLHF_model_output/Gemma-2B.csv",
                                                     "UltraFeedback_model_output/Claude-3.csv"])
    report = rs.Fetcher(out, server, retries=0, echo=lambda line: None).run(entries)
    assert report.fetched == ["HH-RLHF_model_output/Gemma-2B.csv"]
    assert report.failed == [("UltraFeedback_model_output/Claude-3.csv",
                              f"not written: {out / 'UltraFeedback_model_output'}: File exists")]
