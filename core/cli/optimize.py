"""`optimize METHOD ...` and `curves KIND ...`: one sub-module per method, so each method
owns its own arguments.  Each module exposes `add_arguments(parser)` and `run(args) -> int`."""
from __future__ import annotations

from core.optional import optional

OPTIMIZE = {"ays": "core.cli.opt_ays", "nonuniform": "core.cli.opt_nonuniform",
            "score-optimal": "core.cli.opt_score", "gits": "core.cli.opt_gits", "oss": "core.cli.opt_oss",
            "ld3": "core.cli.opt_ld3"}
CURVES = {"klub": "core.cli.curve_klub", "stein": "core.cli.curve_stein",
          "truncation": "core.cli.curve_truncation"}


def _nested(sub, name, help_, table):
    p = sub.add_parser(name, help=help_)
    inner = p.add_subparsers(dest=f"{name}_kind", required=True, parser_class=type(p))
    for key, mod in table.items():
        m = optional(mod)
        if m is None:
            continue
        q = inner.add_parser(key, help=(m.__doc__ or "").strip().splitlines()[0] if m.__doc__ else None)
        m.add_arguments(q)
        q.set_defaults(func=m.run)


def register(sub):
    _nested(sub, "optimize", "optimize a schedule", OPTIMIZE)
    _nested(sub, "curves", "per-interval cost curves of a schedule", CURVES)
