"""`convert`: read a schedule another tool printed, under an explicit convention, and export it.

    python -m core convert TEXT_OR_FILE [--from auto|sigmas|timesteps|flow] [--table NAME]
                           [--format FORMAT] [--json]
TEXT_OR_FILE is the text itself, a file path, or '-' for stdin.
"""
from __future__ import annotations

import sys
from pathlib import Path

from core.cli import emit
from core.errors import ScheduleLabError


def register(sub):
    from core.schedules import FORMATS
    from core.schedules.imports import CONVENTIONS
    p = sub.add_parser("convert", help="import a printed schedule (tensor, list, JSON, ComfyUI string) and export it")
    p.add_argument("source", metavar="TEXT_OR_FILE", help="the text, a file path, or - for stdin")
    p.add_argument("--from", dest="convention", default="auto", choices=CONVENTIONS,
                   help="what the numbers are: EDM sigmas, a model's training timesteps (needs --table), "
                        "or flow-matching t (sigma = t / (1 - t)); auto refuses anything ambiguous")
    p.add_argument("--table", default=None, help="noise table: sd15|sdxl|sd2|ddpm-linear|ddpm-cosine or a "
                                                 "diffusers scheduler config JSON")
    p.add_argument("--format", default="json", choices=FORMATS)
    p.add_argument("--name", default="imported")
    p.add_argument("--model", default=None, help="model named in the provenance comment")
    p.add_argument("--json", action="store_true", help="print {sigmas, steps, convention, text} as JSON")
    p.set_defaults(func=_convert)


def read_source(src: str):
    """The text: stdin for '-', a file's bytes when the path exists, else the argument itself."""
    from core.schedules.imports import MAX_CHARS
    if src == "-":
        return sys.stdin.buffer.read(MAX_CHARS + 1)
    p = Path(src)
    try:
        is_file = len(src) < 4096 and p.is_file()
    except (OSError, ValueError):                 # e.g. a NUL byte in the text
        is_file = False
    if is_file:
        if p.stat().st_size > MAX_CHARS:
            raise ScheduleLabError(f"{src!r} is larger than {MAX_CHARS} bytes; a schedule is a short list")
        return p.read_bytes()
    return src


def _convert(a):
    from core.schedules import export, parse
    from core.schedules.io import provenance
    s = parse(read_source(a.source), name=a.name, convention=a.convention, table=a.table)
    text = export(s, a.format, table=a.table, model=a.model)
    if a.json:
        emit({"name": s.name, "steps": s.steps, "convention": s.params.get("convention"),
              "sigmas": list(s.sigmas), "format": a.format, "text": text}, True)
        return
    if a.format in ("comfyui", "list"):
        sys.stderr.write("# " + provenance(s, a.model) + "\n")
    print(text)
