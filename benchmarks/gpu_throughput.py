"""The gpu size at full speed, measured in one call: tokens/s, MFU, memory, start-up, equal maths.

Everything issue 16 asks a GPU machine to show, in one command that writes one JSON file (and
prints a summary), stage by stage, so that a run cut short still reports what it finished:

    python benchmarks/gpu_throughput.py --out "$OUT/gpu_throughput.json"       # on a GPU
    python benchmarks/gpu_throughput.py --device cpu --out /tmp/gpu_throughput.json  # rehearsal

Stages, in this order (the most wanted first):

1. environment: torch, the GPU's name, the dense bf16 peak train.py divides by for MFU;
2. equal maths on the device: one sliding-window layer at the gpu shape under bf16 autocast,
   FlexAttention (compiled) and SDPA with the mask, each against an fp32 reference, forward and
   gradients; then a small whole model, one compiled training step, FlexAttention against SDPA;
3. data: a workspace of the gpu size (sizes.toml applied as `nightlab init --size gpu` does),
   the synthetic corpus and a BPE tokenizer trained on it (the machine has no network), as the
   first H200 measurement in docs/BENCHMARKS.md used;
4. train.py runs, each its own process: "SSSL" with FlexAttention from an empty compile cache
   (first run of its shapes, val_bpb), the same again (second run: the cache is warm), "L"
   (all full-context layers), and "SSSL" through SDPA with the mask (the old path; val_bpb at
   the same steps and seed: training is unchanged);
5. the attention kernels alone at the gpu shape: FlexAttention and masked SDPA windows, causal
   SDPA, forward and backward (CPU: forward only).

Each train.py run reports tokens/s and MFU over its timed steps, peak memory, start-up (process
start to the first step), warm-up (the untimed steps, compilation included), the time after
training (export, evaluation) and the compile-cache counters. `--device cpu` runs the same code
at the cpu size with torch.compile forced on, to rehearse the script and to measure what the
compile cache saves on CPU (FlexAttention is not used there: it has no backward on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "src" / "nightlab" / "templates" / "gpt"
sys.path.insert(0, str(ROOT / "src"))
from nightlab.code.knobs import set_knobs  # noqa: E402  (stdlib only: runs where nightlab is not installed)
from nightlab.workspace.init import apply_size  # noqa: E402

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

# Offline data, per size: the synthetic corpus (no network on the device machine). For gpu, the
# settings of the first H200 measurement, so that its figures and these compare.
DATA = {
    "gpu": {
        "DATASET": "synthetic",
        "SYNTHETIC_TRAIN_BYTES": 40000000,
        "TOKENIZER_TRAIN_CHARS": 10000000,
        "EVAL_TOKENS": 524288,
    },
    "cpu": {"DATASET": "synthetic", "SYNTHETIC_TRAIN_BYTES": 2000000, "EVAL_TOKENS": 8192},
}
# train.py as a child process, printing torch's compile-cache counters when it ends.
RUNNER = """
import json, runpy
import torch
from torch._dynamo.utils import counters
try:
    runpy.run_path("train.py", run_name="__main__")
finally:
    cache = {k: v for g in ("aot_autograd", "inductor") for k, v in counters[g].items() if "cache" in k}
    print("compile cache: " + json.dumps(cache), flush=True)
"""


class Report:
    """The JSON file, rewritten after every stage; stages that would start too late are skipped."""

    def __init__(self, path: Path, max_seconds: float) -> None:
        self.path, self.data = path, {"stages_done": []}
        self.deadline = time.perf_counter() + max_seconds
        path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, stage: str, result: object) -> None:
        self.data[stage] = result
        self.data["stages_done"].append(stage)
        self.path.write_text(json.dumps(self.data, indent=1))
        print(f"== {stage}: {json.dumps(result)[:2000]}", flush=True)


def make_workspace(ws: Path, size: str, device: str) -> None:
    """The template at `size` (sizes.toml, as `nightlab init --size` applies it) with offline data."""
    shutil.copytree(TEMPLATE, ws, ignore=shutil.ignore_patterns("__pycache__", "run"))
    files = {p.name: p.read_text() for p in ws.iterdir() if p.suffix in (".py", ".toml")}
    files = apply_size(files, tomllib.loads(files["sizes.toml"]), size)
    files["data.py"] = set_knobs(files["data.py"], DATA[size], "data.py")
    if device == "cpu":  # the rehearsal compiles on CPU too: the compile cache is what it measures
        files["train.py"] = set_knobs(files["train.py"], {"COMPILE": "on", "DEVICE": "cpu"}, "train.py")
    for name, text in files.items():
        (ws / name).write_text(text)


def set_train_knobs(ws: Path, base: str, knobs: dict[str, object]) -> None:
    (ws / "train.py").write_text(set_knobs(base, knobs, "train.py"))


def run_train(ws: Path, name: str, steps: int, evaluate: bool, compile_cache: Path, env: dict) -> dict:
    """One `python train.py` (through RUNNER) under a step budget; what its output says."""
    run_dir = ws.parent / "runs" / name
    run_env = {k: v for k, v in env.items() if not k.startswith("NIGHTLAB_BUDGET_")}
    run_env.update(
        NIGHTLAB_RUN_DIR=str(run_dir),
        NIGHTLAB_SEED="1",
        NIGHTLAB_BUDGET_STEPS=str(steps),
        NIGHTLAB_EVAL_SEPARATE="0" if evaluate else "1",
        TORCHINDUCTOR_CACHE_DIR=str(compile_cache),
        TRITON_CACHE_DIR=str(compile_cache / "triton"),
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER], cwd=ws, env=run_env, capture_output=True, text=True, timeout=420
    )
    wall = time.perf_counter() - t0
    out = proc.stdout
    result: dict = {"returncode": proc.returncode, "wall_s": round(wall, 1)}
    header = next((line for line in out.splitlines() if line.startswith("device ")), None)
    result["header"] = header
    if proc.returncode != 0 or "\n---\n" not in out:
        result["tail"] = (out + proc.stderr)[-3000:]
        return result
    summary = {}
    for line in out.rsplit("\n---\n", 1)[1].splitlines():
        if m := re.fullmatch(r"(\w+): +([-\d.e+]+)", line.strip()):  # RUNNER's cache line follows
            summary[m[1]] = float(m[2])
    result["summary"] = summary
    if m := re.search(r"^start-up ([\d.]+) s \| warm-up ([\d.]+) s in (\d+) untimed", out, re.M):
        startup, warmup, untimed = float(m[1]), float(m[2]), int(m[3])
        result.update(startup_s=startup, warmup_s=warmup)
        batch = int(re.search(r"batch (\d+) tokens", header or "")[1])
        timed = (summary["num_steps"] - untimed) * batch
        if summary["training_seconds"] > 0:
            result["tokens_per_s"] = round(timed / summary["training_seconds"])
    if m := re.search(r"^compile cache: (\{.*\})$", out, re.M):
        result["compile_cache"] = json.loads(m[1])
    # Outside training: start-up and warm-up before it; export (and evaluation) after it.
    result["before_training_s"] = round(summary["total_seconds"] - summary["training_seconds"], 1)
    result["after_training_s"] = round(wall - summary["total_seconds"], 1)
    result["outside_training_s"] = round(wall - summary["training_seconds"], 1)
    return result


def equal_maths(ws: Path, device: str) -> dict:
    """FlexAttention against SDPA with the mask, on the device, at the workspace's shapes."""
    import torch

    sys.path.insert(0, str(ws))
    import data
    import train

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    T = data.SEQ_LEN
    out: dict = {}
    train.OUT_PROJ_INIT_SCALE = 1.0  # zero-initialised projections would hide attention entirely
    torch.manual_seed(0)
    with dev:
        model = train.GPT(data.VOCAB_SIZE, T)
    attn = model.blocks[0].attn  # an S layer
    batch = 8 if cuda else 2
    x = torch.randn(batch, T, model.width, device=dev)
    ve = torch.randn(batch, T, attn.n_kv_head * train.HEAD_DIM, device=dev) if attn.ve_gate else None

    def layer(flex: bool, bf16: bool) -> tuple:
        """Output and gradients (x and the layer's weights; CPU: output only) of one path."""
        attn.block_mask = train.sliding_window_block_mask(T, attn.window, dev) if flex else None
        torch._dynamo.reset()
        fn = torch.compile(attn, dynamic=False) if flex or bf16 else attn  # flex runs compiled only
        xi = x.clone().requires_grad_(cuda)
        attn.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            y = fn(xi, ve, model.cos, model.sin).float()
        if not cuda:
            return y.detach(), []
        y.square().mean().backward()
        return y.detach(), [xi.grad, *(p.grad for p in attn.parameters())]

    def error(got: tuple, ref: tuple) -> dict:
        """Relative L2 errors: of the output, and the largest over the gradients."""

        def rel(a: torch.Tensor, b: torch.Tensor) -> float:
            diff, size = (a.float() - b.float()).norm().item(), b.float().norm().item()
            return diff / size if size > 0 else diff

        grads = [rel(a, b) for a, b in zip(got[1], ref[1], strict=True)]
        return {"out": rel(got[0], ref[0]), "grads_max": max(grads, default=None)}

    out["layer"] = {"shape": [batch, T, model.width], "window": attn.window}
    if cuda:  # bf16 as training runs it, each path against fp32 SDPA with the mask
        ref = layer(flex=False, bf16=False)
        out["layer"]["sdpa_bf16_vs_fp32"] = error(layer(flex=False, bf16=True), ref)
        out["layer"]["flex_bf16_vs_fp32"] = error(layer(flex=True, bf16=True), ref)
    else:  # CPU: FlexAttention's compiled kernel has a forward only
        with torch.no_grad():
            ref = layer(flex=False, bf16=False)
            out["layer"]["flex_compiled_vs_sdpa_fp32"] = error(layer(flex=True, bf16=False), ref)
    if cuda:  # a small model (depth 4, "SSSL"), one compiled bf16 training step: flex against SDPA
        idx = torch.randint(0, data.VOCAB_SIZE, (4, T), device=dev)
        steps, depth = [], train.DEPTH
        for use_flex in (False, True):
            torch.manual_seed(0)
            train.DEPTH = 4
            with dev:
                small = train.GPT(data.VOCAB_SIZE, T)
            train.DEPTH = depth
            if use_flex:
                small.use_flex_attention()
            torch._dynamo.reset()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.compile(small, dynamic=False)(idx, idx)
            loss.backward()
            steps.append((loss.detach(), [p.grad for p in small.parameters()]))
        out["model_step"] = {"loss_sdpa": steps[0][0].item(), "loss_flex": steps[1][0].item()}
        out["model_step"]["flex_vs_sdpa"] = error(steps[1], steps[0])
    return out


def kernels(ws: Path, device: str) -> dict:
    """Attention alone at the workspace's shape: ms per call and useful TFLOP/s.

    CUDA: bf16, forward and backward. CPU: fp32, forward only (FlexAttention has no backward
    there), which is what decides that CPU keeps SDPA.
    """
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ws))
    import data
    import train

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    T, D = data.SEQ_LEN, train.HEAD_DIM
    H = train.model_width(train.DEPTH, train.ASPECT_RATIO, D) // D
    B = max(1, (32768 if cuda else 4096) // T)
    window = int(T * train.SHORT_WINDOW_FRAC)
    dtype = torch.bfloat16 if cuda else torch.float32
    q, k, v = (torch.randn(B, H, T, D, device=dev, dtype=dtype, requires_grad=cuda) for _ in range(3))
    i = torch.arange(T, device=dev)
    mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
    block_mask = train.sliding_window_block_mask(T, window, dev)
    flex = torch.compile(train.flex_attention, dynamic=False)
    cases = {
        "flex_window": (lambda: flex(q, k, v, block_mask=block_mask), window),
        "sdpa_masked_window": (lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), window),
        "sdpa_causal": (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), T),
    }

    def call(fn) -> None:
        y = fn()
        if cuda:
            y.sum().backward()

    out = {"shape": [B, H, T, D], "window": window, "dtype": str(dtype), "backward": cuda}
    with torch.set_grad_enabled(cuda):
        for name, (fn, span) in cases.items():
            for _ in range(3):
                call(fn)
            times = []
            for _ in range(5):  # the median of 5 timings of 5 calls
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(5):
                    call(fn)
                if cuda:
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) / 5)
            seconds = sorted(times)[2]
            useful = (12 if cuda else 4) * H * D * train.mean_span(span, T) * B * T  # as MFU counts it
            out[name] = {"ms": round(1e3 * seconds, 3), "tflops": round(useful / seconds / 1e12, 3)}
    return out


def flop_counts(ws: Path) -> dict:
    """FLOPs per token per window pattern: train.py's count (attended keys) and nanochat's.

    nanochat and autoresearch count 12 * width * min(window, T) per layer, the whole window
    rather than the causal part a query attends to, so their MFU for the same run is higher by
    the ratio given here; the issue's 40 % goal comes from autoresearch's figure.
    """
    import torch

    sys.path.insert(0, str(ws))
    import data
    import train

    out, pattern = {}, train.WINDOW_PATTERN
    for window_pattern in ("SSSL", "L"):
        train.WINDOW_PATTERN = window_pattern
        with torch.device("meta"):
            model = train.GPT(data.VOCAB_SIZE, data.SEQ_LEN)
        ours = model.flops_per_token(data.SEQ_LEN)
        attention = sum(12 * model.width * train.mean_span(w, data.SEQ_LEN) for w in model.windows)
        nanochat = ours - attention + sum(12 * model.width * min(w, data.SEQ_LEN) for w in model.windows)
        out[window_pattern] = {"ours": ours, "nanochat_style": nanochat, "ratio": round(nanochat / ours, 4)}
    train.WINDOW_PATTERN = pattern
    return out


def stage(report: Report, name: str, work, *args: object) -> object:
    """Run one stage; a failure is recorded (and the next stages still run), not raised."""
    if time.perf_counter() > report.deadline:
        report.add(name, {"skipped": "out of time (--max-seconds)"})
        return {"error": "skipped"}
    try:
        result = work(*args)
    except Exception as exc:  # noqa: BLE001 - one call on a lent GPU: report, never stop early
        result = {"error": f"{type(exc).__name__}: {exc}"[:1000], "traceback": traceback.format_exc()[-3000:]}
    report.add(name, result)
    return result


def prepare_data(ws: Path, env: dict, size: str) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "prepare.py"], cwd=ws, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"prepare.py failed: {(proc.stdout + proc.stderr)[-2000:]}")
    return {"prepare_s": round(time.perf_counter() - t0, 1), **DATA[size]}


def print_table(report: Report) -> None:
    """The runs as a markdown table, for docs/BENCHMARKS.md."""
    print(
        "| run | tokens/s | MFU % (nanochat's count) | peak MB | start-up s | warm-up s | after s | val_bpb | cache |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    counts = report.data.get("flops_per_token", {})
    for key, run in report.data.items():
        if key.startswith("run_") and "summary" in run:
            memory = run["summary"].get("peak_vram_mb", run["summary"].get("peak_memory_mb"))
            hits = {k: v for k, v in run.get("compile_cache", {}).items() if k.endswith(("hit", "bypass"))}
            pattern = report.data["patterns"][key]
            mfu, ratio = run["summary"].get("mfu_percent"), counts.get(pattern, {}).get("ratio")
            mfu = f"{mfu} ({mfu * ratio:.1f})" if mfu is not None and ratio else mfu
            cells = [key[4:], run.get("tokens_per_s"), mfu, memory]
            cells += [run.get("startup_s"), run.get("warmup_s"), run["after_training_s"]]
            cells += [run["summary"].get("val_bpb"), hits or "miss"]
            print("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a rehearsal)")
    parser.add_argument("--out", type=Path, default=Path("gpu_throughput.json"), help="the JSON report")
    parser.add_argument("--steps", type=int, help="steps per timed run, 2 untimed included (gpu 40, cpu 6)")
    parser.add_argument("--skip", default="", help="comma-separated stages to skip: equal,runs,kernels")
    parser.add_argument("--keep", type=Path, help="keep the workspace, data and caches in this folder")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=540,
        help="start no stage after this long (a device call's limit)",
    )
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    size, steps, skip = (
        ("gpu" if cuda else "cpu"),
        args.steps or (40 if cuda else 6),
        set(args.skip.split(",")),
    )
    report = Report(args.out, args.max_seconds)
    root = args.keep or Path(tempfile.mkdtemp(prefix="gpu_throughput-"))
    root.mkdir(parents=True, exist_ok=True)
    ws = root / "ws"
    env = dict(os.environ, NIGHTLAB_CACHE=str(root / "data"))
    # This process compiles too (equal maths, kernels): its own cache, so the runs' stay cold.
    os.environ.update(NIGHTLAB_CACHE=env["NIGHTLAB_CACHE"], TORCHINDUCTOR_CACHE_DIR=str(root / "bench-cache"))
    os.environ["TRITON_CACHE_DIR"] = str(root / "bench-cache" / "triton")

    import torch

    if not ws.exists():
        make_workspace(ws, size, args.device)
    sys.path.insert(0, str(ws))
    import train

    name = torch.cuda.get_device_name() if cuda else None
    peak = train.peak_flops(name)
    environment = {"torch": torch.__version__, "python": sys.version.split()[0], "device": name or "cpu"}
    environment.update(peak_bf16_tflops=peak / 1e12 if peak else None, size=size, steps_per_run=steps)
    report.add("environment", environment)
    stage(report, "flops_per_token", flop_counts, ws)
    if "equal" not in skip:
        stage(report, "equal_maths", equal_maths, ws, args.device)
        if cuda:  # what this process cached, handed back before train.py needs the GPU
            torch.cuda.empty_cache()
    if "runs" not in skip and "error" not in stage(report, "data", prepare_data, ws, env, size):
        base = (ws / "train.py").read_text()
        cache = root / "compile-cache"  # empty at the first run: a first run of these shapes
        shutil.rmtree(cache, ignore_errors=True)
        plan = [
            ("sssl_flex_first", {"WINDOW_PATTERN": "SSSL", "WINDOW_ATTENTION": "flex"}, steps, True),
            ("sssl_flex_second", {"WINDOW_PATTERN": "SSSL", "WINDOW_ATTENTION": "flex"}, 4, False),
            ("l", {"WINDOW_PATTERN": "L"}, steps, False),
            ("sssl_sdpa", {"WINDOW_PATTERN": "SSSL", "WINDOW_ATTENTION": "sdpa"}, steps, True),
        ]
        for run_name, knobs, run_steps, evaluate in plan:
            set_train_knobs(ws, base, knobs)
            report.data.setdefault("patterns", {})[f"run_{run_name}"] = knobs["WINDOW_PATTERN"]
            stage(report, f"run_{run_name}", run_train, ws, run_name, run_steps, evaluate, cache, env)
        (ws / "train.py").write_text(base)
    if "kernels" not in skip:
        stage(report, "kernels", kernels, ws, args.device)
    print_table(report)
    print(f"report: {args.out}")


if __name__ == "__main__":
    main()
