"""Data layer: cohort discovery and splits, MONAI transform chains, the 2D slice cache."""
