"""Image data sets that ship offline (scikit-learn's digits)."""
