"""How the notebooks show plotly figures: the interactive figure, plus a static PNG of it in the
same output when a static renderer works here.

A notebook viewer that cannot run plotly's JavaScript (a repository page, nbviewer without
widgets) shows the PNG; Jupyter shows the interactive figure. The PNG comes from kaleido >= 1,
which drives a Chrome / Chromium binary (found by choreographer: Debian's /usr/bin/chromium
works). Without kaleido or a browser the notebook still runs, with interactive outputs only.
"""
from __future__ import annotations

import atexit
import warnings

import plotly.graph_objects as go
import plotly.io as pio

INTERACTIVE = "plotly_mimetype"          # light outputs; Jupyter renders them natively
BOTH = "plotly_mimetype+png"             # one output with both mime types


def use_static_images() -> str:
    """Set plotly's default renderer (interactive + PNG when possible) and say which one is used.
    A PNG has its figure's layout width / height (plotly's 700 x 500 where the layout sets none)."""
    pio.renderers.default = INTERACTIVE
    try:
        import kaleido
    except ImportError:
        return "figures: interactive only (no static renderer: kaleido is not installed)"
    # plotly passes kaleido options on every call, which a running server ignores (harmless)
    warnings.filterwarnings("ignore", message="The kopts argument is ignored")
    try:
        kaleido.start_sync_server(silence_warnings=True)      # one browser for all figures (~0.2 s each)
        atexit.register(kaleido.stop_sync_server, silence_warnings=True)
        pio.to_image(go.Figure(), format="png", width=20, height=20)   # a browser is really there
    except Exception as e:                                    # no Chrome / Chromium, sandbox refusals
        try:
            kaleido.stop_sync_server(silence_warnings=True)
        except Exception:
            pass
        return f"figures: interactive only (no static renderer: {type(e).__name__})"
    pio.renderers.default = BOTH
    return "figures: interactive, with a static PNG of each"
