"""Evaluation: verification metrics, evaluation sets, the LFW protocol, threshold calibration, plots."""
