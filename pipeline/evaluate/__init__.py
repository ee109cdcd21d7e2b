"""Error statistics and gates shared by export parity, quantize accuracy and compare."""
