"""Orchestration: which models are trained and analysed, in what order, what is cached and
resumed. The maths lives below (analysis, compare); rendering above (report)."""
