"""Mechanism analysis of one model: metrics, attribution, patching, knockout, head classes."""
