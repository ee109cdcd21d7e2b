"""Example models trained on scikit-learn's bundled digits (no download)."""
