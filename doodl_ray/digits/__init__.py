"""A tiny, fully local model set on scikit-learn's bundled 8x8 digits: pixel DDIM UNets (balanced and
rare-class), a guide classifier and an independent judge. Small enough to train on a laptop CPU in
minutes, so DOODL can be tested end to end with nothing downloaded."""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "digits"  # the shipped, trained set
