"""Training throughput of a small GPT, one process vs data-parallel (after Yoo et al. 2022).

Claim (the scalable-training technical report, JAX pjit on TPUv4): training throughput is
measured in tokens per second and model-FLOPs utilisation (MFU = 6 N tokens/s / peak FLOP/s),
and data parallelism over more devices raises tokens/s while computing the same updates.

Miniature: a small GPT-2 built from a transformers config trains on a fixed synthetic token
stream, first in one process, then data-parallel over ``--world-size`` processes (torch
distributed; gloo over loopback on CPU with one thread per process, NCCL with bf16 autocast
when CUDA is there). Both modes see the same global batches, so their losses must agree to
rounding; what differs is the speed. ``--peak-tflops`` is the stated peak of the hardware
target for the MFU estimate (per process; the data-parallel MFU divides by world size).

Metrics: per mode (``single``, ``ddp``) ``throughput/{mode}_tokens_per_s``,
``throughput/{mode}_step_time_s`` (median over timed steps), ``throughput/{mode}_mfu``,
``throughput/{mode}_peak_memory_mb`` (largest process: max RSS on CPU, max allocated on CUDA),
``losses/{mode}_loss`` per step; ``throughput/ddp_speedup``, ``throughput/loss_abs_diff``
(final loss, ddp vs single), ``throughput/params``, ``throughput/world_size``.
Losses are bit-identical across runs; timings are not. Artifacts: ``throughput.json``, ``throughput.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import queue
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from harness import track


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--global-batch", type=int, default=8, help="sequences per step, split over the processes")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--world-size", type=int, default=2, help="processes in the data-parallel mode")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--peak-tflops", type=float, default=0.16, help="stated peak TFLOP/s of one process's share of the target")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    model_help = "pretrained causal LM to train instead of the config model (Hub repo)"
    parser.add_argument("--model-repo", default="", help=model_help)
    parser.add_argument("--model-revision", default="", help="40-hex commit of --model-repo")
    return parser.parse_args()


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    if args.model_repo:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(
            args.model_repo, revision=args.model_revision, dtype=torch.float32, use_safetensors=True, trust_remote_code=False
        )
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=args.vocab, n_positions=args.context, n_embd=args.hidden, n_layer=args.layers, n_head=args.heads,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


def token_stream(args: argparse.Namespace, vocab: int) -> torch.Tensor:
    """A fixed synthetic corpus: a random first-order Markov chain over the vocabulary (learnable)."""
    generator = torch.Generator().manual_seed(args.seed)
    successors = torch.randint(0, vocab, (vocab, 4), generator=generator)
    length = (args.warmup + args.steps) * args.global_batch * args.context
    choices = torch.randint(0, 4, (length,), generator=generator)
    stream = torch.empty(length, dtype=torch.long)
    stream[0] = 0
    for i in range(1, length):
        stream[i] = successors[stream[i - 1], choices[i]]
    return stream.view(args.warmup + args.steps, args.global_batch, args.context)


def worker(rank: int, world: int, args: argparse.Namespace, rendezvous: str, results) -> None:  # type: ignore[no-untyped-def]
    """Train on this rank's share of every global batch; rank 0 reports timings and losses."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if world > 1:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        # a file rendezvous: no port to pick (two runs at once could pick the same one), and a
        # timeout so that a broken pairing fails the run instead of holding it for 30 minutes
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{rendezvous}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(minutes=3))
    model = build_model(args).to(device)
    params = sum(p.numel() for p in model.parameters())
    vocab = model.config.vocab_size
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if cuda else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    batches = token_stream(args, min(vocab, args.vocab))
    share = args.global_batch // world
    times, losses = [], []
    for step, batch in enumerate(batches):
        local = batch[rank * share : (rank + 1) * share].to(device)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = model(input_ids=local, labels=local).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        mean_loss = loss.detach().float()
        if world > 1:
            dist.all_reduce(mean_loss)
            mean_loss /= world
        if step >= args.warmup:
            times.append(elapsed)
        losses.append(mean_loss.item())
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    peaks = torch.tensor([peak_mb], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
    if rank == 0:  # before the teardown: the measurement is complete whatever the teardown does
        results.put({"times": times, "losses": losses, "params": params, "peak_memory_mb": peaks.item()})
    if world > 1:
        dist.destroy_process_group()


def run_mode(world: int, args: argparse.Namespace) -> dict:
    """Run ``world`` workers and return rank 0's result. The parent reads the result as soon as it
    is there, and ends workers still tearing down 30 s later (gloo's shutdown can hang)."""
    context = mp.get_context("spawn")
    results = context.Queue()
    with tempfile.TemporaryDirectory(prefix="rendezvous-") as folder:
        rendezvous = os.path.join(folder, "store")
        workers = mp.start_processes(worker, args=(world, args, rendezvous, results), nprocs=world, join=False,
                                     start_method="spawn")
        while True:
            try:
                result = results.get(timeout=1.0)
                break
            except queue.Empty:
                if workers.join(timeout=0):  # raises if a worker failed
                    raise SystemExit("the workers ended without a result")
        deadline = time.monotonic() + 30
        while not workers.join(timeout=1) and time.monotonic() < deadline:
            pass
        for process in workers.processes:
            if process.is_alive():
                print(f"worker {process.pid} still tearing down after its result: ended", flush=True)
                process.terminate()
    return result


def save_figure(modes: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for mode, result in modes.items():
        left.plot(result["losses"], label=mode)
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    left.legend()
    names = list(modes)
    right.bar(names, [modes[m]["tokens_per_s"] for m in names])
    right.set_ylabel("tokens / s")
    fig.suptitle("Training throughput: one process vs data-parallel")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    # deterministic cuBLAS needs a fixed workspace; set before the workers start CUDA
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # the processes run on one host: gloo must pair over loopback (in a container without
    # a network, resolving the hostname gives no address and the pairing waits forever)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    world = args.world_size
    if args.device == "cuda":
        world = max(1, min(world, torch.cuda.device_count()))
    if args.global_batch % world:
        raise SystemExit(f"--global-batch {args.global_batch} does not split over {world} processes")
    out = Path(os.environ.get("HARNESS_OUT", "."))
    tokens_per_step = args.global_batch * args.context
    modes: dict[str, dict] = {}
    for mode, processes in (("single", 1), ("ddp", world)):
        result = run_mode(processes, args)
        step_time = statistics.median(result["times"])
        result["tokens_per_s"] = tokens_per_step / step_time
        result["mfu"] = 6 * result["params"] * result["tokens_per_s"] / (args.peak_tflops * 1e12 * processes)
        modes[mode] = result
        for step, loss in enumerate(result["losses"]):
            track.log({f"losses/{mode}_loss": loss}, step=step)
        track.log(
            {
                f"throughput/{mode}_tokens_per_s": result["tokens_per_s"],
                f"throughput/{mode}_step_time_s": step_time,
                f"throughput/{mode}_mfu": result["mfu"],
                f"throughput/{mode}_peak_memory_mb": result["peak_memory_mb"],
            },
            step=0,
        )
        print(f"{mode:>6}: {processes} process(es), {result['tokens_per_s']:.0f} tokens/s, "
              f"step {step_time * 1e3:.1f} ms, MFU {result['mfu']:.3%}, peak {result['peak_memory_mb']:.0f} MiB")
    summary = {
        "throughput/ddp_speedup": modes["ddp"]["tokens_per_s"] / modes["single"]["tokens_per_s"],
        "throughput/loss_abs_diff": abs(modes["ddp"]["losses"][-1] - modes["single"]["losses"][-1]),
        "throughput/params": modes["single"]["params"],
        "throughput/world_size": world,
    }
    track.log(summary, step=0)
    (out / "throughput.json").write_text(json.dumps({"args": vars(args), "summary": summary, "modes": modes}, indent=1))
    save_figure(modes, out / "throughput.png")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
