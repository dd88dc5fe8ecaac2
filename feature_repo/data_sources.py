"""Sources. The stream pushes card and terminal state online and appends their history, the
transaction log and the label log to the offline store as parquet part files (one folder each)."""

from feast import FileSource, PushSource

# Relative paths resolve against the repo folder, so every prepared repo has its own data.
card_state_history = FileSource(
    name="card_state_history",
    path="data/card_state/",
    timestamp_field="event_timestamp",
    description="One row per applied transaction: the card state after it.",
)

card_state_push = PushSource(
    name="card_state_push",
    batch_source=card_state_history,
    description="The stream processor's batched online writes.",
)

terminal_state_history = FileSource(
    name="terminal_state_history",
    path="data/terminal_state/",
    timestamp_field="event_timestamp",
    description="One row per terminal state change: after each counted transaction (stamped "
    "with its event time) and each counted fraud label (stamped with its reported time).",
)

terminal_state_push = PushSource(
    name="terminal_state_push",
    batch_source=terminal_state_history,
    description="The stream's terminal agent's batched online writes.",
)

transactions_log = FileSource(
    name="transactions_log",
    path="data/transactions/",
    timestamp_field="event_timestamp",
    description="Every counted transaction: the entity rows training joins features onto.",
)

fraud_labels_log = FileSource(
    name="fraud_labels_log",
    path="data/labels/",
    timestamp_field="reported_at",
    description="Fraud labels as they arrived; training keeps those known at its cutoff.",
)
