"""Simulated card transactions (the Fraud Detection Handbook's design) and their Kafka producer."""
