"""Command-line tools: the simulator and demo, explain, usage reports, calibration and evaluation."""
