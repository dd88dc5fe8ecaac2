"""Feature views. `card_state` and `terminal_state` hold tiled aggregates; windows are finished
at read time by services.common.features, the one implementation shared by stream, training and
scorer."""

from datetime import timedelta

from data_sources import card_state_push, terminal_state_push
from entities import card, terminal
from feast import FeatureView, Field
from feast.types import Array, Float64, Int64, String

card_state = FeatureView(
    name="card_state",
    entities=[card],
    # No TTL: the state itself knows its age (last_event_ms) and windows expire at read time.
    ttl=timedelta(0),
    schema=[
        Field(name="last_event_ms", dtype=Int64, description="Newest event time, epoch ms."),
        Field(name="m_idx", dtype=Array(Int64), description="Minute tile indices."),
        Field(name="m_cnt", dtype=Array(Int64), description="Transactions per minute tile."),
        Field(name="m_amt", dtype=Array(Float64), description="Spend per minute tile."),
        Field(name="m_sq", dtype=Array(Float64), description="Squared amounts per minute tile."),
        Field(name="h_idx", dtype=Array(Int64), description="Hour tile indices."),
        Field(name="h_cnt", dtype=Array(Int64), description="Transactions per hour tile."),
        Field(name="h_amt", dtype=Array(Float64), description="Spend per hour tile."),
        Field(name="h_sq", dtype=Array(Float64), description="Squared amounts per hour tile."),
        Field(name="d_idx", dtype=Array(Int64), description="Day tile indices."),
        Field(name="d_cnt", dtype=Array(Int64), description="Transactions per day tile."),
        Field(name="d_amt", dtype=Array(Float64), description="Spend per day tile."),
        Field(name="d_sq", dtype=Array(Float64), description="Squared amounts per day tile."),
        Field(name="h_term_idx", dtype=Array(Int64), description="Hour tile of each terminal."),
        Field(name="h_term_ids", dtype=Array(String), description="Terminals per hour tile."),
        Field(name="recent_ids", dtype=Array(String), description="Ids inside lateness, dedup."),
        Field(name="recent_ms", dtype=Array(Int64), description="Their event times."),
    ],
    source=card_state_push,
    online=True,
    tags={"owner": "fraudscore-stream"},
)

terminal_state = FeatureView(
    name="terminal_state",
    entities=[terminal],
    ttl=timedelta(0),
    schema=[
        Field(name="t_last_event_ms", dtype=Int64, description="Newest transaction time, ms."),
        Field(name="t_h_idx", dtype=Array(Int64), description="Hour tile indices."),
        Field(name="t_h_cnt", dtype=Array(Int64), description="Transactions per hour tile."),
        Field(name="t_h_fraud", dtype=Array(Int64), description="Known frauds per hour tile."),
        Field(name="t_d_idx", dtype=Array(Int64), description="Day tile indices."),
        Field(name="t_d_cnt", dtype=Array(Int64), description="Transactions per day tile."),
        Field(name="t_d_fraud", dtype=Array(Int64), description="Known frauds per day tile."),
        Field(name="t_src_partition", dtype=Array(Int64), description="Source partitions."),
        Field(name="t_src_offset", dtype=Array(Int64), description="Newest offset of each."),
        Field(name="t_fraud_ids", dtype=Array(String), description="Counted fraud labels."),
        Field(name="t_fraud_ms", dtype=Array(Int64), description="Their transaction times."),
    ],
    source=terminal_state_push,
    online=True,
    tags={"owner": "fraudscore-stream"},
)
