"""Small shared UI helpers for the Streamlit app: session settings and the schedule library
(`state`), plotly figure builders (`plots`), guarded imports of engine parts that may be
missing from a build (`optional`), and the optimizer driver (`runner`). Nothing here computes
a number: every number comes from core/."""
