"""Throughput of minifm's ViT against transformers' ViT of the same configuration.

Both models get the same weights (minifm's is converted from the transformers one) and the same
batches. Forward passes run without gradients in eval mode; a training step is forward, loss,
backward and an AdamW update. The two models alternate, round after round, so that a machine
busy with something else slows both alike, and the reported figure is the median over rounds.
The ratio is minifm's images/s divided by transformers' images/s, both measured in this run.

    python benchmarks/vit.py                      # CPU-sized default
    python benchmarks/vit.py --hidden-size 768 --layers 12 --image-size 224 --patch-size 16 \
        --batch-size 64 --device cuda --json results/vit.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import ViTConfig, ViTForImageClassification

from minifm.attention import set_attention_backend
from minifm.hf import from_transformers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device: torch.device, repeats: int) -> float:
    """Return the seconds one call of `fn` takes, averaged over `repeats` calls."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def forward_step(model, images):
    def run():
        with torch.no_grad():
            model(images)

    return run


def training_step(model, images, labels, hf: bool):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run():
        logits = model(images).logits if hf else model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return run


def measure(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=args.image_size,
        patch_size=args.patch_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden_size,
        num_labels=10,
    )
    hf_model = ViTForImageClassification(config).to(device)
    ours = set_attention_backend(from_transformers(hf_model.eval()).to(device), args.backend)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)

    results = {}
    for mode in ("forward", "train"):
        if mode == "forward":
            hf_model.eval(), ours.eval()
            steps = {
                "minifm": forward_step(ours, images),
                "transformers": forward_step(hf_model, images),
            }
        else:
            hf_model.train(), ours.train()
            steps = {
                "minifm": training_step(ours, images, labels, hf=False),
                "transformers": training_step(hf_model, images, labels, hf=True),
            }
        for step in steps.values():
            time_call(step, device, args.warmup)
        seconds = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                seconds[name].append(time_call(step, device, args.repeats))
        rates = {name: args.batch_size / statistics.median(s) for name, s in seconds.items()}
        results[mode] = {**rates, "ratio": rates["minifm"] / rates["transformers"]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--patch-size", type=int, default=4, help="patch side in pixels")
    parser.add_argument("--hidden-size", type=int, default=192, help="model width D")
    parser.add_argument("--layers", type=int, default=6, help="number of transformer blocks")
    parser.add_argument("--heads", type=int, default=3, help="attention heads")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    parser.add_argument("--backend", default="sdpa", help="minifm attention backend")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per step first")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--repeats", type=int, default=3, help="calls per timing")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()

    results = measure(args)
    print(
        f"ViT width {args.hidden_size}, depth {args.layers}, "
        f"{(args.image_size // args.patch_size) ** 2} patches, batch {args.batch_size}, "
        f"{args.device}, minifm backend {args.backend!r}, torch {torch.__version__}\n"
    )
    print("| pass | minifm images/s | transformers images/s | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for mode, row in results.items():
        print(f"| {mode} | {row['minifm']:.1f} | {row['transformers']:.1f} | {row['ratio']:.3f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "machine": platform.processor(),
        }
        args.json.write_text(json.dumps({**record, "results": results}, indent=2))


if __name__ == "__main__":
    main()
