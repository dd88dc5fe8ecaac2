"""Model monitoring: feature drift (PSI against the training window) and the score
distribution, read from the `scores` topic, as Prometheus gauges and a Markdown report."""
