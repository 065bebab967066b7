"""train.py's attention on the GPU path, checked on CPU: FlexAttention for sliding windows.

On CUDA under torch.compile, sliding-window layers run FlexAttention with a block mask built
once per shape; everywhere else (CPU, eager, torch.export) they run SDPA with an explicit mask.
These tests show the two are the same maths: the block mask against the element rule, the
compiled FlexAttention kernel (CPU has a forward) and its reference implementation (forward and
gradients) against the SDPA path, and the whole model compiled with FlexAttention against the
eager one. They also cover what the GPU numbers rest on: the FLOP count for MFU, the dense bf16
peak per device name, and that a compiled step is stored in torch's compile cache (so the next
run of the same shapes skips compilation). The CUDA test runs only where a GPU is present.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.attention.flex_attention as flex_module
from gpt_kit import TEMPLATE, forget_template

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import set_constants  # noqa: E402

# A small model whose attention layers are the unit under test: 4 heads of 16, GQA-capable.
SMALL = {"DEPTH": 2, "ASPECT_RATIO": 32, "HEAD_DIM": 16, "OUT_PROJ_INIT_SCALE": 1.0, "UNEMBED_INIT_STD": 0.5}


@pytest.fixture
def train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """train.py imported from a copy of the template, with the small model's constants patched in."""
    ws = tmp_path / "ws"
    shutil.copytree(TEMPLATE, ws, ignore=shutil.ignore_patterns("__pycache__", "run"))
    forget_template(monkeypatch)
    monkeypatch.syspath_prepend(str(ws))
    module = importlib.import_module("train")
    for name, value in SMALL.items():
        monkeypatch.setattr(module, name, value)
    return module


def window_rule(T: int, window: int) -> torch.Tensor:
    """[T, T] bool: query t sees key s iff t - window < s <= t (what the SDPA path builds)."""
    i = torch.arange(T)
    return (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)


def dense_blocks(num_blocks: torch.Tensor, indices: torch.Tensor, n_kv: int) -> torch.Tensor:
    """[q blocks, kv blocks] bool from a BlockMask's (count, indices) pair for batch 0, head 0."""
    out = torch.zeros(indices.size(-2), n_kv, dtype=torch.bool)
    for row, (count, cols) in enumerate(zip(num_blocks[0, 0], indices[0, 0], strict=True)):
        out[row, cols[: int(count)].long()] = True
    return out


# --- the block mask ----------------------------------------------------------------------------


@pytest.mark.parametrize(("T", "window"), [(256, 128), (512, 96), (512, 130), (200, 96)])
def test_block_mask_marks_exactly_the_blocks_the_window_reaches(train, T: int, window: int) -> None:
    """Skipped blocks hold no visible pair; full blocks only visible pairs; partial ones a mix."""
    mask = train.sliding_window_block_mask(T, window, torch.device("cpu"))
    rows, cols = mask.BLOCK_SIZE
    n_q, n_kv = -(-T // rows), -(-T // cols)
    partial = dense_blocks(mask.kv_num_blocks, mask.kv_indices, n_kv)
    full = dense_blocks(mask.full_kv_num_blocks, mask.full_kv_indices, n_kv)
    rule = window_rule(T, window)
    for qb in range(n_q):
        for kb in range(n_kv):
            tile = rule[qb * rows : (qb + 1) * rows, kb * cols : (kb + 1) * cols]
            assert bool(partial[qb, kb]) + bool(full[qb, kb]) == bool(tile.any()), (qb, kb)
            assert bool(full[qb, kb]) == bool(tile.all()), (qb, kb)
    assert train.sliding_window_block_mask(T, window, torch.device("cpu")) is mask  # built once
    assert train.sliding_window_block_mask(T, window + 1, torch.device("cpu")) is not mask


def test_use_flex_attention_gives_masks_to_window_layers_only(train, monkeypatch) -> None:
    monkeypatch.setattr(train, "DEPTH", 4)
    model = train.GPT(256, 64)
    model.use_flex_attention()
    windows = [block.attn.window for block in model.blocks]
    masks = [block.attn.block_mask for block in model.blocks]
    assert windows == [32, 32, 32, None]  # SSSL, the last layer full
    assert masks[0] is masks[1] is masks[2] and masks[0].shape[-2:] == (64, 64) and masks[3] is None


def test_flex_runs_only_where_it_is_a_fused_kernel(train, monkeypatch) -> None:
    """CUDA and compiled for training; never eagerly, never in the exported model."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert train.select_flex_attention("flex", cuda, compiled=True) is True
    assert train.select_flex_attention("flex", cuda, compiled=False) is False
    assert train.select_flex_attention("flex", cpu, compiled=True) is False  # no backward on CPU
    assert train.select_flex_attention("sdpa", cuda, compiled=True) is False
    with pytest.raises(SystemExit, match="WINDOW_ATTENTION"):
        train.select_flex_attention("flash", cuda, compiled=True)
    model = train.GPT(256, 64)
    model.use_flex_attention()
    attn = model.blocks[0].attn
    assert not attn.uses_flex(64)  # eager
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert attn.uses_flex(64) and not attn.uses_flex(32)  # another length: the SDPA path
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    assert not attn.uses_flex(64)


# --- equal maths --------------------------------------------------------------------------------


@pytest.mark.parametrize("kv_ratio", [1, 2])
def test_flex_reference_matches_sdpa_forward_and_gradients(train, monkeypatch, kv_ratio: int) -> None:
    """One window layer, float64: FlexAttention's reference implementation (what it runs without
    the compiler; its backward is the one FlexAttention differentiates) against SDPA with the mask.

    FlexAttention refuses gradients on CPU in its device check; the check is lifted here so that
    the same mask rule, scale and GQA can be compared with gradients.
    """
    monkeypatch.setattr(train, "KV_HEAD_RATIO", kv_ratio)
    monkeypatch.setattr(train, "QK_SCALE", 1.3)
    monkeypatch.setattr(flex_module, "_validate_device", lambda *tensors: None)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # selects flex in eager code
    monkeypatch.setattr(train, "DEPTH", 3)  # layer 0: window and value embedding; layer 1: window
    torch.manual_seed(0)
    model = train.GPT(256, 64).double()
    x = torch.randn(3, 64, model.width, dtype=torch.double)
    ve = torch.randn(3, 64, model.blocks[0].attn.n_kv_head * train.HEAD_DIM, dtype=torch.double)
    for attn in (model.blocks[0].attn, model.blocks[1].attn):
        results = []
        for flex in (False, True):
            attn.block_mask = train.sliding_window_block_mask(64, attn.window, x.device) if flex else None
            assert attn.uses_flex(64) is flex
            xi = x.clone().requires_grad_()
            attn.zero_grad(set_to_none=True)
            out = attn(xi, ve if attn.ve_gate is not None else None, model.cos, model.sin)
            out.square().sum().backward()
            grads = [xi.grad, *(p.grad for p in attn.parameters())]
            results.append((out.detach(), grads))
        (y0, g0), (y1, g1) = results
        assert torch.allclose(y1, y0, rtol=0, atol=1e-10)
        assert len(g0) == (5 if attn.ve_gate is not None else 4) + 1
        for a, b in zip(g0, g1, strict=True):
            assert a is not None and torch.allclose(b, a, rtol=0, atol=1e-9)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_compiled_flex_kernel_matches_sdpa_in_the_layer(train, monkeypatch, bf16: bool) -> None:
    """The compiled (block-sparse) kernel on CPU, forward, GQA, a value embedding, in the layer's graph.

    fp32: the same values. bf16 autocast (as training on a GPU): FlexAttention is no further
    from the fp32 result than SDPA under the same autocast.
    """
    monkeypatch.setattr(train, "KV_HEAD_RATIO", 2)
    monkeypatch.setattr(train, "DEPTH", 3)  # layer 0: a window and a value embedding
    torch.manual_seed(0)
    model = train.GPT(256, 256).eval()
    attn = model.blocks[0].attn
    assert attn.window is not None and attn.ve_gate is not None
    x = torch.randn(2, 256, model.width)
    ve = torch.randn(2, 256, attn.n_kv_head * train.HEAD_DIM)
    calls = []
    kernel = train.flex_attention
    monkeypatch.setattr(train, "flex_attention", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    with torch.no_grad():
        exact = attn(x, ve, model.cos, model.sin)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            expected = attn(x, ve, model.cos, model.sin).float()
            model.use_flex_attention()
            torch._dynamo.reset()
            got = torch.compile(attn, dynamic=False, fullgraph=True)(x, ve, model.cos, model.sin).float()
    assert calls, "the compiled layer did not take the FlexAttention path"
    if not bf16:
        assert torch.allclose(got, expected, rtol=0, atol=2e-5), (got - expected).abs().max()
    else:
        sdpa_error = ((expected - exact).norm() / exact.norm()).item()
        flex_error = ((got - exact).norm() / exact.norm()).item()
        assert 0 < sdpa_error < 0.05 and flex_error <= 1.5 * sdpa_error, (flex_error, sdpa_error)


@pytest.mark.slow
def test_compiled_model_with_flex_matches_the_eager_model(train, monkeypatch) -> None:
    """The whole model compiled with FlexAttention windows (CPU: forward only) equals eager SDPA.

    Two window layers share one block mask, with and without a value embedding; one full layer.
    """
    monkeypatch.setattr(train, "WINDOW_PATTERN", "SSL")
    monkeypatch.setattr(train, "DEPTH", 3)
    monkeypatch.setattr(train, "KV_HEAD_RATIO", 2)
    torch.manual_seed(0)
    model = train.GPT(256, 256).eval()
    idx = torch.randint(0, 256, (2, 256))
    with torch.no_grad():
        expected = model(idx)
        model.use_flex_attention()
        torch._dynamo.reset()
        got = torch.compile(model, dynamic=False, fullgraph=True)(idx)
    assert torch.allclose(got, expected, rtol=0, atol=5e-5), (got - expected).abs().max()


def test_export_records_the_sdpa_path(train) -> None:
    """The evaluator runs the exported program eagerly (and maybe on CPU): no FlexAttention in it."""
    torch.manual_seed(0)
    model = train.GPT(256, 64).eval()
    model.use_flex_attention()
    idx = torch.randint(0, 256, (2, 64))
    with torch.no_grad():
        program = torch.export.export(model, (idx,), strict=False)
        assert torch.allclose(program.module()(idx), model(idx), atol=1e-5)
    assert "flex_attention" not in str(program.graph)
    assert "scaled_dot_product_attention" in str(program.graph)


def test_compiled_forms_of_norm_and_relu2_match_the_hand_written_ones(train, monkeypatch) -> None:
    """Under the compiler the plain operations run (cacheable); same values and gradients."""
    x = torch.randn(4, 7, 32, dtype=torch.double)
    results = []
    for compiling in (False, True):
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda c=compiling: c)
        xi = x.clone().requires_grad_()
        out = train.norm(xi) * torch.arange(32) + train.relu_squared(xi)
        out.sum().backward()
        results.append((out.detach(), xi.grad))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-12)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-12)


# --- MFU ----------------------------------------------------------------------------------------


def test_flops_count_the_keys_each_layer_attends_to(train, monkeypatch) -> None:
    """12 * width per attended key (summed over the real masks), plus 6 per matrix weight."""
    monkeypatch.setattr(train, "DEPTH", 4)
    model = train.GPT(256, 64)
    matrices = sum(p.numel() for p in model.blocks.parameters() if p.dim() == 2)
    matrices += model.lm_head.weight.numel()
    keys = sum(window_rule(64, w).sum().item() / 64 for w in model.windows)
    assert model.flops_per_token(64) == pytest.approx(6 * matrices + 12 * model.width * keys)
    assert train.mean_span(1024, 2048) == pytest.approx(3 / 8 * 2048, rel=1e-3)  # not 1/4
    assert train.mean_span(2048, 2048) == pytest.approx(2049 / 2)


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 NVL", 835),
        ("NVIDIA H200", 989),
        ("NVIDIA H200 NVL", 835),
        ("NVIDIA GH200 480GB", 989),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A100-PCIE-40GB", 312),
        ("NVIDIA L4", 121),
        ("NVIDIA L40", 181),
        ("NVIDIA L40S", 362),
        ("NVIDIA A10", 125),
        ("NVIDIA GeForce RTX 4090", 165),
        ("NVIDIA GeForce RTX 3090", 71),
        ("NVIDIA A10G", None),  # no published figure: no MFU rather than a guess
        ("Tesla T4", None),
        (None, None),  # CPU
    ],
)
def test_peak_flops_is_looked_up_per_device_name(train, name: str | None, tflops: float | None) -> None:
    peak = train.peak_flops(name)
    assert (peak is None) if tflops is None else peak == pytest.approx(tflops * 1e12)


# --- the compile cache across runs ----------------------------------------------------------------

COMPILED_STEP = """
import json, sys, time
import torch
import train
from torch._dynamo.utils import counters
for name, value in json.loads(sys.argv[1]).items():
    setattr(train, name, value)
torch.manual_seed(0)
model = train.GPT(256, 64)
step = torch.compile(model, dynamic=False)
idx = torch.randint(0, 256, (2, 64))
t0 = time.perf_counter()
step(idx, idx).backward()
print(json.dumps({"seconds": time.perf_counter() - t0, **counters["aot_autograd"], **counters["inductor"]}))
"""


@pytest.mark.slow
def test_a_second_run_of_the_same_shapes_loads_the_compiled_step(tmp_path: Path) -> None:
    """train.py's compiled forward and backward are stored in the compile cache and found again.

    Two processes compile the same model with one TORCHINDUCTOR_CACHE_DIR: the second must hit
    AOTAutograd's cache (which stores the whole compiled step, and which a custom autograd
    Function in the graph would bypass) and inductor's.
    """
    ws = tmp_path / "ws"
    shutil.copytree(TEMPLATE, ws, ignore=shutil.ignore_patterns("__pycache__", "run"))
    set_constants(ws / "train.py", DEPTH=2, ASPECT_RATIO=16, HEAD_DIM=16)
    script = ws / "compiled_step.py"
    script.write_text(COMPILED_STEP)
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), OMP_NUM_THREADS="1")
    env.pop("TORCHINDUCTOR_FORCE_DISABLE_CACHES", None)
    runs = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, script.name, json.dumps({"WINDOW_PATTERN": "SL"})],
            cwd=ws,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first.get("autograd_cache_saved") == 1 and "autograd_cache_bypass" not in first, first
    assert second.get("autograd_cache_hit") == 1 and "autograd_cache_bypass" not in second, second
    assert second.get("fxgraph_cache_hit", 0) >= 1 and "fxgraph_cache_miss" not in second, second
    assert second["seconds"] < first["seconds"], runs


# --- CUDA (where a GPU is present) ---------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_flex_training_step_matches_sdpa_within_bf16_tolerance(train, monkeypatch) -> None:
    """The real GPU path: compiled, bf16 autocast, forward and backward, FlexAttention vs SDPA."""
    monkeypatch.setattr(train, "WINDOW_PATTERN", "SSSL")
    monkeypatch.setattr(train, "DEPTH", 4)
    monkeypatch.setattr(train, "HEAD_DIM", 64)
    monkeypatch.setattr(train, "KV_HEAD_RATIO", 2)
    idx = torch.randint(0, 256, (4, 512), device="cuda")
    results = []
    for flex in (False, True):
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = train.GPT(256, 512)
        if flex:
            model.use_flex_attention()
        torch._dynamo.reset()
        step = torch.compile(model, dynamic=False)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step(idx, idx)
        loss.backward()
        results.append((loss.item(), [p.grad.float() for p in model.parameters()]))
    (loss0, grads0), (loss1, grads1) = results
    assert loss1 == pytest.approx(loss0, rel=2e-2)
    for a, b in zip(grads0, grads1, strict=True):
        assert (b - a).norm() <= 5e-2 * a.norm() + 1e-6
