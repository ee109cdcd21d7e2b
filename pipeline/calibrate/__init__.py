"""Calibration: activation ranges from real data, streamed with bounded memory."""
