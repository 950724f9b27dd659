"""The release's ``samples/`` folder (MetaAligner, commit 26d8dad): a manifest of every file with its
git blob SHA-1, and a fetcher that downloads what a folder lacks and verifies each file before keeping it.

    from metaaligner.release_samples import fetch_samples, read_manifest, select
    report = fetch_samples(select(read_manifest(), ["HH-RLHF_model_output/*"]), "samples")

Files are stored as ``samples/`` keeps them: ``<output_dir>/<manifest path>.gz``, the released bytes
gzip-compressed with a fixed header. IMHI files are the one exception, as in ``samples/``: where the
task's IMHI test instructions are at hand, the queries are joined in (``metaaligner.samples``); such a
file still verifies, because dropping its ``query`` column gives back the released bytes exactly.
"""
from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import http.client
import io as _io
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Callable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from metaaligner.errors import DataError, MetaAlignerError
from metaaligner.io import _umask, redact_text, redact_url
from metaaligner.samples import IMHI_RELEASE_COLUMNS, IMHI_SOURCE, SAMPLE_COLUMNS, csv_bytes, gzip_bytes, join_rows

RELEASE_REPO = "SteveKGYang/MetaAligner"
RELEASE_COMMIT = "26d8dad8a5c729c1a9ba4d8d5fa11131d9a34a01"
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/{RELEASE_REPO}/{RELEASE_COMMIT}/samples"
MANIFEST_FILE = Path(__file__).resolve().parent / "data" / "release" / "samples_manifest.tsv"
MANIFEST_COLUMNS = ["path", "git_blob_sha1", "size_bytes"]
FETCH_HINT = "run scripts/fetch_release_samples.py"
URL_SCHEMES = ("http", "https", "file")

# What a local file turned out to be.
MISSING, VERIFIED, JOINED = "missing", "verified", "verified (queries joined)"
_SHA1 = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class ManifestEntry:
    path: str                 # relative to the release's samples/, e.g. HH-RLHF_model_output/Gemma-2B.csv
    sha1: str                 # git blob SHA-1 of the released bytes
    size: int | None = None   # bytes, where the manifest knows it

    @property
    def is_imhi(self) -> bool:
        return self.path.startswith(IMHI_SOURCE + "/")


@dataclass
class FetchReport:
    present: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)   # (manifest path, short reason)
    bytes_downloaded: int = 0


class FetchError(Exception):
    """One download that did not give a usable body; ``retry`` when trying again may help."""

    def __init__(self, reason: str, retry: bool = False):
        super().__init__(reason)
        self.retry = retry


def git_blob_sha1(data: bytes) -> str:
    """Git's object id of a file's bytes, which is what a commit's tree pins."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ---------------------------------------------------------------- the manifest

def _check_relative(path: str, where: str) -> None:
    parts = path.split("/")
    if path.startswith("/") or "\\" in path or ":" in parts[0] or any(p in ("", ".", "..") for p in parts):
        raise MetaAlignerError(f"{where}: path {path!r} must be relative and stay inside the samples folder")


def _entry(cells: list[str], where: str) -> ManifestEntry:
    if len(cells) != len(MANIFEST_COLUMNS):
        raise MetaAlignerError(f"{where}: expected {len(MANIFEST_COLUMNS)} tab-separated cells "
                               f"({', '.join(MANIFEST_COLUMNS)}), got {len(cells)}")
    path, sha1, size = cells
    _check_relative(path, where)
    if not _SHA1.fullmatch(sha1):
        raise MetaAlignerError(f"{where}: git_blob_sha1 {sha1!r} is not 40 lower-case hex digits")
    if size and not size.isdigit():
        raise MetaAlignerError(f"{where}: size_bytes {size!r} is not a whole number (leave it empty if unknown)")
    return ManifestEntry(path, sha1, int(size) if size else None)


def read_manifest(path: str | Path = MANIFEST_FILE) -> list[ManifestEntry]:
    """Entries of a manifest TSV (header ``path, git_blob_sha1, size_bytes``), checked line by line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MetaAlignerError(f"{path}: manifest not found") from None
    except UnicodeDecodeError:
        raise MetaAlignerError(f"{path}: not a UTF-8 text file; expected a TSV manifest") from None
    if not lines or lines[0].split("\t") != MANIFEST_COLUMNS:
        raise MetaAlignerError(f"{path}: line 1: expected the header {' '.join(MANIFEST_COLUMNS)} (tab-separated)")
    entries, seen = [], set()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        entry = _entry(line.split("\t"), f"{path}: line {number}")
        if entry.path in seen:
            raise MetaAlignerError(f"{path}: line {number}: {entry.path} is listed twice")
        seen.add(entry.path)
        entries.append(entry)
    if not entries:
        raise MetaAlignerError(f"{path}: lists no files")
    return entries


def select(entries: list[ManifestEntry], globs: list[str]) -> list[ManifestEntry]:
    """Entries whose path matches any glob (all for none); a glob matching nothing is an error."""
    if not globs:
        return list(entries)
    for glob in globs:
        if not any(fnmatchcase(e.path, glob) for e in entries):
            raise MetaAlignerError(f"--only {glob!r} matches no path of the manifest (paths look like "
                                   f"{entries[0].path})")
    return [e for e in entries if any(fnmatchcase(e.path, g) for g in globs)]


# ---------------------------------------------------------------- what is already here

def stored_path(output_dir: str | Path, entry: ManifestEntry) -> Path:
    """Where a fetched file goes: ``samples/`` keeps every table gzip-compressed."""
    return Path(output_dir) / f"{entry.path}.gz"


def local_file(output_dir: str | Path, entry: ManifestEntry) -> Path | None:
    """The file standing for ``entry`` here: ``<path>.gz``, else an uncompressed ``<path>``, else None."""
    for path in (stored_path(output_dir, entry), Path(output_dir) / entry.path):
        if path.is_file():
            return path
    return None


def _parse_csv(data: bytes) -> tuple[list[str], list[dict]] | None:
    try:
        reader = csv.DictReader(_io.StringIO(data.decode("utf-8"), newline=""))
        return list(reader.fieldnames or []), list(reader)
    except (UnicodeDecodeError, csv.Error):
        return None


def _joined_matches(data: bytes, entry: ManifestEntry) -> bool:
    """A query-joined IMHI file verifies when its two released columns re-serialise to the release."""
    parsed = _parse_csv(data)
    if parsed is None or parsed[0] != SAMPLE_COLUMNS:
        return False
    return git_blob_sha1(csv_bytes(parsed[1], IMHI_RELEASE_COLUMNS)) == entry.sha1


def verify_file(path: Path, entry: ManifestEntry) -> str:
    """``VERIFIED``, ``JOINED``, or why the file is not the released one."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            return f"not a valid gzip file ({exc})"
    digest = git_blob_sha1(data)
    if digest == entry.sha1:
        return VERIFIED
    if entry.is_imhi and _joined_matches(data, entry):
        return JOINED
    return f"git blob sha1 {digest}, the manifest says {entry.sha1}"


# ---------------------------------------------------------------- download, verify, store

def check_url(base_url: str) -> str:
    """``base_url`` without a trailing slash; one clear error for anything urllib cannot fetch."""
    try:
        scheme = urlsplit(base_url).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme not in URL_SCHEMES:
        raise MetaAlignerError(f"--base_url {redact_url(base_url)!r}: expected an http://, https:// or file:// "
                               "URL of a samples/ folder")
    return base_url.rstrip("/")


def file_url(base_url: str, entry: ManifestEntry) -> str:
    return f"{base_url.rstrip('/')}/{quote(entry.path, safe='/')}"


def _request(url: str) -> urllib.request.Request:
    """A request whose URL carries no credentials: user:password@ travels as a Basic auth header, so
    no error message can ever echo it."""
    parts = urlsplit(url)
    headers = {"User-Agent": "metaaligner-fetch-release-samples"}
    if parts.username is not None or parts.password is not None:
        token = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
        url = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return urllib.request.Request(url, headers=headers)


def download(url: str, timeout: float) -> bytes:
    """The whole body, or ``FetchError``: a body cut short never passes for a file."""
    request = _request(url)
    expected = None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            data = response.read()
    except urllib.error.HTTPError as exc:
        raise FetchError(f"HTTP {exc.code} {exc.reason}", retry=exc.code >= 500 or exc.code == 429) from None
    except http.client.IncompleteRead as exc:
        raise FetchError(f"connection closed after {len(exc.partial)} of {expected or '?'} bytes", True) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, FileNotFoundError):  # file:// URLs
            raise FetchError("not found", retry=False) from None
        raise FetchError(f"cannot reach the server ({redact_text(str(exc.reason))})", retry=True) from None
    except TimeoutError:
        raise FetchError(f"no data for {timeout:g} s", retry=True) from None
    except (OSError, http.client.HTTPException) as exc:
        reason = f"{exc.__class__.__name__}: {redact_text(str(exc))}"
        raise FetchError(f"connection failed ({reason})", retry=True) from None
    if expected is not None and expected.isdigit() and len(data) != int(expected):
        raise FetchError(f"connection closed after {len(data)} of {expected} bytes", retry=True)
    return data


def download_with_retries(url: str, timeout: float, retries: int, wait: float) -> bytes:
    for attempt in range(retries + 1):
        try:
            return download(url, timeout)
        except FetchError as exc:
            if not exc.retry or attempt == retries:
                raise
            time.sleep(wait * 2 ** attempt)
    raise AssertionError("unreachable")


def check_download(entry: ManifestEntry, data: bytes) -> str | None:
    """Why ``data`` is not the released file (None when it is)."""
    if entry.size is not None and len(data) != entry.size:
        return f"size mismatch; got {len(data)} bytes, the manifest says {entry.size}"
    digest = git_blob_sha1(data)
    if digest != entry.sha1:
        return f"git blob sha1 mismatch; got {digest}, the manifest says {entry.sha1}"
    return None


def imhi_form(entry: ManifestEntry, data: bytes, imhi_queries: Path | None) -> tuple[bytes, str]:
    """An IMHI file's bytes with the queries joined in where its task's instructions are at hand."""
    task = PurePosixPath(entry.path).name
    instructions = imhi_queries / task if imhi_queries is not None else None
    if instructions is None or not instructions.is_file():
        return data, "as released (no query column: no instructions file for this task)"
    parsed = _parse_csv(data)
    if parsed is None or parsed[0] != IMHI_RELEASE_COLUMNS:
        return data, "as released (not the expected goldens,generated_text table; queries not joined)"
    try:
        joined = join_rows(parsed[1], instructions, entry.path)
    except DataError as exc:
        return data, f"as released (queries not joined: {exc})"
    if git_blob_sha1(csv_bytes(joined, IMHI_RELEASE_COLUMNS)) != entry.sha1:  # keeps it verifiable later
        return data, "as released (a joined copy would not round-trip; queries not joined)"
    return csv_bytes(joined, SAMPLE_COLUMNS), f"queries joined from {instructions}"


def write_atomically(path: Path, payload: bytes) -> None:
    """Write beside ``path`` and rename into place only when the bytes on disk read back whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        if Path(tmp).read_bytes() != payload:
            raise OSError(f"{tmp}: bytes read back differ from those written")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Fetcher:
    """Settings of one fetch; ``run`` walks the entries and says per file what it did."""

    output_dir: Path
    base_url: str = DEFAULT_BASE_URL
    imhi_queries: Path | None = None
    overwrite: bool = False
    check_only: bool = False
    timeout: float = 60.0
    retries: int = 2
    retry_wait: float = 1.0
    echo: Callable[[str], None] = print

    def run(self, entries: list[ManifestEntry]) -> FetchReport:
        report = FetchReport()
        width = len(str(len(entries)))
        for i, entry in enumerate(entries, start=1):
            tag = f"[{i:>{width}}/{len(entries)}] {entry.path}"
            ok, line = self.one(entry, report)
            self.echo(f"{tag}: {line}")
            if not ok:
                report.failed.append((entry.path, line.split(";")[0]))  # the reason, without the details
        return report

    def one(self, entry: ManifestEntry, report: FetchReport) -> tuple[bool, str]:
        path = local_file(self.output_dir, entry)
        if path is not None:
            state = verify_file(path, entry)
            if state in (VERIFIED, JOINED):
                report.present.append(entry.path)
                return True, f"present, {state} ({path})"
            if not self.overwrite or self.check_only:
                return False, (f"differs from the release; {path}: {state}; kept as it is "
                               "(--overwrite replaces it with a verified download)")
        if self.check_only:
            return False, f"missing; looked for {stored_path(self.output_dir, entry)}"
        return self.fetch(entry, path or stored_path(self.output_dir, entry), report)

    def fetch(self, entry: ManifestEntry, target: Path, report: FetchReport) -> tuple[bool, str]:
        start = time.time()
        try:
            data = download_with_retries(file_url(self.base_url, entry), self.timeout, self.retries, self.retry_wait)
        except FetchError as exc:
            return False, f"download failed: {exc}; nothing written"
        problem = check_download(entry, data)
        if problem:
            kept = "the old file kept" if target.exists() else "nothing written"
            return False, f"refused, {problem}; {kept}"
        payload, form = imhi_form(entry, data, self.imhi_queries) if entry.is_imhi else (data, "as released")
        try:
            write_atomically(target, gzip_bytes(payload) if target.name.endswith(".gz") else payload)
        except OSError as exc:  # e.g. a full disk: this file fails, the others are still tried
            from metaaligner.cli import os_error_line

            return False, f"not written: {os_error_line(exc)}; nothing partial left at {target}"
        report.fetched.append(entry.path)
        report.bytes_downloaded += len(data)
        return True, (f"downloaded {len(data) / 2**20:.1f} MiB in {time.time() - start:.1f} s, git blob sha1 "
                      f"verified, saved to {target}, {form}")


def fetch_samples(entries: list[ManifestEntry], output_dir: str | Path, base_url: str = DEFAULT_BASE_URL,
                  **settings) -> FetchReport:
    """Fetch every entry ``output_dir`` lacks (see ``Fetcher`` for the settings)."""
    return Fetcher(Path(output_dir), check_url(base_url), **settings).run(entries)


def failure_line(report: FetchReport, total: int) -> str:
    """One line naming every file that failed and why."""
    listed = "; ".join(f"{path} ({reason})" for path, reason in report.failed)
    return f"{len(report.failed)} of {total} files failed: {listed}"
