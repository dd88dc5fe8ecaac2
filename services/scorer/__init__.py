"""The gRPC fraud scorer: LightGBM on Feast online features, with a rule-based fallback."""
