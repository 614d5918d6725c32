"""app_lib.plots presentation helpers and the app's Streamlit config: log-sigma axes tick at
1-2-5 x 10^k only (decades only when that is crowded); the toolbar hides Deploy."""
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from app_lib import plots
from core.schedules import make_schedule

ROOT = Path(__file__).resolve().parents[1]


def _mantissas(ticks):
    return {round(t / 10 ** math.floor(math.log10(t)), 9) for t in ticks}


def test_sigma_ticks_are_1_2_5_within_the_range_or_decades_when_crowded():
    t = plots.sigma_ticks([[0.03, 0.5, 1.2, 0.0]])            # the final 0 is ignored
    assert t["tickvals"] == pytest.approx([0.05, 0.1, 0.2, 0.5, 1.0])
    assert t["ticktext"] == ["0.05", "0.1", "0.2", "0.5", "1"]
    wide = plots.sigma_ticks([[0.002, 80.0]])                 # 14 ticks at 1-2-5: decades only
    assert wide["tickvals"] == pytest.approx([0.01, 0.1, 1.0, 10.0])
    assert plots.sigma_ticks([[3.0, 4.0]]) == {}               # nothing to mark: plotly's own ticks
    assert plots.sigma_ticks([]) == {}


def test_log_sigma_charts_use_them():
    scheds = {"karras": make_schedule("karras", 10, 0.02, 14.6)}
    fig = plots.schedules_fig(scheds).to_plotly_json()
    vals = fig["layout"]["yaxis"]["tickvals"]
    assert _mantissas(vals) <= {1.0, 2.0, 5.0} and min(vals) >= 0.02 and max(vals) <= 14.6
    fig = plots.schedule_points_fig(scheds).to_plotly_json()
    assert _mantissas(fig["layout"]["xaxis"]["tickvals"]) <= {1.0, 2.0, 5.0}
    fig = plots.editor_fig(scheds["karras"].sigmas, np.asarray(scheds["karras"].sigmas[:-1]), 2).to_plotly_json()
    assert _mantissas(fig["layout"]["yaxis"]["tickvals"]) <= {1.0, 2.0, 5.0}


def test_streamlit_config_hides_deploy():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["client"]["toolbarMode"] == "minimal"
    from streamlit import config
    assert "client.toolbarMode" in config._config_options_template    # a real option of this Streamlit
