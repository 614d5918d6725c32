"""`cache list` / `cache clear`: the on-disk result caches (core.cache)."""
from __future__ import annotations

from core.cli import emit


def register(sub):
    p = sub.add_parser("cache", help="list or clear the on-disk result caches (.cache/schedule_lab)")
    inner = p.add_subparsers(dest="cache_action", required=True, parser_class=type(p))
    q = inner.add_parser("list", help="cached references and model samples, with sizes")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_list)
    q = inner.add_parser("clear", help="delete cached files")
    q.add_argument("--kind", default="all", choices=["all", "reference", "samples"])
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_clear)


def _list(a):
    from core import cache
    rows = cache.entries()
    total = sum(r["bytes"] for r in rows)
    lines = [f"{r['kind']:9s} {cache.human_bytes(r['bytes']):>9s}  {r['modified']}  {r['name']}" for r in rows]
    lines.append(f"{len(rows)} file(s), {cache.human_bytes(total)} in {cache.CACHE_ROOT}")
    emit({"root": str(cache.CACHE_ROOT), "files": rows, "bytes": total}, a.json, "\n".join(lines))


def _clear(a):
    from core import cache
    n = cache.clear(a.kind)
    emit({"removed": n, "kind": a.kind}, a.json, f"removed {n} cached file(s) ({a.kind}) from {cache.CACHE_ROOT}")
