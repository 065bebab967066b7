"""The data side of the GPT template: the synthetic corpus, tokenizers and `python prepare.py`.

Each test copies the template's frozen files into a temporary workspace and imports them from
there (conftest.py), with NIGHTLAB_CACHE pointing at a temporary cache. Downloads come from a
loopback server, never the network. prepare.py writes the token files that data.py reads; neither
it nor any other file rewrites a file of the workspace (DATASET is a literal the user sets).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from gpt_kit import import_template, run_script, snapshot

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import set_constants  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Synthetic corpus


def test_corpus_is_deterministic_across_processes(workspace: Path) -> None:
    code = "import corpus, hashlib; print(hashlib.sha256(''.join(corpus.generate('val', 50000)).encode()).hexdigest())"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=workspace,
            env=dict(os.environ, PYTHONHASHSEED=seed),
            capture_output=True,
            text=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1 and len(outs.pop().strip()) == 64


def test_splits_share_no_document_and_have_long_range_structure(tpl: SimpleNamespace) -> None:
    import corpus

    docs = {split: [corpus.document(split, i) for i in range(300)] for split in ("train", "val", "holdout")}
    assert docs["train"][:3] == [corpus.document("train", i) for i in range(3)]
    sets = {split: set(d) for split, d in docs.items()}
    assert (
        not sets["train"] & sets["val"]
        and not sets["train"] & sets["holdout"]
        and not sets["val"] & sets["holdout"]
    )
    text = "\n".join(docs["val"])
    assert re.search(r"gives \d+ \w+ to \w+\. Now \w+ has \d+ and \w+ has \d+ \w+\.", text)
    assert " She " in text and " He " in text


class _Replay:
    """Reads a synthetic document sentence by sentence, tracking what a careful reader would:
    who each person is (gender from the name, home town), who "he"/"she" refers to, and how many
    items each person holds. Every stated fact must agree with what came before."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.homes: dict[str, str] = {}
        self.last: str | None = None
        self.pending: tuple | None = None
        self.checked = 0

    def who(self, word: str) -> str:
        if word in ("He", "She"):
            assert self.last is not None and self.pronoun(self.last) == word.lower()
            self.checked += 1
            return self.last
        return word

    @staticmethod
    def pronoun(name: str) -> str:
        return "she" if name[-1] in "aeiou" else "he"

    def set_count(self, name: str, expected: int, stated: int) -> None:
        assert stated == expected, (name, expected, stated)
        self.counts[name] = stated
        self.checked += 1

    def read(self, sentence: str) -> None:
        if m := re.fullmatch(
            r"(\w+) (?:is an? \w+ who lives in (\w+)|lives in (\w+) and works as an? \w+)\.", sentence
        ):
            self.homes[m[1]], self.last = m[2] or m[3], m[1]
        elif m := re.fullmatch(r"(\w+) has (\d+) \w+\.", sentence):  # introduction
            self.last = self.who(m[1])
            self.counts[self.last] = int(m[2])
        elif m := re.fullmatch(r"How many \w+ does (\w+) have\?", sentence):
            self.pending = ("ask", m[1])
        elif m := re.fullmatch(r"(\w+) has (\d+)\.", sentence):
            assert self.pending == ("ask", m[1])
            self.set_count(m[1], self.counts[m[1]], int(m[2]))
            self.last, self.pending = m[1], None
        elif m := re.fullmatch(
            r"(\w+) walks from (\w+) to \w+, then (he|she) goes back home to (\w+)\.", sentence
        ):
            p = self.who(m[1])
            assert m[2] == m[4] == self.homes[p] and m[3] == self.pronoun(p)
            self.last = p
        elif m := re.fullmatch(r"(\w+) sells (\d+) \w+, so (\w+) has (\d+) \w+ left\.", sentence):
            p = self.who(m[1])
            assert m[3] == p
            self.set_count(p, self.counts[p] - int(m[2]), int(m[4]))
            self.last = p
        elif m := re.fullmatch(r"(\w+) gives (\d+) \w+ to (\w+)\.", sentence):
            self.pending = ("give", self.who(m[1]), int(m[2]), m[3])
        elif m := re.fullmatch(r"Now (\w+) has (\d+) and (\w+) has (\d+) \w+\.", sentence):
            _, a, k, b = self.pending
            assert (m[1], m[3]) == (a, b) and a != b
            self.set_count(a, self.counts[a] - k, int(m[2]))
            self.set_count(b, self.counts[b] + k, int(m[4]))
            self.last, self.pending = b, None
        elif m := re.fullmatch(r"(\w+) buys (\d+) more \w+ in (\w+), so (he|she) has (\d+) now\.", sentence):
            p = self.who(m[1])
            assert m[3] == self.homes[p] and m[4] == self.pronoun(p)
            self.set_count(p, self.counts[p] + int(m[2]), int(m[5]))
            self.last = p
        elif m := re.fullmatch(r"The [a-z]+ ([A-Z]\w*) [a-z]+ the [a-z]+\.", sentence):
            self.last = m[1]
        elif m := re.fullmatch(r"(?!The )(\w+) [a-z]+ the [a-z]+ [a-z]+\.", sentence):
            self.last = self.who(m[1])
        else:  # descriptions and town facts: about no person
            assert re.fullmatch(
                r"The [a-z ]+\.|\w+ is known for its [a-z ]+\.|Everyone in \w+ talks about the [a-z ]+\.",
                sentence,
            ), sentence


def test_documents_keep_facts_pronouns_and_arithmetic_consistent(tpl: SimpleNamespace) -> None:
    import corpus

    checked = 0
    for i in range(200):
        title, body = corpus.document("val", i).split("\n\n", 1)
        assert title.startswith("# The ")
        reader = _Replay()
        for sentence in re.split(r"(?<=[.?])\s+", body.replace("\n\n", " ")):
            reader.read(sentence)
        checked += reader.checked
    assert checked > 2000


def test_prepare_default_builds_all_splits_fast_and_is_idempotent(
    tpl: SimpleNamespace, shared_cache: Path
) -> None:
    tpl.prepare.ensure_data()
    meta = json.loads((tpl.data.token_dir() / "meta.json").read_text())
    assert meta["tokens"]["train"] >= tpl.data.SYNTHETIC_TRAIN_BYTES
    assert meta["tokens"]["val"] > tpl.data.EVAL_TOKENS and meta["tokens"]["holdout"] > tpl.data.EVAL_TOKENS
    assert meta["seconds"] < 30
    before = (tpl.data.token_dir() / "train.bin").stat().st_mtime_ns
    assert tpl.prepare.main([]) == 0
    assert (tpl.data.token_dir() / "train.bin").stat().st_mtime_ns == before


def test_synthetic_val_and_holdout_come_from_a_secret_key_kept_across_rebuilds(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training script that reads corpus.py cannot regenerate the val split: its documents
    depend on a key drawn at random by the first preparation (private, like val.bin), which every
    later rebuild of the cache reuses, so val stays the same for a whole night."""
    set_constants(workspace / "data.py", SYNTHETIC_TRAIN_BYTES=200000, EVAL_TOKENS=2048)
    monkeypatch.setenv("NIGHTLAB_CACHE", str(tmp_path / "keyed-cache"))
    tpl = import_template(workspace, monkeypatch)
    import corpus

    tpl.prepare.ensure_data()
    key_file = tpl.data.dataset_dir() / tpl.data.EVAL_KEY_FILE
    key = int(key_file.read_text())
    assert key.bit_length() > 64  # drawn from os.urandom, not a constant
    val = np.fromfile(tpl.data.token_dir() / "val.bin", dtype=np.uint16).astype(np.uint8).tobytes()
    keyed = corpus.document("val", 0, key).encode()[:300]
    assert keyed in val
    assert corpus.document("val", 0).encode()[:300] not in val  # the fixed seeds alone do not give it
    assert corpus.document("holdout", 0, key).encode()[:300] not in val
    assert corpus.document("train", 5, key) == corpus.document("train", 5)  # train needs no key

    # Another EVAL_TOKENS rebuilds the files: same key, same val documents.
    set_constants(workspace / "data.py", EVAL_TOKENS=4096)
    tpl = import_template(workspace, monkeypatch)
    assert not tpl.data.data_ready()
    tpl.prepare.ensure_data()
    assert int(key_file.read_text()) == key
    again = np.fromfile(tpl.data.token_dir() / "val.bin", dtype=np.uint16).astype(np.uint8).tobytes()
    assert len(again) > len(val) and again.startswith(val[:2048])

    # A key file that is not a number: one line that says what to do.
    key_file.write_text("garbage")
    set_constants(workspace / "data.py", EVAL_TOKENS=2048)
    tpl = import_template(workspace, monkeypatch)
    with pytest.raises(SystemExit) as stop:
        tpl.prepare.ensure_data()
    assert stop.value.code == 1


# ---------------------------------------------------------------------------------------------
# Tokenizers


def test_byte_tokenizer_round_trip(tpl: SimpleNamespace) -> None:
    tok = tpl.data.get_tokenizer()
    text = "Glemlun has 8 thiasfes. Ünïcödé ✓ 你好\n"
    ids = tok.encode(text)
    assert tok.vocab_size == 256 and max(ids) < 256
    assert tok.decode(ids) == text
    assert int(tok.token_bytes[ids].sum()) == len(text.encode("utf-8"))


def test_bpe_tokenizer_round_trip_and_token_bytes(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tokenizers")
    set_constants(
        workspace / "data.py",
        TOKENIZER="bpe",
        VOCAB_SIZE=512,
        SYNTHETIC_TRAIN_BYTES=300000,
        EVAL_TOKENS=2048,
    )
    monkeypatch.setenv("NIGHTLAB_CACHE", str(tmp_path / "bpe-cache"))
    tpl = import_template(workspace, monkeypatch)
    tpl.prepare.ensure_data()
    tok = tpl.data.get_tokenizer()
    assert tok.vocab_size == 512 and tok.bos_id is not None and int(tok.token_bytes[tok.bos_id]) == 0
    for text in ["Trunddi has 5 duns. She thianchors the dudort.", "Ünïcödé ✓ 你好 1234567\n\n  x"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert int(tok.token_bytes[ids].sum()) == len(text.encode("utf-8"))
    assert len(tok.encode("Everyone in Theelgai talks about the lems.")) < 30  # merges learned
    val = tpl.data.load_split("val")
    assert (np.asarray(val) == tok.bos_id).sum() > 1 and int(np.max(val)) < 512


# ---------------------------------------------------------------------------------------------
# Real data: --data


def _write_parquet(path: Path, texts: list[str], column: str = "text") -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: texts}), path, row_group_size=50)


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "tree", "river", "stone", "light"]
    return [" ".join(rng.choice(words, size=int(rng.integers(20, 80)))) + f" #{seed}-{i}" for i in range(n)]


def test_data_folder_of_mixed_files(workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyarrow")
    data = tmp_path / "mydata"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("\n\n".join(_texts(300, 1)))
    (data / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in _texts(300, 2)))
    _write_parquet(data / "sub" / "c.parquet", _texts(300, 3))
    (data / "notes.md").write_text("ignored")
    monkeypatch.setenv("NIGHTLAB_CACHE", str(tmp_path / "cache"))
    set_constants(workspace / "data.py", EVAL_TOKENS=4096, SEQ_LEN=64, DATASET=str(data))
    tpl = import_template(workspace, monkeypatch)
    with pytest.raises(SystemExit) as exc:  # not prepared yet: the message names the command
        tpl.harness.make_train_loader(2)
    assert exc.value.code == 1
    before = snapshot(workspace)
    assert tpl.prepare.main(["--data", str(data)]) == 0
    assert snapshot(workspace) == before  # DATASET already names the folder: nothing to rewrite
    meta = json.loads((tpl.data.token_dir() / "meta.json").read_text())
    assert all(meta["tokens"][s] > 0 for s in ("train", "val", "holdout"))
    x, y = next(tpl.harness.make_train_loader(2))
    assert x.shape == (2, 64)


def test_a_dataset_path_is_prepared_where_data_py_looks_for_it(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python prepare.py` with DATASET a relative path: the files land where data.py reads them."""
    (workspace / "corpus.txt").write_text("\n\n".join(_texts(600, 4)))
    monkeypatch.setenv("NIGHTLAB_CACHE", str(tmp_path / "cache"))
    set_constants(workspace / "data.py", EVAL_TOKENS=4096, SEQ_LEN=64, DATASET="corpus.txt")
    tpl = import_template(workspace, monkeypatch)
    before = snapshot(workspace)
    assert tpl.prepare.main([]) == 0
    assert snapshot(workspace) == before
    assert tpl.data.data_ready() and len(tpl.data.load_split("train")) > 0
    assert tpl.prepare.main([]) == 0  # and a second run finds it
    assert tpl.data.token_dir().parent.name.startswith("data-")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.txt", "no such file or directory"),
        (lambda d: (d / "x.csv").write_text("a,b") and d / "x.csv", "unsupported file type '.csv'"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "holds no .txt, .jsonl or .parquet files"),
        (
            lambda d: (d / "bad.jsonl").write_text('{"body": "x"}\n') and d / "bad.jsonl",
            'with a "text" field',
        ),
    ],
    ids=["missing", "csv", "empty-folder", "jsonl-without-text"],
)
def test_bad_data_paths_give_one_line_and_exit_2(
    tpl: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture, make, message: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(SystemExit) as exc:
        tpl.prepare.main(["--data", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("prepare.py: ")


def test_bad_data_path_from_the_command_line(workspace: Path) -> None:
    proc = run_script(workspace, "prepare.py", "--data", "/no/such/place")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "prepare.py: --data /no/such/place: no such file or directory"


# ---------------------------------------------------------------------------------------------
# Real data: --download against a loopback server


class ShardServer(http.server.ThreadingHTTPServer):
    """Serves files from a folder with Range support; can fail or cut a file's first response."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fail_once: set[str] = set()
        self.cut_once: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        server: ShardServer = self.server  # type: ignore[assignment]
        name = self.path.lstrip("/")
        server.requests.append((name, self.headers.get("Range")))
        path = server.root / name
        if name in server.fail_once:
            server.fail_once.discard(name)
            self.send_error(503, "try again")
            return
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = (
            int(re.match(r"bytes=(\d+)-", self.headers["Range"]).group(1)) if self.headers.get("Range") else 0
        )
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        body = data[start:]
        if name in server.cut_once:  # promise the whole body, send half, hang up
            server.cut_once.discard(name)
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)


@pytest.fixture
def shard_server(tmp_path: Path):
    pytest.importorskip("pyarrow")
    root = tmp_path / "served"
    root.mkdir()
    server = ShardServer(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _serve_climbmix(server: ShardServer, with_sums: bool = True) -> None:
    names = ["shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"]
    for i, name in enumerate(names):
        _write_parquet(server.root / name, _texts(400, 10 + i))
    if with_sums:
        lines = [f"{hashlib.sha256((server.root / n).read_bytes()).hexdigest()}  {n}" for n in names]
        (server.root / "SHA256SUMS").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_download_retries_resumes_and_verifies(
    workspace: Path, shard_server: ShardServer, tmp_path: Path
) -> None:
    _serve_climbmix(shard_server)
    shard_server.fail_once.add("shard_00000.parquet")
    shard_server.cut_once.add("shard_00001.parquet")
    env = {"NIGHTLAB_DATA_URL": shard_server.url, "NIGHTLAB_CACHE": str(tmp_path / "cache")}
    set_constants(workspace / "data.py", EVAL_TOKENS=4096, SEQ_LEN=64)
    before = snapshot(workspace)
    proc = run_script(workspace, "prepare.py", "--download", "climbmix", "--shards", "2", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "shard_00000.parquet attempt 1/5 failed (HTTP Error 503" in proc.stdout
    assert "shard_00001.parquet attempt 1/5 failed" in proc.stdout
    cut = [r for n, r in shard_server.requests if n == "shard_00001.parquet"]
    assert cut[0] is None and re.fullmatch(r"bytes=\d+-", cut[1])  # the second request resumed
    raw = tmp_path / "cache" / "climbmix" / "raw"
    for name in ("shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"):
        assert (raw / name).read_bytes() == (shard_server.root / name).read_bytes()
    assert snapshot(workspace) == before  # no file rewritten: DATASET is still "synthetic"
    assert 'set DATASET = "climbmix" in data.py' in proc.stdout
    meta = json.loads((tmp_path / "cache" / "climbmix" / "byte" / "meta.json").read_text())
    assert min(meta["tokens"].values()) > 0
    set_constants(workspace / "data.py", DATASET="climbmix")  # as `nightlab init --dataset` does
    served = len(shard_server.requests)
    again = run_script(workspace, "prepare.py", env=env)  # cached: no new requests
    assert again.returncode == 0 and "already prepared" in again.stdout
    assert len(shard_server.requests) == served and "set DATASET" not in again.stdout


@pytest.mark.parametrize("flag", ["--data", "--download"])
def test_data_and_download_leave_every_file_unchanged_and_say_how_to_use_the_data(
    flag: str,
    tpl: SimpleNamespace,
    workspace: Path,
    shard_server: ShardServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """Nothing rewrites itself: the user (or `nightlab init --dataset`) points DATASET at the data."""
    _serve_climbmix(shard_server, with_sums=False)
    monkeypatch.setenv("NIGHTLAB_DATA_URL", shard_server.url)
    monkeypatch.setenv("NIGHTLAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "notes.txt").write_text("\n\n".join(_texts(600, 5)))
    value = str((tmp_path / "notes.txt").resolve()) if flag == "--data" else "climbmix"
    before = snapshot(workspace)
    argv = (
        ["--data", str(tmp_path / "notes.txt")]
        if flag == "--data"
        else ["--download", "climbmix", "--shards", "1"]
    )
    assert tpl.prepare.main(argv) == 0
    assert snapshot(workspace) == before
    hint = [line for line in capsys.readouterr().out.splitlines() if line.startswith("prepare.py: ")]
    assert hint == [
        f"prepare.py: to train on it, set DATASET = {json.dumps(value)} in data.py and commit "
        f"(or create the workspace with `nightlab init DIR --dataset {value}`)"
    ]
    assert tpl.data.data_ready(value) and not tpl.data.data_ready()  # prepared, but not what runs use


def test_download_resumes_a_partial_file(
    tpl: SimpleNamespace, shard_server: ShardServer, tmp_path: Path
) -> None:
    import sources

    _serve_climbmix(shard_server, with_sums=False)
    name = "shard_00000.parquet"
    full = (shard_server.root / name).read_bytes()
    dest = tmp_path / "dl" / name
    dest.parent.mkdir()
    dest.with_name(name + ".part").write_bytes(full[:1000])
    sources.download_file(f"{shard_server.url}/{name}", dest, wait=0)
    assert dest.read_bytes() == full and not dest.with_name(name + ".part").exists()
    assert shard_server.requests == [(name, "bytes=1000-")]


def test_download_rejects_a_corrupt_file(
    tpl: SimpleNamespace, shard_server: ShardServer, tmp_path: Path
) -> None:
    import sources

    _serve_climbmix(shard_server, with_sums=False)
    name = "shard_00000.parquet"
    with pytest.raises(sources.SourceError, match="failed 2 times, last error: sha256 does not match"):
        sources.download_file(
            f"{shard_server.url}/{name}", tmp_path / name, sha256="0" * 64, retries=2, wait=0
        )
    (shard_server.root / "junk.parquet").write_bytes(b"PAR1 not really a parquet file")
    with pytest.raises(sources.SourceError, match="not a complete parquet file"):
        sources.download_file(
            f"{shard_server.url}/junk.parquet", tmp_path / "junk.parquet", retries=1, wait=0
        )
    with pytest.raises(sources.SourceError, match="HTTP 404") as exc:
        sources.download_file(f"{shard_server.url}/nope.parquet", tmp_path / "nope.parquet", wait=0)
    assert exc.value.code == 1
    assert not list(tmp_path.glob("*.part"))


def test_unknown_download_name(tpl: SimpleNamespace, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        tpl.prepare.main(["--download", "imagenet"])
    assert exc.value.code == 2
    assert "unknown data set (choose from climbmix, fineweb-edu, tinystories)" in capsys.readouterr().err
