"""One training epoch of a cnnbp config in PyTorch, as a whole process: the yardstick of the epoch rows of
``benchmarks/run.py``.

    python benchmarks/torch_epoch.py CONFIG [--set KEY=VALUE ...] [--threads N]

The same work as ``cnnbp train CONFIG --set train.epochs=1``: the same data (cnnbp's loader), the same
network and initial weights (:class:`cnnbp.torch_mirror.TorchMirror`), the same order of samples (the
trainer's seeded permutation), the same optimiser (``Optimizer.to_torch``), one update per batch, then
the loss and accuracy on the validation set.  PyTorch runs at its default number of threads unless
``--threads`` says otherwise.  Prints one JSON line: seconds of the epoch, validation accuracy, threads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from cnnbp.config import build_loss, build_network, build_optimizer, load_config
    from cnnbp.core.trainer import Trainer
    from cnnbp.data import load_dataset
    from cnnbp.torch_mirror import TorchMirror

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.sets)
    dtype = np.dtype(cfg.dtype)
    net = build_network(cfg).build(np.random.default_rng(cfg.seed), dtype)
    data = load_dataset(cfg.data, cfg.model.input_shape, int(np.prod(net.output_shape)), dtype, cfg.seed,
                        cfg.base_dir)  # fmt: skip
    loss = build_loss(cfg)
    mirror = TorchMirror(net, loss)
    model = mirror.model.train()
    params = [p for named in mirror.params.values() for p in named.values()]
    opt = build_optimizer(cfg).to_torch(torch, params)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    n, bs = x.shape[0], cfg.train.batch_size
    order = Trainer(net, loss, build_optimizer(cfg), batch_size=bs, seed=cfg.seed).order(n, 1)
    order = torch.arange(n) if order is None or not cfg.train.shuffle else torch.from_numpy(order)

    t0 = time.perf_counter()
    for lo in range(0, n, bs):
        idx = order[lo : lo + bs]
        opt.zero_grad(set_to_none=True)
        mirror.loss_fn(mirror.t, model(x[idx]), y[idx]).backward()
        opt.step()
    seconds = time.perf_counter() - t0

    model.eval()
    correct, xv, yv = 0, torch.from_numpy(data.x_val), torch.from_numpy(data.y_val)
    with torch.no_grad():
        for lo in range(0, xv.shape[0], 256):
            out = model(xv[lo : lo + 256])
            truth = yv[lo : lo + 256] if yv.ndim == 1 else yv[lo : lo + 256].argmax(dim=1)
            correct += int((out.argmax(dim=1) == truth).sum())
    acc = correct / max(1, xv.shape[0])
    print(json.dumps({"epoch_seconds": seconds, "val_acc": acc, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
