"""Defaults of `scaling fit` that the command line shows, kept free of numpy so that parsing stays quick."""

OPTIONAL_METHODS = ("approach1", "approach2", "kaplan", "extrapolation")  # approach 3 always runs
DEFAULT_FIT_STARTS = 1000  # minimum size of approach 3's start grid: 4^5 = 1024 starts
DEFAULT_BOOTSTRAPS = 200  # replicates behind every 95% interval
RESAMPLING = ("luck", "runs")  # what a bootstrap replicate of approaches 1 and 2 redraws (analysis.bootstrap_methods)
