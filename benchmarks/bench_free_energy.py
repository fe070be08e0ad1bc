"""SGLD throughput of our free-energy estimator against devinterp 1.3.2 and against plain training.

All three run in one process on the same model (a fresh ``create_model`` of the project), the same
pre-normalised random images on the device, the same batch size; ours and devinterp also share chains,
draws, step size, localization and nβ. Throughput is in samples (images) per second of SGLD or training:

devinterp is an extra test requirement (``pip install devinterp==1.3.2``, installed by ``./reproduce.sh test``);
without it the script says so and prints the other rows.

- ours: the chains of ``estimate_free_energy`` (its sampling time, without the one full-data L_n(w*));
- devinterp: ``estimate_learning_coeff_with_summary`` with its SGLD, given a baseline loss so it computes none
  (only its speed is measured here; tests/test_free_energy_devinterp.py compares the numbers);
- the limit: a bare training loop (forward + backward + plain SGD step), the cost floor of one SGLD step;
  timed in train mode (the reference limit; devinterp samples in train mode) and in eval mode (batch norm
  frozen, which is how we sample and is cheaper).

    python benchmarks/bench_free_energy.py                         # narrow ResNet, 16×16, batch 256, CPU
    python benchmarks/bench_free_energy.py --device cuda --model resnet18_cifar --image-size 32
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import torch
import torch.nn.functional as F

from freeenergy.free_energy import estimate_free_energy
from freeenergy.memory_format import conv_memory_format
from freeenergy.models import create_model
from freeenergy.runtime import resolve_device


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet_narrow")
    parser.add_argument("--width", type=int, default=16, help="resnet_narrow width")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--num-classes", type=int, default=64)
    parser.add_argument("--n", type=int, default=4096, help="dataset size")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=30)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of all measurements; the best of each is kept")
    parser.add_argument("--step-size", type=float, default=1e-6)
    parser.add_argument("--localization", type=float, default=100.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels-last", action="store_true", help="channels-last model and images, for all three")
    parser.add_argument("--skip-devinterp", action="store_true")
    return parser.parse_args()


def build(args: argparse.Namespace, device: torch.device):
    torch.manual_seed(0)
    kwargs = {"width": args.width} if args.model == "resnet_narrow" else {}
    model = create_model(args.model, num_classes=args.num_classes, **kwargs).to(device)
    images = torch.randn(args.n, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, args.num_classes, (args.n,), device=device)
    memory_format = conv_memory_format(args.channels_last, device)  # contiguous on a CPU without AVX-512 (issue 28)
    model, images = model.to(memory_format=memory_format), images.contiguous(memory_format=memory_format)
    return model, images, labels


def training_samples_per_second(model, images, labels, args, device, train_mode: bool = True) -> float:
    """Plain training: forward + backward + SGD step on random minibatches (batch norm in train or eval mode)."""
    model = _copy(model).train(train_mode)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    steps = args.chains * args.draws
    order = torch.randint(0, args.n, (args.warmup_steps + steps, args.batch_size), device=device)
    for step in range(args.warmup_steps + steps):
        if step == args.warmup_steps:
            _sync(device)
            start = time.perf_counter()
        loss = F.cross_entropy(model(images[order[step]]), labels[order[step]])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return steps * args.batch_size / (time.perf_counter() - start)


def ours_samples_per_second(model, images, labels, args, device, nbeta: float) -> float:
    options = dict(
        num_chains=args.chains,
        num_draws=args.draws,
        step_size=args.step_size,
        localization=args.localization,
        nbeta=nbeta,
        batch_size=args.batch_size,
        device=device,
    )
    estimate_free_energy(model, (images, labels), **{**options, "num_chains": 1, "num_draws": args.warmup_steps})
    estimate = estimate_free_energy(model, (images, labels), **options)
    if estimate.diverged:
        raise RuntimeError("our chains diverged; lower --step-size so the timing is of a healthy run.")
    return args.chains * args.draws * args.batch_size / estimate.sampling_time_s


def devinterp_samples_per_second(model, images, labels, args, device, nbeta: float) -> float:
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels), batch_size=args.batch_size, shuffle=True, drop_last=True
    )

    def run(chains: int, draws: int) -> float:
        start = time.perf_counter()
        estimate_learning_coeff_with_summary(
            _copy(model),
            loader,
            evaluate=lambda m, batch: F.cross_entropy(m(batch[0]), batch[1]),
            optimizer_kwargs=dict(lr=args.step_size, localization=args.localization, nbeta=nbeta),
            num_chains=chains,
            num_draws=draws,
            init_loss=1.0,
            device=device,
            verbose=False,
            seed=0,
        )
        _sync(device)
        return time.perf_counter() - start

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(1, args.warmup_steps)
        elapsed = run(args.chains, args.draws)
    return args.chains * args.draws * args.batch_size / elapsed


def _copy(model):
    import copy

    return copy.deepcopy(model)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


DEVINTERP_MISSING = (
    "devinterp is not installed, so its rows are skipped: install it with `pip install devinterp==1.3.2` "
    "(`./reproduce.sh test` installs it with the other test requirements)."
)


def devinterp_available() -> bool:
    try:
        import devinterp.slt.sampler  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    args = parse_args()
    if not args.skip_devinterp and not devinterp_available():
        print(DEVINTERP_MISSING)
        args.skip_devinterp = True
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, images, labels = build(args, device)
    nbeta = args.n / math.log(args.n)
    print(
        f"model={args.model} image_size={args.image_size} n={args.n} batch_size={args.batch_size} "
        f"chains={args.chains} draws={args.draws} device={device} threads={torch.get_num_threads()} "
        f"channels_last={args.channels_last} repeats={args.repeats} (best of each)"
    )
    best: dict[str, float] = {}
    for _ in range(args.repeats):  # interleaved rounds, best of each: robust to a busy machine
        measured = {
            "limit": training_samples_per_second(model, images, labels, args, device),
            "eval_limit": training_samples_per_second(model, images, labels, args, device, train_mode=False),
            "ours": ours_samples_per_second(model, images, labels, args, device, nbeta),
        }
        if not args.skip_devinterp:
            measured["devinterp"] = devinterp_samples_per_second(model, images, labels, args, device, nbeta)
        best = {key: max(value, best.get(key, 0.0)) for key, value in measured.items()}
    limit, eval_limit, ours = best["limit"], best["eval_limit"], best["ours"]
    print(f"plain training (limit)  {limit:10.0f} samples/s   (train mode, as devinterp samples)")
    print(f"  same, in eval mode    {eval_limit:10.0f} samples/s   (batch norm frozen, as we sample)")
    print(
        f"ours                    {ours:10.0f} samples/s   {ours / limit:.3f} of the limit, "
        f"{ours / eval_limit:.3f} of the eval-mode limit"
    )
    if "devinterp" in best:
        theirs = best["devinterp"]
        print(f"devinterp 1.3.2         {theirs:10.0f} samples/s   {theirs / limit:.3f} of the limit")
        print(f"ours / devinterp        {ours / theirs:10.2f}")


if __name__ == "__main__":
    main()
