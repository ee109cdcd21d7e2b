"""The charts' colours, as our users draw them by hand: the float baseline light grey, w8a8 dark red."""

BASELINE_COLOUR = "#d3d3d3"  # light grey
W8A8_COLOUR = "#8b0000"  # dark red
