"""Metric tables for the pages: the winner of every metric column highlighted, and the same table
as CSV for a download. No maths beyond picking the best finite value (app_lib.engine.winner)."""
from __future__ import annotations

import pandas as pd

from app_lib.engine import winner

HIGHLIGHT = "background-color: rgba(46, 160, 67, 0.25); font-weight: 600"


def metric_table(rows: list, metrics: dict, key_col: str = "schedule") -> tuple:
    """rows: [{column: value}]; metrics: {column: lower_is_better} for the columns to rank.

    Returns (styler, winners, csv): a pandas Styler with each metric's best cell highlighted,
    {column: the key_col value of its winner (None when no finite value)}, and the table as CSV text."""
    df = pd.DataFrame(rows)
    winners = {}
    for col, lower in metrics.items():
        if col in df:
            w = winner(dict(zip(range(len(df)), df[col].tolist())), lower_is_better=lower)
            winners[col] = None if w is None else df[key_col].iloc[w]
    best_idx = {col: df.index[df[key_col] == w][0] for col, w in winners.items() if w is not None}

    def style(col: pd.Series):
        i = best_idx.get(col.name)
        return [HIGHLIGHT if i is not None and idx == i else "" for idx in col.index]

    fmt = {c: "{:.4g}" for c in df.columns if pd.api.types.is_float_dtype(df[c])}
    styler = df.style.apply(style, axis=0, subset=[c for c in metrics if c in df]).format(fmt, na_rep="—")
    return styler, winners, df.to_csv(index=False)
