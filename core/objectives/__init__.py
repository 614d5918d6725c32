"""Per-interval costs: KLUB (AYS), Stein cost (score-optimal), truncation bound (DM-NonUniform)."""
