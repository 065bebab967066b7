"""The frozen evaluation of the GPT research target: `python evaluation.py`.

FROZEN: nightlab hashes this file and runs it as the workspace's `evaluate` command, in its own
process. It loads the torch.export program that train.py left in NIGHTLAB_RUN_DIR (none of
train.py's code runs here), checks that the model is causal, and scores bits per byte on a fixed
number of val tokens (and as many holdout tokens, recorded but never shown to the agent). It
writes metrics.json, and nothing else writes it: a metrics.json that was already there makes the
run invalid. It takes the settings and the prepared splits from data.py and nothing from
harness.py or train.py.

`python evaluation.py --follow` is the progress evaluator nightlab runs beside the training
process: it scores each checkpoint the run leaves (progress.jsonl) on a val prefix, appends the
result to progress.eval.jsonl, creates the stop file once NIGHTLAB_TARGET_METRIC is reached, and
ends when nightlab creates progress.done. It never reads holdout while training runs, and the
training process never reads val: the checkpoints cross between them as torch.export programs and
weight files. Every checkpoint passes the checks the final export does (the program's graph, and
causality with that checkpoint's weights) or is refused: an invalid line in progress.eval.jsonl,
which makes the run invalid. Under nightlab that file is written in NIGHTLAB_SCORES_DIR, a folder
the training process cannot see (the scores would otherwise be a val oracle it reads while it
trains); by hand, in the run directory. Started with NIGHTLAB_WARM_EVALUATE=1 it also waits
without checkpoints, and when nightlab has created progress.final (after training ended and
passed its audit) it runs the final evaluation above in this process, already warm: torch
imported, data and tokenizer loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path

# CPU threads waiting for work spin only briefly, then sleep (set before torch starts its
# thread pool; a user's OMP_WAIT_POLICY wins). Spinning for long takes the cores from the
# threads doing the work whenever anything else runs on the machine; never spinning costs
# wake-ups. Training 131k tokens on the cpu size, 2 cores (docs/BENCHMARKS.md): quiet 5.3 s
# (libgomp's default), 5.7 s (3000 spins), 6.2 s (passive); one core busy elsewhere: 37 s, 11.2 s, 10.5 s.
os.environ.setdefault("GOMP_SPINCOUNT", "3000")

import numpy as np
import torch
import torch.nn.functional as F
from data import (
    CAUSAL_TRIALS,
    DONE_FILE,
    EVAL_BATCH_SIZE,
    EVAL_TOKENS,
    EXIT_INVALID,
    EXPORT_FILE,
    EXPORT_META,
    FINAL_FILE,
    METRICS_FILE,
    PREPARE_COMMAND,
    PROGRESS_DIR,
    PROGRESS_EVAL_FILE,
    PROGRESS_EVAL_TOKENS,
    PROGRESS_FILE,
    SEQ_LEN,
    STOP_FILE,
    VOCAB_SIZE,
    WEIGHTS_FILE,
    exit_now,
    fail,
    get_run_dir,
    get_tokenizer,
    load_split,
)

SCORES_VARIABLE = "NIGHTLAB_SCORES_DIR"  # where nightlab has the progress evaluator write its scores
T_IMPORT = time.perf_counter()  # eval_seconds counts from here (loading the model included)
HERE = "evaluation.py"  # the name this file's errors start with


class UnsafeExport(Exception):
    """The export asks its loader to run code: a pickle, a custom object or a compiled library."""


def load_program(path: Path) -> torch.nn.Module:
    """The torch.export program at ``path``, loaded without running any code it carries.

    train.py writes the export, so it is untrusted input, and torch.export.load unpickles any
    weight or constant its archive marks ``use_pickle`` (with ``weights_only=False``), unpickles
    custom objects, and loads compiled AOTInductor libraries: a forged archive would run its own
    code here, in the frozen evaluation, and could write any verdict. What the template's
    harness writes needs none of that, so the archive is checked first (no compiled library, no
    pickled entry in any payload config) and loaded with every unpickling path refused: a forged
    archive is an invalid model, never code that runs.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if "/aotinductor/" in f"/{name}" or name.endswith((".so", ".dll", ".dylib")):
                    raise UnsafeExport(f"the export holds a compiled library ({name})")
                if name.endswith("_config.json") and _asks_for_pickle(archive.read(name)):
                    raise UnsafeExport(f"the export holds pickled entries ({name})")
    except zipfile.BadZipFile as exc:
        raise UnsafeExport(f"the export is not a torch.export archive ({exc})") from None
    with _no_unpickling():
        program = torch.export.load(str(path))
    _check_graph(program)
    return program.module()


# What an exported model may call: tensor maths. Ops from other namespaces (a custom op train.py
# registered, a library's) and aten's few ops that reach outside the program (a file, stdout)
# are refused: a program that reads val.bin when the evaluator runs it, with its own val-free
# behaviour in training, was kept at 0.68 bpb against 3.54 (found from outside).
_OP_NAMESPACES = {"aten", "prims", "higher_order"}
_OUTSIDE_OPS = {"from_file", "_print"}  # aten ops that read a file or write to stdout
_PLAIN_MODULES = {"_operator", "operator", "math", "builtins"}


def _check_graph(program: torch.export.ExportedProgram) -> None:
    """Refuse a program that keeps state between calls or calls anything but tensor maths.

    A buffer the program writes while it runs persists across calls of the loaded module: a
    counter let a model be causal for the causality check's calls and look ahead from the next
    call on (found from outside: kept at 0.013 bpb). The template's models write none.
    """
    signature = program.graph_signature
    mutated = [*signature.buffers_to_mutate.values(), *signature.user_inputs_to_mutate.values()]
    if mutated:
        shown = ", ".join(sorted(map(str, mutated))[:3])
        raise UnsafeExport(f"the exported program changes its own state when it runs ({shown})")
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op != "call_function":
                continue
            target = node.target
            namespace = getattr(target, "namespace", None)
            if namespace is not None:
                name = str(getattr(target, "__name__", target)).split(".")[0]
                if namespace not in _OP_NAMESPACES or name in _OUTSIDE_OPS:
                    raise UnsafeExport(f"the exported program calls {target}, which is not tensor maths")
                schema = getattr(target, "_schema", None)
                if schema is not None and schema.is_mutable:  # writes a tensor in place: a buffer
                    raise UnsafeExport(f"the exported program changes its own state when it runs ({target})")
            elif getattr(target, "__module__", None) not in _PLAIN_MODULES and not _sym_function(target):
                raise UnsafeExport(f"the exported program calls {target}, which is not tensor maths")


def _sym_function(target: object) -> bool:
    """torch's functions on symbolic sizes (torch.sym_max, ...), which dynamic shapes export."""
    name = getattr(target, "__name__", "")
    return getattr(target, "__module__", "").startswith("torch") and name.startswith(("sym_", "_sym_"))


def _asks_for_pickle(raw: bytes) -> bool:
    """Whether a payload config marks any entry ``use_pickle`` (at any depth)."""
    try:
        pending = [json.loads(raw)]
    except ValueError as exc:
        raise UnsafeExport(f"the export holds unreadable metadata ({exc})") from None
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            if item.get("use_pickle") not in (None, False):
                return True
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


class _no_unpickling:
    """Within it, torch.load only in weights_only mode, and no pickle.loads or custom-object load."""

    def __enter__(self) -> None:
        import pickle

        from torch.export.pt2_archive import _package

        self.saved = (torch.load, _package.pickle, torch._C._pickle_load_obj)
        plain_load = torch.load

        def safe_load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if kwargs.get("weights_only") is False:
                raise UnsafeExport("the export asks for a pickle to be loaded")
            kwargs["weights_only"] = True
            return plain_load(*args, **kwargs)

        def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            raise UnsafeExport("the export asks for a pickle to be loaded")

        class _Refusing:
            def __getattr__(self, name: str):  # noqa: ANN204
                if name.startswith("load") or name == "Unpickler":
                    return refuse
                return getattr(pickle, name)

        torch.load = safe_load
        _package.pickle = _Refusing()
        torch._C._pickle_load_obj = refuse

    def __exit__(self, *exc: object) -> None:
        from torch.export.pt2_archive import _package

        torch.load, _package.pickle, torch._C._pickle_load_obj = self.saved


def _eval_device(meta: dict) -> torch.device:
    if meta["device"] == "cuda":
        if not torch.cuda.is_available():
            raise fail(
                "the model was exported on CUDA but no CUDA device is available to evaluate it", where=HERE
            )
        return torch.device("cuda")
    return torch.device("cpu")


def _low_precision(device: torch.device) -> bool:
    """Whether the causality checks allow for bfloat16's rounding: on a GPU only.

    model.json's ``autocast`` is written by the training process, and the CUDA autocast it asks
    for leaves a CPU's ops in float32: trusting it there widened the tolerance tenfold for a model
    computing in float32, room for a look-ahead that gained 0.046 bpb (found from outside).
    """
    return device.type != "cpu"


def _forward(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).float()


class _Autocast(torch.nn.Module):
    """Runs an exported program under bf16 autocast, the context it was traced in."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return self.inner(x)


def _rows(tokens: np.ndarray, first_row: int, count: int, device: torch.device) -> torch.Tensor:
    """`count` consecutive rows of SEQ_LEN + 1 tokens (input + shifted target), padded to a full batch."""
    starts = (first_row + np.minimum(np.arange(EVAL_BATCH_SIZE), count - 1)) * SEQ_LEN
    chunk = tokens[starts[:, None] + np.arange(SEQ_LEN + 1)].astype(np.int64)
    return torch.from_numpy(chunk).to(device)


def _check_logits(logits: torch.Tensor) -> str | None:
    want = (EVAL_BATCH_SIZE, SEQ_LEN, VOCAB_SIZE)
    if tuple(logits.shape) != want:
        return f"model output has shape {list(logits.shape)}, expected {list(want)}"
    if not torch.isfinite(logits).all():
        return "model output has non-finite logits"
    return None


def bits_per_byte(
    model: torch.nn.Module,
    tokens: np.ndarray,
    token_bytes: torch.Tensor,
    device: torch.device,
    low_precision: bool = False,
) -> tuple[float, int]:
    """Summed cross-entropy (nats) over summed target bytes, in bits; zero-byte targets skipped.

    Scores the first EVAL_TOKENS tokens (fewer only if the split is smaller) as independent rows
    of SEQ_LEN; returns (bits per byte, tokens scored). Every batch it scores is also checked for
    causality (``scored_batch_violation``): NotCausal when one looked ahead.
    """
    rng = _secret_rng()
    n_rows = min(EVAL_TOKENS, len(tokens) - 1) // SEQ_LEN
    if n_rows < 1:
        raise fail(
            f"the split has {len(tokens)} tokens, fewer than one row of {SEQ_LEN}; run `{PREPARE_COMMAND}`",
            where=HERE,
        )
    token_bytes = token_bytes.to(device)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.float64, device=device)
    for first in range(0, n_rows, EVAL_BATCH_SIZE):
        count = min(EVAL_BATCH_SIZE, n_rows - first)
        chunk = _rows(tokens, first, count, device)
        logits = _forward(model, chunk[:, :-1])
        problem = _check_logits(logits)
        if problem:
            raise InvalidModel(problem)
        problem = scored_batch_violation(model, chunk[:, :-1], logits, rng, device, low_precision)
        if problem:
            raise NotCausal(f"model is not causal: {problem}")
        y = chunk[:count, 1:].reshape(-1)
        loss = F.cross_entropy(logits[:count].reshape(-1, VOCAB_SIZE), y, reduction="none")
        weight = token_bytes[y]
        nats += (loss.double() * (weight > 0)).sum()
        nbytes += weight.sum()
    return (nats / (math.log(2) * nbytes)).item(), n_rows * SEQ_LEN


class InvalidModel(Exception):
    """The exported model breaks a rule of the evaluation (causality, output shape, finiteness)."""


class NotCausal(InvalidModel):
    """A scored batch's predictions changed when only what they must not see changed."""


def _secret_rng() -> np.random.Generator:
    """Draws from the operating system's randomness: no seed train.py could read and steer around."""
    return np.random.default_rng(int.from_bytes(os.urandom(8), "little"))


def scored_batch_violation(
    model: torch.nn.Module,
    x: torch.Tensor,
    logits: torch.Tensor,
    rng: np.random.Generator,
    device: torch.device,
    low_precision: bool = False,
) -> str | None:
    """None if the predictions ``logits`` that scored the batch ``x`` stand when what they must not
    see changes.

    ``causality_violation`` checks the first rows of val only, and a model can tell them apart:
    val begins with a document, a scored batch after them almost never does. A model causal on
    that batch alone (and wherever the check's random tokens show) and looking ahead on every
    other one passed, at 1.12 bpb against 8.7 for the same model made causal (found from
    outside). So every scored batch gets one trial of its own, with secret draws: each row keeps
    a prefix and the rest becomes random tokens, one row keeps all of it, and the rows are
    shuffled so that the whole row gets other neighbours (a row's last position, which no prefix
    cut reaches, must not read the next row, whose first token is its target). The kept
    positions must predict what they predicted when scored. One more forward pass per batch.
    """
    rows, length = x.shape
    cut = rng.integers(0, length - 1, size=rows)
    whole = int(rng.integers(rows))
    cut[whole] = length - 1
    keep = torch.arange(length, device=device)[None, :] <= torch.from_numpy(cut).to(device)[:, None]
    noise = torch.from_numpy(rng.integers(0, VOCAB_SIZE, size=tuple(x.shape))).to(device)
    order = _new_neighbours(x[:, 0].cpu().numpy(), whole, rng)
    back = torch.from_numpy(np.argsort(order)).to(device)
    trial = torch.where(keep, x, noise)[torch.from_numpy(order).to(device)]
    base = _log_probs(logits)
    changed = _log_probs(_forward(model, trial))[back]
    over, diff = _beyond_tolerance(changed, base, low_precision)
    over = torch.where(keep, over, 0.0).amax(dim=1)
    worst = int(over.argmax())
    if over[worst].item() <= 0:
        return None
    return (
        f"predictions at positions <= {int(cut[worst])} of a scored row changed by "
        f"{torch.where(keep, diff, 0.0)[worst].amax().item():.3g} when only later tokens or other rows changed"
    )


def _new_neighbours(first: np.ndarray, whole: int, rng: np.random.Generator, tries: int = 32) -> np.ndarray:
    """A secret order of the rows in which the row kept whole has neighbours whose first tokens
    differ from its old neighbours' (where the batch has such rows), so that a position reading
    a neighbour sees a change. A rotation (the first version) keeps every neighbour but one: a
    model reading the next row's first token passed about half the time (found in review)."""
    rows = len(first)
    order = rng.permutation(rows)
    for _ in range(tries):
        at = int(np.flatnonzero(order == whole)[0])
        if all(
            not (0 <= at + d < rows and 0 <= whole + d < rows) or first[order[at + d]] != first[whole + d]
            for d in (-1, 1)
        ):
            break
        order = rng.permutation(rows)
    return order


def _beyond_tolerance(
    changed: torch.Tensor, base: torch.Tensor, low_precision: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position: how far the largest change of a log-probability exceeds its tolerance (> 0: a
    violation), and the largest change itself.

    In float32 each log-probability gets its own tolerance, 1e-4 x (1 + |log p|): one scaled by
    the batch's largest |log p| let a model pin one token at the floor (-30) to widen it 31x for
    every other, room for a look-ahead of about 0.003 nats per token (found from outside). Under
    bfloat16 (a GPU) the tolerance is still the batch's, 1e-3 x (1 + max |log p|): how far an
    honest bf16 model's log-probabilities move from one call to the next has not been measured
    entry by entry, so the tighter rule could reject honest models there. ``changed`` is
    overwritten: callers pass log-probabilities made for this check alone.
    """
    delta = changed.sub_(base).abs_()  # in place: at the gpu size's vocabulary each is 0.5 GB
    largest = delta.amax(dim=-1)
    if low_precision:
        return largest - 1e-3 * (1.0 + base.abs().max().item()), largest
    return delta.sub_(base.abs().mul_(1e-4).add_(1e-4)).amax(dim=-1), largest


def causality_violation(
    model: torch.nn.Module, tokens: np.ndarray, device: torch.device, low_precision: bool = False
) -> str | None:
    """None if predictions at position t depend only on tokens 0..t of their own row.

    A leak can only be seen where the tokens it reads change while the positions it feeds are
    compared, so the check samples positions, and the samples are secret: drawn from the
    operating system's randomness at each evaluation, never from a seed train.py could read in
    this frozen file and steer around. Each row-wise trial keeps a random prefix 0..t_r of every
    row, replaces the rest of each row by random tokens, and compares the prefixes' predictions
    (CAUSAL_TRIALS x EVAL_BATCH_SIZE positions in all); the cross-row trial keeps a prefix of one
    row and replaces every other row entirely (a row must not see the batch).

    Predictions are compared as log-probabilities (floored at -30, where probability ends), not
    raw logits: a constant added to every logit changes no prediction, and must not widen the
    tolerance either. The tolerance is float32 rounding (bfloat16's on a GPU: ``_low_precision``).
    """
    rng = _secret_rng()
    x = _rows(tokens, 0, EVAL_BATCH_SIZE, device)[:, :-1]
    logits = _forward(model, x)
    problem = _check_logits(logits)
    if problem:
        raise InvalidModel(problem)
    base = _log_probs(logits)
    positions = torch.arange(SEQ_LEN, device=device)[None, :]
    for _ in range(CAUSAL_TRIALS):
        cut = torch.from_numpy(rng.integers(0, SEQ_LEN - 1, size=EVAL_BATCH_SIZE)).to(device)
        keep = positions <= cut[:, None]
        noise = torch.from_numpy(rng.integers(0, VOCAB_SIZE, size=x.shape)).to(device)
        changed = _log_probs(_forward(model, torch.where(keep, x, noise)))
        over, diff = _beyond_tolerance(changed, base, low_precision)
        over = torch.where(keep, over, -1.0).amax(dim=1)
        worst = int(over.argmax())
        if not over[worst].item() <= 0:  # NaN included
            return (
                f"predictions at positions <= {int(cut[worst])} changed by "
                f"{torch.where(keep, diff, 0.0)[worst].amax().item():.3g} when only later tokens changed"
            )
    row, t = int(rng.integers(EVAL_BATCH_SIZE)), int(rng.integers(SEQ_LEN - 1))
    other = torch.from_numpy(rng.integers(0, VOCAB_SIZE, size=x.shape)).to(device)
    other[row, : t + 1] = x[row, : t + 1]
    changed = _log_probs(_forward(model, other))[row : row + 1, : t + 1]
    over, diff = _beyond_tolerance(changed, base[row : row + 1, : t + 1], low_precision)
    if not over.max().item() <= 0:
        return (
            f"predictions at positions <= {t} changed by {diff.max().item():.3g} when only other rows changed"
        )
    return None


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).clamp(min=-30.0)


def _digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _write_metrics(run_dir: Path, metrics: dict) -> None:
    tmp = run_dir / (METRICS_FILE + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=1))
    os.replace(tmp, run_dir / METRICS_FILE)


def evaluate(run_dir: Path, started: float) -> int:
    """Score the exported model in ``run_dir`` (see _evaluate); gradients stay off only inside."""
    with torch.no_grad():  # not a global switch: callers in the same process keep autograd
        return _evaluate(run_dir, started)


def _evaluate(run_dir: Path, started: float) -> int:
    """The frozen evaluation: metrics.json with val_bpb, holdout_bpb and causality; the exit code."""
    metrics_path = run_dir / METRICS_FILE
    if metrics_path.exists():
        # Written by someone other than this evaluation: keep it aside, never read it as a result.
        os.replace(metrics_path, run_dir / "metrics.preexisting.json")
        _write_metrics(run_dir, {"invalid": "metrics.json existed before evaluation"})
        print("invalid: metrics.json existed before evaluation (kept as metrics.preexisting.json)")
        return EXIT_INVALID
    meta_path = run_dir / EXPORT_META
    if not meta_path.exists() or not (run_dir / EXPORT_FILE).exists():
        raise fail(f"no exported model in {run_dir}: train.py must call harness.finish(model)", where=HERE)
    meta = json.loads(meta_path.read_text())
    device = _eval_device(meta)
    warnings.filterwarnings("ignore", message="The given buffer is not writable")  # torch.export.load
    try:
        model = load_program(run_dir / EXPORT_FILE)
    except UnsafeExport as exc:
        _write_metrics(run_dir, {"invalid": str(exc)})
        print(f"invalid: {exc}")
        return EXIT_INVALID
    if meta.get("autocast") == "bfloat16":
        model = _Autocast(model)
    token_bytes = get_tokenizer().token_bytes
    val, holdout = load_split("val"), load_split("holdout")
    try:
        low_precision = _low_precision(device)
        problem = causality_violation(model, val, device, low_precision)
        if problem:
            raise InvalidModel(f"model is not causal: {problem}")
        val_bpb, n_tokens = bits_per_byte(model, val, token_bytes, device, low_precision)
        holdout_bpb, _ = bits_per_byte(model, holdout, token_bytes, device, low_precision)
    except InvalidModel as exc:
        verdict = {"invalid": str(exc)}
        if str(exc).startswith("model is not causal"):
            verdict["causal"] = False
        _write_metrics(run_dir, verdict)
        print(f"invalid: {exc}")
        return EXIT_INVALID
    seconds = time.perf_counter() - started
    metrics = {
        "val_bpb": val_bpb,
        "holdout_bpb": holdout_bpb,
        "causal": True,
        "eval_seconds": round(seconds, 3),
        "eval_tokens": n_tokens,
        # The scored files live outside the workspace: the harness checks they never change. The
        # bytes per token (the BPE tokenizer's file in the same cache) are the metric's denominator.
        "data_sha256": _digest(val, holdout, token_bytes.cpu().numpy()),
    }
    _write_metrics(run_dir, metrics)
    print(f"val_bpb: {val_bpb:.6f}")
    print(f"eval_seconds: {seconds:.2f}")
    return 0


# ---------------------------------------------------------------------------------------------
# The progress evaluator: `python evaluation.py --follow`

POLL_SECONDS = 0.05  # how often progress.jsonl and progress.done are looked at (a stat and a read)
FOLLOW_NICE = 10  # lower CPU priority than training, so the evaluator never holds it back
RECORD_KEYS = ("step", "seconds", "tokens", "flops", "fraction", "export")


class _Target:
    """NIGHTLAB_TARGET_METRIC and NIGHTLAB_TARGET_DIRECTION: when a checkpoint is good enough."""

    def __init__(self) -> None:
        raw = os.environ.get("NIGHTLAB_TARGET_METRIC", "").strip()
        try:
            self.value = float(raw) if raw else None
        except ValueError:
            raise fail(f"NIGHTLAB_TARGET_METRIC={raw!r} is not a number", where=HERE) from None
        direction = os.environ.get("NIGHTLAB_TARGET_DIRECTION", "").strip() or "minimize"
        if direction not in ("minimize", "maximize"):
            raise fail(f"NIGHTLAB_TARGET_DIRECTION={direction!r} is not minimize or maximize", where=HERE)
        self.maximize = direction == "maximize"

    def reached(self, value: float) -> bool:
        if self.value is None:
            return False
        return value >= self.value if self.maximize else value <= self.value


class _NewLines:
    """The complete lines appended to a file since the last call (a partial last line waits)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.rest = path, 0, b""

    def read(self) -> list[str]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.rest = (self.rest + data).split(b"\n")
        return [line.decode("utf-8", errors="replace") for line in lines if line.strip()]


def signed(point: dict) -> dict:
    """``point`` with an HMAC of its content under NIGHTLAB_PROGRESS_KEY, the key nightlab gives
    this process and not the training process (which can write the same file): nightlab drops
    a point without a valid signature and makes the run invalid. Unchanged without a key."""
    import hmac

    key = os.environ.get("NIGHTLAB_PROGRESS_KEY")
    if not key:
        return point
    body = json.dumps(point, sort_keys=True).encode()
    return {**point, "sig": hmac.new(key.encode(), body, "sha256").hexdigest()}


class _Follower:
    """Scores checkpoints one by one; holds the program of the latest traced one in memory."""

    def __init__(self, run_dir: Path, target: _Target) -> None:
        self.run_dir, self.target = run_dir, target
        # Where the scores go: nightlab's folder out of the training process's sight, else the run dir.
        self.scores = Path(os.environ.get(SCORES_VARIABLE) or run_dir)
        self.progress_dir = (run_dir / PROGRESS_DIR).resolve()
        val = load_split("val")  # never holdout
        self.val = val[: PROGRESS_EVAL_TOKENS + 1]
        # The causality check's rows: the first batch of val, as the final evaluation checks.
        self.check_rows = val[: EVAL_BATCH_SIZE * SEQ_LEN + 1]
        self.token_bytes = get_tokenizer().token_bytes
        self.programs: dict[str, torch.nn.Module] = {}  # checkpoint name -> its loaded program
        self.stopped = (run_dir / STOP_FILE).exists()
        self.refused = False  # a checkpoint failed a check: the run is invalid, nothing more is scored

    def handle(self, line: str) -> None:
        """Score one line of progress.jsonl; anything wrong with it is one line in the log."""
        try:
            record = json.loads(line)
            name = str(record["export"])
            folder = self._folder(name)
        except (ValueError, KeyError, TypeError) as exc:
            print(
                f"progress: skipped a line of {PROGRESS_FILE} ({exc.__class__.__name__}: {exc})", flush=True
            )
            return
        scored = {key: record[key] for key in RECORD_KEYS if key in record}
        started = time.perf_counter()
        try:
            if self.refused:
                print(f"progress: {name} not scored (an earlier checkpoint was refused)", flush=True)
                return
            model, device, low_precision = self._load(name, folder)
            # The checks the final export gets, with this checkpoint's weights: a look-ahead the
            # weights switch on (a gate buffer) shows only in the checkpoints that carry them.
            problem = causality_violation(model, self.check_rows, device, low_precision)
            if problem:
                raise UnsafeExport(f"model is not causal: {problem}")
            value, _ = bits_per_byte(model, self.val, self.token_bytes, device, low_precision)
        except (UnsafeExport, NotCausal) as exc:
            self._refuse(name, scored, f"{exc}")
            return
        except Exception as exc:  # a half-written or broken checkpoint never stops the evaluator
            first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
            print(f"progress: {name} skipped ({exc.__class__.__name__}: {first})", flush=True)
            return
        finally:  # loaded or unusable, its files can go (a loaded program stays in memory)
            shutil.rmtree(folder, ignore_errors=True)
        self._write({**scored, "val_bpb": value})
        print(
            f"progress: {name} | step {record.get('step')} | val_bpb {value:.6f} | "
            f"scored in {time.perf_counter() - started:.2f} s",
            flush=True,
        )
        if not self.stopped and self.target.reached(value):
            (self.run_dir / STOP_FILE).touch()
            self.stopped = True
            print(
                f"progress: target {self.target.value:g} reached at {name}: {STOP_FILE} created", flush=True
            )

    def _refuse(self, name: str, scored: dict, reason: str) -> None:
        """Record (signed) that checkpoint ``name`` failed a check: nightlab makes the run invalid
        with this reason, as it does for a final export that fails it."""
        self.refused = True
        step = f" (step {scored['step']})" if "step" in scored else ""
        self._write({**scored, "invalid": f"checkpoint {name}{step}: {reason}"})
        print(f"progress: {name} refused: {reason}", flush=True)

    def _write(self, point: dict) -> None:
        with (self.scores / PROGRESS_EVAL_FILE).open("a") as fh:
            fh.write(json.dumps(signed(point)) + "\n")

    def _folder(self, name: str) -> Path:
        folder = (self.run_dir / name).resolve()
        if folder.parent != self.progress_dir:  # never load (or delete) anything outside progress/
            raise ValueError(f"export {name!r} is not a folder of {PROGRESS_DIR}/")
        return folder

    def _load(self, name: str, folder: Path) -> tuple[torch.nn.Module, torch.device, bool]:
        """The checkpoint's model, its device, and whether it computes in low precision.

        A program is checked once, when it is loaded (``load_program``: the graph check, which
        reads the graph and never the weights); the weight files that follow are loaded into it
        and change no op of it. UnsafeExport when the program is refused."""
        meta = json.loads((folder / EXPORT_META).read_text())
        device = _eval_device(meta)
        if meta.get("format") == "weights":
            program = self.programs.get(str(meta.get("program")))
            if program is None:
                raise InvalidModel(f"its program {meta.get('program')} was not loaded")
            weights = torch.load(folder / WEIGHTS_FILE, map_location=device, weights_only=True)
            program.load_state_dict(weights, strict=True)
        else:
            program = load_program(folder / EXPORT_FILE)
            self.programs = {name: program}  # the weights that follow belong to this program
        model = _Autocast(program) if meta.get("autocast") == "bfloat16" else program
        return model, device, _low_precision(device)


def follow(run_dir: Path) -> int:
    """`python evaluation.py --follow`: score the run's checkpoints until progress.done appears;
    then, when warm and asked (progress.final), the final evaluation."""
    target = _Target()
    checkpoints = bool(
        os.environ.get("NIGHTLAB_PROGRESS_EVERY") or os.environ.get("NIGHTLAB_EVAL_INTERVAL_SECONDS")
    )
    warm = os.environ.get("NIGHTLAB_WARM_EVALUATE") == "1"
    if not checkpoints and not warm:
        print("progress: no checkpoints asked for (NIGHTLAB_PROGRESS_EVERY, NIGHTLAB_EVAL_INTERVAL_SECONDS)")
        return 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU training keeps the cores; on CUDA the GPU does the work
    warnings.filterwarnings("ignore", message="The given buffer is not writable")  # torch.export.load
    try:  # what torch.export.load imports on first use (seconds): now, not at the first checkpoint
        importlib.import_module("torch._export.serde.serialize")
    except ImportError:
        pass
    get_tokenizer()  # loaded now, beside training, for the checkpoints and the final evaluation
    follower = _Follower(run_dir, target) if checkpoints else None
    # Checkpoints are scored on a thread of low priority (training keeps the CPU); the final
    # evaluation runs on this one at normal priority, with all the threads torch had.
    scorer = threading.Thread(target=_score_checkpoints, args=(run_dir, follower, warm), name="checkpoints")
    scorer.start()
    scorer.join()
    shutil.rmtree(run_dir / PROGRESS_DIR, ignore_errors=True)
    if not (warm and (run_dir / FINAL_FILE).exists()):
        return 0
    torch.set_num_threads(threads)
    print("final evaluation (warm, in the progress evaluator)", flush=True)
    return evaluate(run_dir, started=time.perf_counter())


def _score_checkpoints(run_dir: Path, follower: _Follower | None, warm: bool) -> None:
    """Score each checkpoint as progress.jsonl lists it, until progress.done appears."""
    _lower_this_thread(warm)
    lines = _NewLines(run_dir / PROGRESS_FILE)
    while True:
        done = (run_dir / DONE_FILE).exists()  # looked at first: every line written before it is read
        if follower is not None:
            with torch.no_grad():
                for line in lines.read():
                    follower.handle(line)
        if done or not run_dir.is_dir():
            return
        time.sleep(POLL_SECONDS)


def _lower_this_thread(warm: bool) -> None:
    """FOLLOW_NICE for the calling thread only (Linux: a thread's nice value is its own), so the
    final evaluation on the main thread keeps normal priority; elsewhere the whole process's,
    unless it is to do the final evaluation (a nice value cannot be lowered back)."""
    try:
        if sys.platform.startswith("linux"):
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + FOLLOW_NICE))
        elif not warm:
            os.nice(FOLLOW_NICE)
    except OSError:
        pass


def main() -> int:
    """`python evaluation.py`: score the model exported to NIGHTLAB_RUN_DIR (./run by default);
    `--follow`: score its progress checkpoints while it trains."""
    args = sys.argv[1:]
    if args == ["--follow"]:
        return follow(get_run_dir())
    if args:
        print(f"{HERE}: unknown arguments {' '.join(args)}", file=sys.stderr)
        print("usage: python evaluation.py [--follow]", file=sys.stderr)
        return 2
    return evaluate(get_run_dir(), started=T_IMPORT)


if __name__ == "__main__":
    exit_now(main())  # skips the interpreter's teardown (about 1 s): see data.py
