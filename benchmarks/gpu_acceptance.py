"""GPU acceptance in one call: ViT-B/32 fine-tune steps (TGA-ZSR, TeCoA; bf16 autocast), PGD-10
evaluation, ONNX export + parity, with images/s, s/step, the TGA-ZSR/TeCoA ratio and peak GPU memory.

Sized for the GPU machine that is sometimes lent to a session (one NVIDIA H200; no network; Python 3.12
with torch 2.11 + torchvision 0.26, onnx and CPU onnxruntime, but no open_clip or pydantic). Bring the
missing wheels (`bash benchmarks/gpu_wheels.sh`, here, where pip reaches PyPI), then ONE device call:

    carry:     [".whl"]
    timeout_s: 480
    command:   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && PYTHONUNBUFFERED=1 python3 benchmarks/gpu_acceptance.py | tee $OUT/gpu_acceptance.txt

The script stops itself after `--minutes-budget` (default 6.5) and still prints the summary of the
phases that finished. On CPU, as the unit test runs it (the goldens' 2-layer tiny CLIP with ViT-B/32
geometry, batch 4, one step; well under a minute):

    python benchmarks/gpu_acceptance.py --device cpu --tiny

Phases: (a) random-weight model through `clipshield.models.factory.from_record` (no download); (b) fine-tuning
steps through `clipshield.training.finetune.train_step` (via `bench_finetune.MethodRun`: warm-up, then timed steps
on random 224 px images; TGA-ZSR timed in its first epoch, when the frozen model's clean outputs are
computed, and in later epochs, when they are read back); (c) one PGD-10 cell of the evaluation runner
on mini-world images at the model's size (final iterate, so every image takes all 10 steps; accuracies
of random weights mean nothing); (d) `clipshield.export.onnx_export.export_image_encoder` of the
fine-tuned TGA-ZSR image tower, parity with PyTorch (CPU) through CPU ONNX Runtime at batch 1 and 8.
The ONNX Runtime CUDA provider is not exercised here (onnxruntime-gpu is too big to carry); the
provider configuration tests cover it. (e) precision (`benchmarks/gpu_precision.py`): that encoder quantised
to int8 as `clipshield export --precision int8` does, timed against fp32 on CPU ONNX Runtime at batch 1 and 8,
and, on a CUDA device, the PyTorch image tower in fp16 against fp32 (on CPU: reported as not timed).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _source_tree_importable() -> None:
    """Make `clipshield.*` importable from this checkout where clipshield is not installed (the GPU
    machine has no setuptools build step): a temporary folder whose `clipshield` links to the repository."""
    try:
        import clipshield.service  # noqa: F401
    except ModuleNotFoundError:
        shim = Path(tempfile.mkdtemp(prefix="clipshield-src-"))
        (shim / "clipshield").symlink_to(REPO)
        sys.path.insert(0, str(shim))


_source_tree_importable()

from benchmarks.bench_finetune import MethodRun  # noqa: E402
from benchmarks.gpu_precision import format_precision, precision_phase  # noqa: E402
from clipshield.models.factory import from_record, record_from_arch  # noqa: E402
from clipshield.models.pixel_model import PixelCLIP  # noqa: E402
from clipshield.service.config import ModelRecord, PreprocessConfig  # noqa: E402

TINY_ARCH = REPO / "tests" / "data" / "goldens" / "tiny_clip.json"
EVAL_DATASET = "miniworld/plain/color_shape/seen"
PARITY_TOLERANCE = 1e-4
RATIO_EPOCHS = 10  # recipe length, for the whole-run ratio (as bench_finetune)
PHASES = ("model", "finetune", "pgd_eval", "onnx", "precision")


class BudgetExceeded(Exception):
    """The --minutes-budget deadline passed; the phases that finished are still reported."""


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny CLIP (goldens' tiny_clip.json), batch 4, 1 step: the CPU smoke run")
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture, random weights (default: %(default)s)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16", help="fine-tuning autocast")
    p.add_argument("--batch-size", type=int, default=None, help="fine-tuning batch (default 64; tiny 4)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per method (default 5; tiny 1)")
    p.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first (default 2; tiny 0)")
    p.add_argument("--classes", type=int, default=None, help="class prompts in the head (default 200; tiny 8)")
    p.add_argument("--eps", type=float, default=1.0, help="L-inf budget in units of 1/255 (default: %(default)s)")
    p.add_argument("--eval-limit", type=int, default=None, help="PGD evaluation images (default 512; tiny 8)")
    p.add_argument("--eval-batch-size", type=int, default=None, help="PGD evaluation batch (default 256; tiny 8)")
    p.add_argument("--eval-steps", type=int, default=10, help="PGD steps (default: %(default)s)")
    p.add_argument("--minutes-budget", type=float, default=6.5, help="stop and report after this many minutes (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = p.parse_args(argv)
    tiny = {"batch_size": 4, "steps": 1, "warmup_steps": 0, "classes": 8, "eval_limit": 8, "eval_batch_size": 8}
    full = {"batch_size": 64, "steps": 5, "warmup_steps": 2, "classes": 200, "eval_limit": 512, "eval_batch_size": 256}
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def build_model(args: argparse.Namespace) -> PixelCLIP:
    """Random-weight model through our own factory: tiny CLIP (tiny) or an open_clip architecture at 224 px."""
    if args.tiny:
        return from_record(record_from_arch("tiny_clip", json.loads(TINY_ARCH.read_text())))
    record = ModelRecord(name=f"{args.model}-random", open_clip_name=args.model, preprocess=PreprocessConfig(image_size=224))
    return from_record(record)


def peak_mb(device: str) -> tuple[float, str]:
    """(peak memory in MB, what it measures): CUDA max allocated since the last reset, or the process RSS high-water mark."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def finetune_phase(base: PixelCLIP, args: argparse.Namespace, out: Callable[[str], None]) -> tuple[dict, PixelCLIP]:
    """Timed train steps for TeCoA, TGA-ZSR (first epoch) and TGA-ZSR (later epochs), interleaved step by step."""
    bench_args = argparse.Namespace(
        eps=args.eps, device=args.device, precision=args.precision, batch_size=args.batch_size, classes=args.classes
    )
    runs = [
        MethodRun("tecoa", base, bench_args),
        MethodRun("tga-zsr", base, bench_args),
        MethodRun("tga-zsr", base, bench_args, later_epoch=True),
    ]
    sync(args.device)
    resident = torch.cuda.memory_allocated() / 2**20 if args.device.startswith("cuda") else None
    for i in range(args.warmup_steps + args.steps):
        for run in runs:
            run.step(i, record=i >= args.warmup_steps)
        out(f"  step {i + 1}/{args.warmup_steps + args.steps} done ({'timed' if i >= args.warmup_steps else 'warm-up'})")
    rows = {r.name: r.result() for r in runs}
    tecoa, first, later = (rows[n]["s_per_step"] for n in ("tecoa", "tga-zsr", "tga-zsr epoch 2+"))
    ratios = {
        "first_epoch": first / tecoa,
        "later_epochs": later / tecoa,
        "whole_run": (first + (RATIO_EPOCHS - 1) * later) / RATIO_EPOCHS / tecoa,
    }
    result = {
        "rows": list(rows.values()),
        "ratio_tga_zsr_over_tecoa": ratios,
        "peak_mb": max(r["peak_mem_mb"] for r in rows.values()),
        "resident_mb": resident,
    }
    return result, runs[1].target


def pgd_phase(model: PixelCLIP, args: argparse.Namespace, work: Path) -> dict:
    """One PGD cell of the evaluation runner (mini world at the model's size, final iterate); on CUDA run twice, the second timed."""
    from clipshield.evaluation.runner import EvalConfig, Evaluator, cell_keys

    cfg = EvalConfig(
        model_id=model.record.name,
        datasets=[EVAL_DATASET],
        attacks=["pgd"],
        eps=args.eps / 255,
        steps=args.eval_steps,
        stop="final",
        limit=args.eval_limit,
        batch_size=args.eval_batch_size,
        device=args.device,
        out_dir=work / "eval",
    )
    model = model.eval()
    evaluator = Evaluator(model, cfg)
    t0 = time.perf_counter()
    dataset = evaluator.prepare()[EVAL_DATASET]
    render_s = time.perf_counter() - t0
    key = cell_keys(cfg, EVAL_DATASET, evaluator.weights, dataset.preprocess)[0]
    if args.device.startswith("cuda"):
        evaluator.run_cell(key, dataset)  # warm-up (kernel selection, allocator)
    reset_peak(args.device)
    cell = evaluator.run_cell(key, dataset)
    sync(args.device)
    mem, _ = peak_mb(args.device)
    # work per image: clean forward + 1 start + K attack steps (forward + backward) + judging forward
    return {
        "dataset": EVAL_DATASET,
        "n": cell.n,
        "steps": args.eval_steps,
        "eps_255": args.eps,
        "stop": "final",
        "seconds": cell.seconds,
        "images_per_s": cell.n / cell.seconds,
        "clean_acc": cell.clean,
        "robust_acc": cell.robust,
        "render_seconds": render_s,
        "peak_mb": mem,
        "note": "random weights: accuracies are meaningless, only throughput and memory count",
    }


def onnx_phase(model: PixelCLIP, args: argparse.Namespace, work: Path) -> dict:
    """Export the image encoder with our exporter; max abs diff of CPU ONNX Runtime vs PyTorch (CPU; and the device model)."""
    from clipshield.export.onnx_export import export_image_encoder
    from clipshield.service.runtime import image_encoder
    from clipshield.service.settings import RuntimeConfig

    cpu_model = copy.deepcopy(model).cpu().float().eval()
    for p in cpu_model.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    path = export_image_encoder(cpu_model, work / "image_encoder.onnx")
    export_s = time.perf_counter() - t0
    enc = image_encoder(path, RuntimeConfig(intra_op_threads=max(1, torch.get_num_threads())))
    gen = torch.Generator().manual_seed(1)
    size = cpu_model.image_size
    diffs, device_diff = {}, 0.0
    reset_peak(args.device)
    with torch.no_grad():
        for batch in (1, 8):
            x = torch.rand(batch, 3, size, size, generator=gen)
            ours = enc(x.numpy())
            diffs[batch] = float(np.abs(ours - cpu_model(x).numpy()).max())
            on_device = model.eval()(x.to(args.device)).float().cpu().numpy()
            device_diff = max(device_diff, float(np.abs(ours - on_device).max()))
    sync(args.device)
    mem, _ = peak_mb(args.device)
    worst = max(diffs.values())
    return {
        "max_abs_diff": worst,
        "max_abs_diff_batch_1": diffs[1],
        "max_abs_diff_batch_8": diffs[8],
        "max_abs_diff_vs_device_model": device_diff,
        "tolerance": PARITY_TOLERANCE,
        "parity_ok": worst <= PARITY_TOLERANCE,
        "onnx_mb": path.stat().st_size / 2**20,
        "export_seconds": export_s,
        "provider": enc.provider,
        "peak_mb": mem,
    }


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise BudgetExceeded in the main thread after `seconds` (SIGALRM; a no-op where unavailable)."""
    if not hasattr(signal, "SIGALRM") or seconds <= 0:
        yield
        return

    def _expired(_signum, _frame):
        raise BudgetExceeded(f"minutes budget of {seconds / 60:.1f} exceeded")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": args.device,
        "cpu_threads": torch.get_num_threads(),
    }
    if args.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
        env["cuda"] = torch.version.cuda
    for mod in ("open_clip", "onnx", "onnxruntime", "pydantic", "torchvision"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            env[mod] = f"unavailable ({type(exc).__name__})"
    return env


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every phase within the budget; a failing phase is recorded (traceback printed) and the rest still run."""
    if args.threads:
        torch.set_num_threads(args.threads)
    summary: dict[str, Any] = {
        "environment": environment(args),
        "phases": dict.fromkeys(PHASES, "not run"),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    out("environment: " + ", ".join(f"{k} {v}" for k, v in summary["environment"].items()))
    start = time.perf_counter()
    model: Optional[PixelCLIP] = None
    tuned: Optional[PixelCLIP] = None

    def phase(name: str, fn: Callable[[], Any]) -> Any:
        out(f"== {name} ({time.perf_counter() - start:.0f} s elapsed)")
        t0 = time.perf_counter()
        try:
            value = fn()
            summary["phases"][name] = "ok"
            return value
        except BudgetExceeded:
            summary["phases"][name] = "stopped (minutes budget)"
            raise
        except Exception as exc:  # noqa: BLE001 - one failing phase must not hide the others
            summary["phases"][name] = f"failed: {type(exc).__name__}: {exc}"
            traceback.print_exc()
            return None
        finally:
            summary.setdefault("phase_seconds", {})[name] = round(time.perf_counter() - t0, 2)

    with (
        tempfile.TemporaryDirectory(prefix="gpu_acceptance_") as tmp,
        contextlib.suppress(BudgetExceeded),
        deadline(args.minutes_budget * 60),
    ):
        work = Path(tmp)
        model = phase("model", lambda: build_model(args))
        if model is None:
            return summary
        summary["model"] = {
            "name": model.record.name,
            "image_size": model.image_size,
            "visual_params_m": sum(p.numel() for p in model.visual.parameters()) / 1e6,
        }
        ft = phase("finetune", lambda: finetune_phase(model, args, out))
        if ft is not None:
            summary["finetune"], tuned = ft
            for row in summary["finetune"]["rows"]:
                out(
                    f"  {row['method']:18s} {row['s_per_step']:.4f} s/step  {row['images_per_s']:.4g} images/s  peak {row['peak_mem_mb']:.0f} MB"
                )
        evaluated = tuned if tuned is not None else model.to(args.device)
        summary["pgd_eval"] = phase("pgd_eval", lambda: pgd_phase(evaluated, args, work))
        summary["onnx"] = phase("onnx", lambda: onnx_phase(evaluated, args, work))
        summary["precision"] = phase("precision", lambda: precision_phase(evaluated, args, work))
    summary["total_seconds"] = round(time.perf_counter() - start, 1)
    summary["passed"] = all(v == "ok" for v in summary["phases"].values()) and bool((summary.get("onnx") or {}).get("parity_ok"))
    return summary


def format_summary(s: dict[str, Any]) -> str:
    """The block to quote: one line per measured quantity."""
    env, cfg = s["environment"], s["config"]
    mem_kind = "CUDA max allocated" if env["device"].startswith("cuda") else "CPU run: process max RSS, cumulative"
    lines = [
        "==== clipshield GPU acceptance summary ====",
        f"device        {env['device']} {env.get('gpu', '')} | torch {env['torch']} cuda {env.get('cuda')} | "
        f"open_clip {env['open_clip']} | onnxruntime {env['onnxruntime']} | python {env['python']}",
    ]
    if "model" in s:
        m = s["model"]
        lines.append(f"model         {m['name']} (random weights), {m['image_size']} px, image tower {m['visual_params_m']:.1f} M params")
    ft = s.get("finetune")
    if ft:
        lines.append(
            f"fine-tune     batch {cfg['batch_size']}, precision {cfg['precision']}, eps {cfg['eps']}/255, "
            f"median of {cfg['steps']} timed steps after {cfg['warmup_steps']} warm-up"
        )
        for r in ft["rows"]:
            lines.append(f"  {r['method']:17s} {r['s_per_step']:8.4f} s/step {r['images_per_s']:9.4g} images/s")
        q = ft["ratio_tga_zsr_over_tecoa"]
        lines.append(
            f"ratio         TGA-ZSR / TeCoA: first epoch {q['first_epoch']:.2f}, later epochs {q['later_epochs']:.2f}, "
            f"{RATIO_EPOCHS}-epoch run {q['whole_run']:.2f} (paper 1.74; target <= 1.3)"
        )
    ev = s.get("pgd_eval")
    if ev:
        lines.append(
            f"PGD-{ev['steps']} eval   {ev['images_per_s']:.4g} images/s ({ev['n']} images, {ev['seconds']:.2f} s, "
            f"eps {ev['eps_255']}/255, final iterate); clean {ev['clean_acc']:.3f} robust {ev['robust_acc']:.3f} "
            f"(random weights: meaningless)"
        )
    ox = s.get("onnx")
    if ox:
        lines.append(
            f"ONNX parity   max abs diff {ox['max_abs_diff']:.2e} (batch 1 {ox['max_abs_diff_batch_1']:.2e}, batch 8 "
            f"{ox['max_abs_diff_batch_8']:.2e}; tolerance {ox['tolerance']:.0e}) on {ox['provider']}; vs the "
            f"{env['device']} model {ox['max_abs_diff_vs_device_model']:.2e} (information only); export {ox['export_seconds']:.1f} s, {ox['onnx_mb']:.0f} MB"
        )
    if s.get("precision"):
        lines += format_precision(s["precision"])
    peaks = [
        f"{name} {s[key]['peak_mb']:.0f} MB"
        for name, key in (("fine-tune", "finetune"), ("PGD eval", "pgd_eval"), ("ONNX check", "onnx"))
        if s.get(key)
    ]
    lines.append(f"peak memory   {', '.join(peaks) or 'n/a'} ({mem_kind})")
    if ft and ft.get("resident_mb") is not None:
        lines.append(
            f"              (the fine-tune peak includes {ft['resident_mb']:.0f} MB allocated before the first step: "
            "the models and frozen copies of all three runs)"
        )
    lines.append("phases        " + ", ".join(f"{k}: {v}" for k, v in s["phases"].items()))
    lines.append(f"total         {s.get('total_seconds', float('nan')):.1f} s; RESULT {'PASS' if s.get('passed') else 'FAIL'}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    summary = run(args, out=lambda line: print(line, flush=True))
    print(format_summary(summary), flush=True)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return 0 if summary.get("passed") else 1


if __name__ == "__main__":
    sys.exit(main())
