"""Schedule Lab: how the sampling schedule changes what a diffusion sampler does.

Run with `make app` (or `streamlit run app.py`). Six pages share one sidebar (device, seed,
toy and toy model, the optimizer run's progress); every number on them comes from the engine in core/.
"""
import streamlit as st
import torch

from app_lib.runs import run_indicator
from app_lib.state import sidebar
from core.device import app_threads
from core.errors import ScheduleLabError

st.set_page_config(page_title="Schedule Lab", layout="wide")
try:
    torch.set_num_threads(app_threads())           # 1 unless $SCHEDULE_LAB_THREADS says otherwise
except ScheduleLabError as e:                       # a bad value: say so, go on with torch's own setting
    st.warning(str(e))

PAGES = [
    st.Page("pages/playground.py", title="Playground", icon=":material/scatter_plot:", default=True),
    st.Page("pages/error_curves.py", title="Error curves", icon=":material/ssid_chart:"),
    st.Page("pages/optimizer.py", title="Optimizer", icon=":material/tune:"),
    st.Page("pages/tune.py", title="Tune", icon=":material/emoji_events:"),
    st.Page("pages/images.py", title="Images", icon=":material/image:"),
    st.Page("pages/schedules.py", title="Schedules", icon=":material/list:"),
]

page = st.navigation(PAGES)
sidebar()
run_indicator()          # the session's optimizer run, on every page
page.run()
