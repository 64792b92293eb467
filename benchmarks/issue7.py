"""The performance targets of issue 7, measured and judged (``python benchmarks/run.py --part issue7``).

* one training step (forward, backward without the input gradient, SGD update) of the DLT network
  (``configs/dlt_mnist.yaml``) and of LeNet-5 (``configs/lenet5.yaml``) against the same network in
  PyTorch, timed in alternation on the same random batch, one thread each (``cnnbp bench --vs torch
  --threads 1`` per row);
* one epoch of ``configs/dlt_mnist.yaml`` on full MNIST: seconds, test error, the share of the time
  that checkpoints and probe deltas add, and the peak memory (run in a fresh process, so that its
  peak resident size is the training's own).

Each figure is printed with its target and ``met`` / ``NOT met``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist"

# (label, config, batch, dtype, target ratio engine/torch)
STEP_TARGETS = [
    ("dlt", "dlt_mnist.yaml", 50, "float32", 1.0),
    ("lenet", "lenet5.yaml", 64, "float32", 1.0),
    ("lenet", "lenet5.yaml", 256, "float32", 1.3),
    ("dlt", "dlt_mnist.yaml", 50, "float64", 1.2),
    ("lenet", "lenet5.yaml", 64, "float64", 1.2),
]
EPOCH_SECONDS = 8.0
TEST_ERROR = 0.12
SAVE_OVERHEAD = 0.05
MEMORY_SLACK = 300 * 2**20


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# ---- training steps vs PyTorch ---------------------------------------------------------------------------


def step_rows(steps: int) -> list[dict]:
    import numpy as np

    from cnnbp.bench import have_torch, run_bench
    from cnnbp.config import build_loss, build_network, build_optimizer, load_config

    if not have_torch():
        print("steps vs PyTorch: skipped (PyTorch is not installed: pip install 'cnnbp[torch]')")
        return []
    rows = []
    for label, config, batch, dtype, target in STEP_TARGETS:
        cfg = load_config(REPO / "configs" / config)
        result = run_bench(
            build_network(cfg),
            build_loss(cfg),
            build_optimizer(cfg),
            name=label,
            batch=batch,
            dtype=np.dtype(dtype),
            steps=steps,
            seed=cfg.seed,
            vs_torch=True,
            warmup=5,
            threads=1,
        )
        assert result.torch is not None and result.agreement is not None and result.ratio is not None
        row = {
            "figure": f"{label} b={batch} {dtype} step",
            "engine_ms": result.engine.median_ms,
            "torch_ms": result.torch.median_ms,
            "ratio": result.ratio,
            "target": f"≤ {target:.1f}× PyTorch",
            "met": result.ratio <= target,
            "agree": result.agreement.ok,
            "max_rel_err": result.agreement.max_rel_err,
            "threads": result.threads,
        }
        rows.append(row)
        print(
            f"{row['figure']:<26} engine {row['engine_ms']:7.2f} ms  torch {row['torch_ms']:7.2f} ms"
            f"  ratio {row['ratio']:5.2f}  target {row['target']:<16} {verdict(row['met']):<8}"
            f"  (gradients agree: {result.agreement.max_rel_err:.1e})",
            flush=True,
        )
    return rows


# ---- one MNIST epoch --------------------------------------------------------------------------------------

_EPOCH_SCRIPT = r"""
import json, sys, tempfile, time
from pathlib import Path
import cnnbp.runner as runner

def peak_rss():
    # VmHWM: this process's own high-water mark (ru_maxrss would count the parent's size at fork)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

config, mnist = sys.argv[1], sys.argv[2]
# the run as `cnnbp train` makes it: config, data, network and optimiser built by the runner
session = runner.Session.new(Path(config), [f"data.path={mnist}"], epochs=1)
data = session.data

saves = []
plain_save = runner._Fit.save  # probe + checkpoint file, timed
def timed_save(self, *args, **kwargs):
    t0 = time.perf_counter()
    try:
        return plain_save(self, *args, **kwargs)
    finally:
        saves.append(time.perf_counter() - t0)
runner._Fit.save = timed_save

with tempfile.TemporaryDirectory() as tmp, session:
    summary = session.run(Path(tmp))
print(json.dumps({
    "epoch_seconds": summary.train_seconds,
    "test_error": 1.0 - summary.final["val_acc"],
    "save_seconds": sum(saves),
    "saves": len(saves),
    "train_bytes": int(data.x_train.nbytes),
    "peak_rss_bytes": peak_rss(),
}))
"""


def epoch_rows(mnist: Path) -> list[dict]:
    if not all((mnist / f).exists() or (mnist / f"{f}.gz").exists() for f in ("train-images-idx3-ubyte",)):
        print(f"MNIST epoch: skipped (no MNIST IDX files in {mnist})")
        return []
    proc = subprocess.run(
        [sys.executable, "-c", _EPOCH_SCRIPT, str(REPO / "configs" / "dlt_mnist.yaml"), str(mnist.resolve())],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if proc.returncode != 0:
        print(f"MNIST epoch: FAILED\n{proc.stderr}")
        return [{"figure": "MNIST epoch", "met": False, "error": proc.stderr[-2000:]}]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    budget = r["train_bytes"] + MEMORY_SLACK
    overhead = r["save_seconds"] / r["epoch_seconds"]
    rows = [
        {"figure": "dlt_mnist epoch (s)", "value": r["epoch_seconds"], "target": f"≤ {EPOCH_SECONDS:g} s",
         "met": r["epoch_seconds"] <= EPOCH_SECONDS},
        {"figure": "dlt_mnist test error", "value": r["test_error"], "target": f"≤ {TEST_ERROR:.0%}",
         "met": r["test_error"] <= TEST_ERROR},
        {"figure": f"checkpoints + probe ({r['saves']} saves)", "value": overhead,
         "target": f"≤ {SAVE_OVERHEAD:.0%} of the epoch", "met": overhead <= SAVE_OVERHEAD},
        {"figure": "peak memory (MB)", "value": r["peak_rss_bytes"] / 2**20,
         "target": f"≤ {budget / 2**20:.0f} MB (train set {r['train_bytes'] / 2**20:.0f} MB + 300)",
         "met": r["peak_rss_bytes"] <= budget},
    ]  # fmt: skip
    shown = {
        "dlt_mnist epoch (s)": f"{r['epoch_seconds']:.2f} s",
        "dlt_mnist test error": f"{100 * r['test_error']:.2f} %",
        "peak memory (MB)": f"{r['peak_rss_bytes'] / 2**20:.0f} MB",
    }
    for row in rows:
        value = shown.get(row["figure"], f"{100 * row['value']:.2f} % ({r['save_seconds']:.3f} s)")
        print(f"{row['figure']:<34} {value:<20} target {row['target']:<40} {verdict(row['met'])}", flush=True)
    return rows
