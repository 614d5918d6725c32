"""Shared helpers for the AppTest page tests: start the app on a page, read plotted data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


def open_page(page: str, toy: str = "gaussian", timeout: float = 120, **state) -> AppTest:
    """AppTest of app.py switched to pages/PAGE.py, with the sidebar toy and extra session state."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.session_state["sb_toy"] = toy
    for k, v in state.items():
        at.session_state[k] = v
    if page != "playground":
        at.switch_page(f"pages/{page}.py")      # before the first run: by file name, skips the start page
    at.run()
    assert_clean(at)
    return at


def assert_clean(at: AppTest) -> None:
    """No exception block and no st.error on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def figures(at: AppTest) -> dict:
    """{chart key: plotly figure dict} of every plotly chart on the page."""
    return {el.key: json.loads(el.proto.spec) for el in at.get("plotly_chart")}


def trace(fig: dict, name: str) -> dict:
    hits = [t for t in fig["data"] if t.get("name") == name]
    assert hits, f"no trace {name!r} in {[t.get('name') for t in fig['data']]}"
    return hits[0]


def require(module: str):
    """Import an engine module another branch delivers; ImportError (-> xfail) when missing."""
    import importlib
    return importlib.import_module(module)


missing_ok = pytest.mark.xfail(raises=ImportError, strict=False,
                               reason="engine module from another branch not merged yet")


def arr(v):
    """A plotly JSON array (a list, or a typed array {"dtype", "bdata", "shape"}) -> numpy."""
    import base64

    import numpy as np
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(s) for s in str(v["shape"]).split(",")]) if "shape" in v else a
    return np.asarray(v, dtype=np.float64)
