"""The stream processor: Kafka transactions and labels -> card states in Feast (online and
offline), malformed messages -> the DLQ."""
