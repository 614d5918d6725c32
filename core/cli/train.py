"""Training commands. `register(sub)` calls every `register_*` function defined here
(`register_toy`: `train-toy`; image models add their own `register_*`)."""
from __future__ import annotations

import sys

from core.cli import emit
from core.errors import ScheduleLabError, unknown_name


def register_toy(sub):
    p = sub.add_parser("train-toy", help="train the MLP denoiser of a 2D toy (or `all`)")
    p.add_argument("name", help="toy name, a mixture JSON file, or `all`")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps (upper bound)")
    p.add_argument("--seconds", type=float, default=None, help="wall-time budget per toy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--uniform-frac", type=float, default=0.25,
                   help="fraction of sigmas drawn log-uniformly on [0.002, 80]")
    p.add_argument("--target", default="posterior", choices=["posterior", "data"],
                   help="regress on E[x0|x] (exact for mixtures; same minimiser) or on x0")
    p.add_argument("--wide-frac", type=float, default=None,
                   help="fraction of points with noise scaled by k in [1/wide-max, wide-max] "
                        "(posterior target only; default 0.3 there): teaches D off p_sigma")
    p.add_argument("--wide-max", type=float, default=3.0)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--xfeat", type=int, default=64, help="random Fourier features of x (0: none)")
    p.add_argument("--xscale", type=float, default=1.0, help="their frequency scale")
    p.add_argument("--out", default=None, help="a .safetensors file (one toy) or a folder; "
                                               "default checkpoints/toy_mlp/")
    p.add_argument("--card", action="store_true",
                   help="(re)write CARD.md in the output folder after training")
    p.add_argument("--card-only", action="store_true",
                   help="only (re)write CARD.md from the checkpoints already in the folder")
    p.add_argument("--error-n", type=int, default=20000,
                   help="points per sigma band for the model error stored with the weights")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_train_toy)


def _train_toy(a):
    from pathlib import Path

    from core.train.toy import TOY_MLP_DIR, default_path, write_card
    from toy_data import TOYS, get_toy
    if a.name != "all" and a.name not in TOYS and not Path(a.name).is_file():
        raise unknown_name("toy", a.name, TOYS + ("all", "FILE.json"))
    from core.device import set_threads
    set_threads(a.threads)
    toys = list(TOYS) if a.name == "all" else [a.name]
    out = Path(a.out) if a.out else None
    if out is not None and out.suffix == ".safetensors":
        if a.name == "all":
            raise ScheduleLabError("with `all`, --out is a folder (one TOY.safetensors per toy)")
        folder, outs = out.parent, [out]
    else:
        folder = out or TOY_MLP_DIR
        outs = [folder / default_path(t).name for t in toys]
    results = []
    if not a.card_only:
        for toy, out in zip(toys, outs):
            get_toy(toy)                                        # validates a JSON file early
            path, info = _train_one(a, toy, out)
            results.append({"toy": toy, "path": str(path), **info})
            if not a.json:
                print(f"{toy}: {info['steps']} steps in {info['seconds']} s, loss "
                      f"{info['final_loss']} -> {path}", file=sys.stderr)
    if a.card or a.card_only:
        card = write_card(folder)
        if not a.json:
            print(f"wrote {card}", file=sys.stderr)
    if a.json:
        emit(results, True)
    return 0


def _train_one(a, toy, out):
    from tqdm import tqdm

    from core.train.toy import train_and_save
    bar = None                               # created on the first step, after validation

    def progress(step, loss):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=a.steps, desc=f"train-toy {toy}", disable=a.quiet or a.json,
                       leave=False, mininterval=1.0)
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss:.4f}")
    try:
        return train_and_save(toy, out=out, progress=progress, error_n=a.error_n,
                              steps=a.steps, seconds=a.seconds,
                              seed=a.seed, batch=a.batch, lr=a.lr, ema=a.ema,
                              uniform_frac=a.uniform_frac, width=a.width, depth=a.depth,
                              xfeat=a.xfeat, xscale=a.xscale, target=a.target,
                              wide_frac=a.wide_frac, wide_max=a.wide_max, device=a.device)
    finally:
        if bar is not None:
            bar.close()


IMAGE_MODELS = ("digits", "classifier", "digits-flow")


def register_images(sub):
    p = sub.add_parser("train-images", help="train the shipped image model (digits UNet, EDM loss)")
    p.add_argument("name", help="digits (the UNet), classifier (the metric classifier) or digits-flow "
                                "(the class-conditional rectified-flow UNet)")
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
    if a.name not in IMAGE_MODELS:
        raise unknown_name("image model", a.name, IMAGE_MODELS)
    from core.device import set_threads
    set_threads(a.threads)
    over = {k: v for k, v in (("batch", a.batch), ("lr", a.lr), ("shift_prob", a.shift_prob))
            if v is not None}

    def progress(r):
        if not (a.quiet or a.json) and "epoch" in r:
            print(f"epoch {r['epoch']:3d}  loss {r['loss']:.4f}  {r['seconds']:5.0f} s", file=sys.stderr)
        elif not (a.quiet or a.json):
            print(f"step {r['step']:6d}  loss {r['loss']:.4f}  lr {r['lr']:.2e}  {r['seconds']:7.0f} s",
                  file=sys.stderr, flush=True)
    if a.name == "classifier" and not a.card_only:        # its card is the digits card
        from core.train.images import train_classifier
        rec = train_classifier(a.out, seed=a.seed, progress=progress)
        emit(rec, a.json, f"held-out accuracy {rec['held_out_accuracy']:.4f} -> {rec['path']}")
        return 0
    train, default_out, write = _image_trainer(a.name)
    if a.card_only:
        card = write()
        emit({"card": str(card)}, a.json, f"wrote {card}")
        return 0
    rec = train(a.out or default_out, steps=a.steps, minutes=a.minutes, seed=a.seed, progress=progress, **over)
    rec.pop("loss_curve")
    if a.card:
        rec["card"] = str(write())
    emit(rec, a.json, f"{rec['steps']} steps in {rec['seconds']} s -> {rec['path']}")
    return 0


def _image_trainer(name: str):
    """(train function, default checkpoint, card writer) of digits or digits-flow (the classifier's card
    is the digits card)."""
    if name == "digits-flow":
        from core.models.digits_flow import FLOW_CHECKPOINT
        from core.train.flow import train_digits_flow
        from core.train.flow_card import write_flow_card
        return train_digits_flow, FLOW_CHECKPOINT, write_flow_card
    from core.models.digits import DIGITS_CHECKPOINT
    from core.train.images import train_digits, write_card
    return train_digits, DIGITS_CHECKPOINT, write_card


def register(sub):
    """Register every `register_*` command of this module."""
    for name, fn in sorted(globals().items()):
        if name.startswith("register_") and callable(fn):
            fn(sub)
