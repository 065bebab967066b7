"""Real text for prepare.py: local files (--data) and public parquet shards (--download).

FROZEN, like prepare.py. Everything here yields plain documents (strings) and which split they
belong to; prepare.py tokenizes them. Downloads retry with backoff, resume partial files with
HTTP range requests, and check every shard (size, parquet footer, sha256 when the server
publishes a SHA256SUMS manifest) before it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SUFFIXES = (".txt", ".jsonl", ".parquet")
TXT_DOC_CHARS = 8000  # a .txt file is cut into documents of about this size, at blank lines
RETRIES = 5  # attempts per file
RETRY_WAIT = 2.0  # seconds before the second attempt, doubled after each failure
TIMEOUT = 60  # seconds without data before a request counts as failed
WORKERS = 4  # parallel downloads

# name -> (base URL, train shard file names by index, the val shard). Val and holdout are both
# drawn from the val shard, which is never used for training. NIGHTLAB_DATA_URL replaces the base.
HF = "https://huggingface.co/datasets"
TINYSTORIES_TRAIN = [
    "train-00000-of-00004-2d5a1467fff1081b.parquet",
    "train-00001-of-00004-5852b56a2bd28fd9.parquet",
    "train-00002-of-00004-a26307300439e943.parquet",
    "train-00003-of-00004-d243063613e5a057.parquet",
]
DOWNLOADS = {
    # The ClimbMix shards Karpathy's autoresearch trains on; shard_06542 is its pinned val shard.
    "climbmix": (f"{HF}/karpathy/climbmix-400b-shuffle/resolve/main", "shard_{:05d}.parquet", 6542),
    # FineWeb-Edu, shuffled and resharded for nanochat; shard_01822 is the last one.
    "fineweb-edu": (f"{HF}/karpathy/fineweb-edu-100b-shuffle/resolve/main", "shard_{:05d}.parquet", 1822),
    "tinystories": (f"{HF}/roneneldan/TinyStories/resolve/main/data", TINYSTORIES_TRAIN, -1),
}
TINYSTORIES_VAL = "validation-00000-of-00001-869c898b519ad725.parquet"


class SourceError(Exception):
    """Bad input or a failed download; `code` is the exit code prepare.py uses."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------
# Local files


def find_files(path_text: str) -> list[Path]:
    """The supported files at a path (a file, or a folder searched recursively), sorted."""
    path = Path(path_text).expanduser()
    if not path.exists():
        raise SourceError(f"--data {path_text}: no such file or directory")
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise SourceError(
                f"--data {path_text}: unsupported file type {path.suffix!r} (use .txt, .jsonl or .parquet)"
            )
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise SourceError(f"--data {path_text}: the folder holds no .txt, .jsonl or .parquet files")
    return files


def total_size(files: list[Path]) -> int:
    return sum(p.stat().st_size for p in files)


def read_documents(path: Path) -> Iterator[str]:
    """The documents of one file: .txt in chunks at blank lines, .jsonl/.parquet by their text field."""
    if path.suffix == ".txt":
        yield from _txt_documents(path.read_text(encoding="utf-8", errors="replace"))
    elif path.suffix == ".jsonl":
        yield from _jsonl_documents(path)
    else:
        yield from parquet_documents(path)


def _txt_documents(text: str) -> Iterator[str]:
    chunk: list[str] = []
    size = 0
    for para in text.split("\n\n"):
        chunk.append(para)
        size += len(para) + 2
        if size >= TXT_DOC_CHARS:
            yield "\n\n".join(chunk)
            chunk, size = [], 0
    if any(p.strip() for p in chunk):
        yield "\n\n".join(chunk)


def _jsonl_documents(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError):
                raise SourceError(f'{path}:{number}: not a JSON object with a "text" field') from None
            if not isinstance(text, str):
                raise SourceError(f'{path}:{number}: "text" is not a string')
            yield text


def parquet_documents(path: Path) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise SourceError(f"{path}: not a readable parquet file ({exc})") from None
    if "text" not in pf.schema_arrow.names:
        raise SourceError(f"{path}: no 'text' column (columns: {', '.join(pf.schema_arrow.names)})")
    for group in range(pf.num_row_groups):
        for text in pf.read_row_group(group, columns=["text"]).column("text").to_pylist():
            if text:
                yield text


def _bucket(text: str) -> float:
    """A stable number in [0, 1) per document: the same text always lands in the same split."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8", "replace")).digest()[:8], "big") / 2**64


def split_documents(
    files: list[Path], val_fraction: float
) -> tuple[Iterator[tuple[str, str]], Iterator[str]]:
    """(split, text) for every document, and a second pass over the train texts (for BPE)."""

    def split_of(text: str) -> str:
        b = _bucket(text)
        return "val" if b < val_fraction else "holdout" if b < 2 * val_fraction else "train"

    def everything() -> Iterator[tuple[str, str]]:
        found = False
        for path in files:
            for text in read_documents(path):
                found = True
                yield split_of(text), text
        if not found:
            raise SourceError(f"no text found in {', '.join(map(str, files[:3]))}")

    def train_texts() -> Iterator[str]:
        return (text for path in files for text in read_documents(path) if split_of(text) == "train")

    return everything(), train_texts()


def split_by_shard(
    train_files: list[Path], val_files: list[Path]
) -> tuple[Iterator[tuple[str, str]], Iterator[str]]:
    """Train shards -> train; the val shard's documents -> val or holdout, half each (by hash)."""

    def everything() -> Iterator[tuple[str, str]]:
        for path in val_files:
            for text in parquet_documents(path):
                yield ("val" if _bucket(text) < 0.5 else "holdout"), text
        for path in train_files:
            for text in parquet_documents(path):
                yield "train", text

    return everything(), (text for path in train_files for text in parquet_documents(path))


# ---------------------------------------------------------------------------------------------
# Downloads


def shard_names(name: str, shards: int) -> tuple[str, list[str], list[str]]:
    """(base URL, train file names, val file names) of a download set."""
    if name not in DOWNLOADS:
        raise SourceError(f"--download {name}: unknown data set (choose from {', '.join(DOWNLOADS)})")
    if shards < 1:
        raise SourceError(f"--shards {shards}: must be at least 1")
    base, train, val_index = DOWNLOADS[name]
    base = os.environ.get("NIGHTLAB_DATA_URL", "").rstrip("/") or base
    if isinstance(train, list):
        return base, train[:shards], [TINYSTORIES_VAL]
    return base, [train.format(i) for i in range(min(shards, val_index))], [train.format(val_index)]


def download(name: str, shards: int, raw_dir: Path) -> tuple[list[Path], list[Path]]:
    """Fetch the train and val shards of `name` into raw_dir (skipping verified ones)."""
    base, train, val = shard_names(name, shards)
    raw_dir.mkdir(parents=True, exist_ok=True)
    sums = fetch_manifest(base)
    names = train + val
    print(f"download: {len(names)} files of {name} from {base}")
    with ThreadPoolExecutor(WORKERS) as pool:
        jobs = [pool.submit(download_file, f"{base}/{n}", raw_dir / n, sums.get(n)) for n in names]
        for job in jobs:
            job.result()
    return [raw_dir / n for n in train], [raw_dir / n for n in val]


def fetch_manifest(base: str) -> dict[str, str]:
    """name -> sha256 from `base/SHA256SUMS` (``<hex>  <name>`` lines), or {} when there is none."""
    try:
        with urllib.request.urlopen(f"{base}/SHA256SUMS", timeout=TIMEOUT) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return {}
    sums = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def check_parquet(path: Path) -> None:
    """Raise ValueError unless `path` looks like a complete parquet file (magic and footer)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(max(0, size - 8))
        tail = f.read(8)
    if size < 12 or head != b"PAR1" or tail[4:] != b"PAR1":
        raise ValueError("not a complete parquet file (magic bytes missing)")
    if int.from_bytes(tail[:4], "little") > size - 12:
        raise ValueError("parquet footer length is larger than the file")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return
    pq.read_metadata(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, sha256: str | None) -> None:
    check_parquet(path)
    if sha256 and _sha256(path) != sha256:
        raise ValueError("sha256 does not match the manifest")


def download_file(
    url: str, dest: Path, sha256: str | None = None, retries: int = RETRIES, wait: float = RETRY_WAIT
) -> Path:
    """Download `url` to `dest`, resuming `dest.part` after a failure; verify before renaming."""
    if dest.exists():
        try:
            _verify(dest, sha256)
            return dest
        except Exception:
            dest.unlink()
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, retries + 1):
        try:
            _fetch(url, part)
            try:
                _verify(part, sha256)
            except Exception:
                part.unlink()  # complete but wrong: start over rather than resume
                raise
            os.replace(part, dest)
            print(f"download: {dest.name} ok ({dest.stat().st_size:,} bytes)")
            return dest
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500 and exc.code not in (408, 416, 429):
                raise SourceError(f"download {url}: HTTP {exc.code} {exc.reason}", 1) from None
            if exc.code == 416:
                part.unlink(missing_ok=True)
            error: Exception = exc
        except Exception as exc:
            error = exc
        if attempt == retries:
            raise SourceError(f"download {url}: failed {retries} times, last error: {error}", 1)
        delay = wait * 2 ** (attempt - 1)
        print(f"download: {dest.name} attempt {attempt}/{retries} failed ({error}); retrying in {delay:g}s")
        time.sleep(delay)
    raise AssertionError("unreachable")


def _fetch(url: str, part: Path) -> None:
    """One request: append to `part` if the server honours a range, else restart; check the length."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as resp:
        resumed = have > 0 and resp.status == 206
        expected = resp.headers.get("Content-Length")
        total = int(expected) + (have if resumed else 0) if expected is not None else None
        with open(part, "ab" if resumed else "wb") as f:
            while block := resp.read(1 << 20):
                f.write(block)
    size = part.stat().st_size
    if total is not None and size != total:
        raise OSError(f"connection ended after {size:,} of {total:,} bytes")
