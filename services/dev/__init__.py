"""The local stack: embedded broker, Feast repo, stream worker and scorer, for laptops and demos."""
