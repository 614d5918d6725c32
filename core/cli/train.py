"""Training commands. `register(sub)` calls every `register_*` function defined here
(`register_toy`: `train-toy`; image models add their own `register_*`)."""
from __future__ import annotations

import sys

from core.cli import emit
from core.errors import ScheduleLabError, unknown_name


IMAGE_MODELS = ("digits", "classifier")


def register_images(sub):
    p = sub.add_parser("train-images", help="train the shipped image model (digits UNet, EDM loss)")
    p.add_argument("name", help="digits (the UNet) or classifier (the metric classifier)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 4000)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget; stops when reached (with --steps: whichever comes first)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--shift-prob", type=float, default=None,
                   help="fraction of training images shifted by one pixel (augmentation; default 0)")
    p.add_argument("--out", default=None, help="output .safetensors (default checkpoints/digits/unet.safetensors)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--card", action="store_true", help="(re)write checkpoints/digits/CARD.md after training")
    p.add_argument("--card-only", action="store_true", help="only (re)write CARD.md from the shipped checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_train_images)


def _train_images(a):
    import torch

    from core.models.digits import DIGITS_CHECKPOINT
    from core.train.images import train_digits
    if a.name not in IMAGE_MODELS:
        raise unknown_name("image model", a.name, IMAGE_MODELS)
    if a.threads is not None:
        if a.threads < 1:
            raise ScheduleLabError(f"--threads must be >= 1; got {a.threads}")
        torch.set_num_threads(a.threads)
    over = {k: v for k, v in (("batch", a.batch), ("lr", a.lr), ("shift_prob", a.shift_prob))
            if v is not None}

    def progress(r):
        if not (a.quiet or a.json) and "epoch" in r:
            print(f"epoch {r['epoch']:3d}  loss {r['loss']:.4f}  {r['seconds']:5.0f} s", file=sys.stderr)
        elif not (a.quiet or a.json):
            print(f"step {r['step']:6d}  loss {r['loss']:.4f}  lr {r['lr']:.2e}  {r['seconds']:7.0f} s",
                  file=sys.stderr, flush=True)
    if a.card_only:
        from core.train.images import write_card
        card = write_card()
        emit({"card": str(card)}, a.json, f"wrote {card}")
        return 0
    if a.name == "classifier":
        from core.train.images import train_classifier
        rec = train_classifier(a.out, seed=a.seed, progress=progress)
        emit(rec, a.json, f"held-out accuracy {rec['held_out_accuracy']:.4f} -> {rec['path']}")
        return 0
    rec = train_digits(a.out or DIGITS_CHECKPOINT, steps=a.steps, minutes=a.minutes, seed=a.seed,
                       progress=progress, **over)
    rec.pop("loss_curve")
    if a.card:
        from core.train.images import write_card
        rec["card"] = str(write_card())
    emit(rec, a.json, f"{rec['steps']} steps in {rec['seconds']} s -> {rec['path']}")
    return 0


def register(sub):
    """Register every `register_*` command of this module."""
    for name, fn in sorted(globals().items()):
        if name.startswith("register_") and callable(fn):
            fn(sub)
