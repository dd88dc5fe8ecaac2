"""Feature services, named after model generations: a model fetches exactly what it was
trained on."""

from feast import FeatureService
from features import card_state, terminal_state

fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    features=[card_state],
    description="Inputs of the fraudscore LightGBM model, generation 1.",
)

fraud_model_v2 = FeatureService(
    name="fraud_model_v2",
    features=[card_state, terminal_state],
    description="Generation 2: card velocity, spend profile and terminals, plus terminal "
    "volume and known fraud risk.",
)
