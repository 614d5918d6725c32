"""Command line: `python -m core <command> ...` (a contract: tests and scripts rely on it).

Each command lives in a small module exposing `register(subparsers)`; a bad value exits
with status 2 and one line on stderr naming it and the valid choices. `--json` prints
JSON on stdout.
"""
from __future__ import annotations

import argparse
import json
import sys

from core.errors import ScheduleLabError
from core.optional import optional

COMMAND_MODULES = ["core.cli.basic", "core.cli.train", "core.cli.optimize",
                   "core.cli.images", "core.cli.convert", "core.cli.cache", "core.cli.tune"]


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad value on one line (no usage dump)."""

    def error(self, message):
        sys.stderr.write(f"error: {self.prog}: {message}\n")
        raise SystemExit(2)


def parse_params(items) -> dict:
    """['rho=7', 'c=0.5', 'n_hidden=16,32', 'strict=false', 'cfg={"a": 1}'] -> {'rho': 7, 'c': 0.5,
    'n_hidden': [16, 32], 'strict': False, 'cfg': {'a': 1}}: numbers when they parse, true/false as
    booleans, comma-separated values as lists (for constructor kwargs), a value starting with [ or {
    as JSON; else strings."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ScheduleLabError(f"--param {it!r} must look like key=value")
        k, v = it.split("=", 1)
        if v.lstrip()[:1] in ("[", "{"):
            try:
                out[k] = json.loads(v)
            except ValueError as e:
                raise ScheduleLabError(f"--param {k}: {v!r} is not valid JSON ({e})") from None
        elif "," in v:
            out[k] = [_scalar(p.strip()) for p in v.split(",") if p.strip()]
        else:
            out[k] = _scalar(v)
    return out


def _scalar(v: str):
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    try:
        return int(v) if v.lstrip("-").isdigit() else float(v)
    except ValueError:
        return v


def _clean(o):
    """NaN / inf -> None so the output is strict JSON (core.readers.strict_json)."""
    from core.readers import strict_json
    return strict_json(o)


def emit(obj, as_json: bool, text: str | None = None) -> None:
    """Print strict JSON (stdout; NaN -> null) or a human text."""
    if as_json:
        print(json.dumps(_clean(obj), indent=1, default=float))
    else:
        print(text if text is not None else json.dumps(obj, indent=1, default=float))


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m core", description="Schedule Lab engine")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for mod in COMMAND_MODULES:
        m = optional(mod)
        if m is not None:
            m.register(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from core.cli.checks import validate_args
        validate_args(args)                              # every value checked before any work
        return int(args.func(args) or 0)
    except ScheduleLabError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
