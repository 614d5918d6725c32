"""Shared helpers for the AppTest page tests: start the app on a page, read plotted data."""
from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


CHEAP_START = {"pg_steps": 2, "pg_n": 500, "pg_seeds": 1, "pg_paths": 4}


def open_page(page: str, toy: str = "gaussian", timeout: float = 120, **state) -> AppTest:
    """AppTest of app.py (navigation + sidebar) on pages/PAGE.py, with the sidebar's toy and extra
    session state. Other pages are reached as a user does: app.py starts on the playground (kept
    cheap unless the test sets its widgets), then the page is switched."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.session_state["sb_toy"] = toy
    start = {} if page == "playground" else CHEAP_START
    for k, v in {**start, **state}.items():
        at.session_state[k] = v
    at.run()
    assert at.sidebar.selectbox(key="sb_toy").value == toy          # the shared sidebar is there
    if page != "playground":
        # (AppTest 1.67 drops sidebar elements from its tree after switch_page; a real browser
        # keeps them: tests/test_browser.py checks the sidebar on every page)
        at.switch_page(f"pages/{page}.py").run()
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




def arr(v):
    """A plotly JSON array (a list, or a typed array {"dtype", "bdata", "shape"}) -> numpy."""
    import base64

    import numpy as np
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(s) for s in str(v["shape"]).split(",")]) if "shape" in v else a
    return np.asarray(v, dtype=np.float64)

