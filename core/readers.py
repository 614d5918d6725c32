"""The one hardened reader for every user file and string: schedule JSON, mixture JSON, optimizer
state files and pasted text, for the command line and the app alike.

Everything a user hands in passes through here before any work:

    read_text(path, what)       bytes on disk -> str: size limit, UTF-8 (a binary file is refused)
    loads_json(text, what)      str -> JSON value: size, nesting-depth and digit limits; no NaN /
                                Infinity literals; every failure is a ScheduleLabError
    read_json(path, what)       both of the above
    number / integer / string / number_list / mapping / plain_json
                                one field, type and range checked, named in the message

Only the standard library and core.errors are imported, so toy_data can use it too.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from core.errors import ScheduleLabError

MAX_BYTES = 16 * 2 ** 20          # a user file or pasted text (16 MiB; a 40-step schedule is < 2 kB)
MAX_DEPTH = 32                    # JSON nesting (a mixture needs 3, a state 4)
MAX_DIGITS = 1000                 # characters in one JSON number literal (floats need < 25; 10**400 reaches the field check)
MAX_STRING = 1000                 # characters in a name-like field
MAX_ITEMS = 1_000_000             # numbers in one list


# ---- bytes and text ---------------------------------------------------------------------------
def read_text(path, what: str = "file", max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of a file (a leading BOM is dropped), or ScheduleLabError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ScheduleLabError(f"{what} {str(p)!r} not found" + (" (it is a folder)" if p.is_dir() else ""))
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise ScheduleLabError(f"{what} {str(p)!r} is {size:,} bytes; the limit is {max_bytes:,} "
                                   "(is it the right file?)")
        data = p.read_bytes()
    except OSError as e:
        raise ScheduleLabError(f"cannot read {what} {str(p)!r}: {e.strerror or e}") from None
    return decode(data, f"{what} {str(p)!r}")


def decode(data: bytes, what: str = "input") -> str:
    """bytes -> str as strict UTF-8 (BOM dropped); a binary file gives a clear error."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ScheduleLabError(f"{what} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                               "give a JSON or text file") from None
    if "\x00" in text:
        raise ScheduleLabError(f"{what} holds NUL bytes: a binary file, not JSON or text")
    return text


def check_text(text, what: str = "input", max_chars: int = MAX_BYTES) -> str:
    """A str within the size limit (bytes are decoded as UTF-8); anything else is refused."""
    if isinstance(text, (bytes, bytearray)):
        text = decode(bytes(text), what)
    if not isinstance(text, str):
        raise ScheduleLabError(f"{what} must be text; got {type(text).__name__}")
    if len(text) > max_chars:
        raise ScheduleLabError(f"{what} is {len(text):,} characters; the limit is {max_chars:,}")
    return text


# ---- JSON -------------------------------------------------------------------------------------
def _number_hook(kind):
    def parse(s: str):
        if len(s) > MAX_DIGITS:
            raise ScheduleLabError(f"a number in the JSON has {len(s)} characters (limit {MAX_DIGITS}): "
                                   f"{s[:20]}...")
        return int(s) if kind == "int" else float(s)
    return parse


def _no_constant(name: str):
    raise ScheduleLabError(f"the JSON holds {name}; every number must be finite (write a number)")


def loads_json(text, what: str = "JSON", max_depth: int = MAX_DEPTH):
    """Parse JSON text with size, depth and digit limits; NaN / Infinity literals are refused."""
    text = check_text(text, what)
    try:
        value = json.loads(text, parse_int=_number_hook("int"), parse_float=_number_hook("float"),
                           parse_constant=_no_constant)
    except ScheduleLabError as e:
        raise ScheduleLabError(f"{what}: {e}") from None
    except json.JSONDecodeError as e:
        raise ScheduleLabError(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise ScheduleLabError(f"{what} is nested too deeply (limit {max_depth} levels)") from None
    except (ValueError, OverflowError, MemoryError) as e:
        raise ScheduleLabError(f"{what} cannot be read as JSON: {e}") from None
    _check_depth(value, what, max_depth)
    return value


def read_json(path, what: str = "JSON file", max_depth: int = MAX_DEPTH):
    """read_text + loads_json."""
    return loads_json(read_text(path, what), f"{what} {str(path)!r}", max_depth)


def _check_depth(value, what: str, max_depth: int) -> None:
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            if d > max_depth:
                raise ScheduleLabError(f"{what} is nested too deeply (limit {max_depth} levels)")
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))


# ---- fields -----------------------------------------------------------------------------------
def _range_text(lo, hi, lo_open, hi_open) -> str:
    left = "any" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
    right = "" if hi is None else f" and {'<' if hi_open else '<='} {hi:g}"
    return left + right


def number(v, what: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> float:
    """A finite real number (int or float, not bool, not a string) in the given range, as float."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ScheduleLabError(f"{what} must be a number; got {_show(v)}")
    try:
        f = float(v)
    except OverflowError:
        raise ScheduleLabError(f"{what} = {_show(v)} is beyond the float range (about 1.8e308)") from None
    if not math.isfinite(f):
        raise ScheduleLabError(f"{what} is {f}; it must be a finite number")
    if ((lo is not None and (f < lo or (lo_open and f == lo)))
            or (hi is not None and (f > hi or (hi_open and f == hi)))):
        raise ScheduleLabError(f"{what} = {f:g} is out of range; it must be {_range_text(lo, hi, lo_open, hi_open)}")
    return f


def integer(v, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """An int (not bool; a float with an integer value is accepted) in [lo, hi]."""
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ScheduleLabError(f"{what} must be an integer; got {_show(v)}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]" if lo is not None else f"<= {hi}"
        raise ScheduleLabError(f"{what} = {_show(v)} is out of range; it must be {rng}")
    return v


def string(v, what: str, max_len: int = MAX_STRING, allow_none: bool = False):
    """A str of at most max_len characters (None passes through when allow_none)."""
    if v is None and allow_none:
        return None
    if not isinstance(v, str):
        raise ScheduleLabError(f"{what} must be a string; got {_show(v)}")
    if len(v) > max_len:
        raise ScheduleLabError(f"{what} is {len(v):,} characters long; the limit is {max_len:,}")
    return v


def number_list(v, what: str, min_len: int = 0, max_len: int = MAX_ITEMS, **bounds) -> list:
    """A list (or tuple) of finite numbers, each checked with `number(**bounds)`."""
    if not isinstance(v, (list, tuple)):
        raise ScheduleLabError(f"{what} must be a list of numbers; got {_show(v)}")
    if not min_len <= len(v) <= max_len:
        raise ScheduleLabError(f"{what} has {len(v):,} entries; it needs between {min_len} and {max_len:,}")
    return [number(x, f"{what}[{i}]", **bounds) for i, x in enumerate(v)]


def mapping(v, what: str, allow_none: bool = False) -> dict | None:
    """A dict with string keys (None passes through when allow_none)."""
    if v is None and allow_none:
        return None
    if not isinstance(v, dict):
        raise ScheduleLabError(f"{what} must be a JSON object {{...}}; got {_show(v)}")
    return v


def plain_json(v, what: str, max_items: int = 10_000, max_depth: int = 8):
    """A JSON-serialisable value of bounded size (e.g. a schedule's params), checked by walking it."""
    count, stack = 0, [(v, 0)]
    while stack:
        x, d = stack.pop()
        count += 1
        if count > max_items or d > max_depth:
            raise ScheduleLabError(f"{what} is too large (limit {max_items} values, {max_depth} levels)")
        if isinstance(x, dict):
            for k, y in x.items():
                if not isinstance(k, str):
                    raise ScheduleLabError(f"{what} has a non-string key {_show(k)}")
                stack.append((y, d + 1))
        elif isinstance(x, (list, tuple)):
            stack.extend((y, d + 1) for y in x)
        elif isinstance(x, float) and not math.isfinite(x):
            raise ScheduleLabError(f"{what} holds {x}; values must be finite")
        elif isinstance(x, str) and len(x) > MAX_STRING * 10:
            raise ScheduleLabError(f"{what} holds a string of {len(x):,} characters")
        elif not (x is None or isinstance(x, (str, int, float, bool))):
            raise ScheduleLabError(f"{what} holds a {type(x).__name__}; only JSON values are allowed")
    return v


def _show(v) -> str:
    """A short description of a bad value for a message."""
    r = repr(v) if not isinstance(v, int) or isinstance(v, bool) or abs(v) < 10 ** 30 else f"an integer of about {int(v.bit_length() * 0.30103) + 1} digits"
    return r if len(r) <= 60 else f"{type(v).__name__} {r[:50]}..."


def strict_json(o):
    """NaN / inf -> None, recursively through dicts, lists and tuples: strict JSON in which a diverged
    value is never written as a number (the writing side of this module's rules)."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: strict_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [strict_json(v) for v in o]
    return o
