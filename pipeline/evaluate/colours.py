"""The charts' colours, as our users draw them by hand: the float baseline light grey, w8a8 dark red,
FP8 (on GPUs that run it) a dark blue beside them."""

from pipeline.targets.base import FP8, QUANTIZED

BASELINE_COLOUR = "#d3d3d3"  # light grey
W8A8_COLOUR = "#8b0000"  # dark red
FP8_COLOUR = "#1f4e79"  # dark blue
QUANTIZED_COLOURS = {QUANTIZED: W8A8_COLOUR, FP8: FP8_COLOUR}  # by a target's precision
