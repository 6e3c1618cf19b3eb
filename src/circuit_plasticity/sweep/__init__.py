"""Dose-response sweeps: many studies, one command (spec, executors, results, report)."""
