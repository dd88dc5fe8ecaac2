"""Code shared by every fraudscore service: settings, logging, features, Kafka and Feast helpers."""
