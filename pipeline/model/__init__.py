"""The Siamese encoder and its distances."""

from pipeline.model.distances import (
    cosine_similarity,
    euclidean_distance,
    pairwise_cosine,
)
from pipeline.model.encoder import (
    Encoder,
    EnsembleEncoder,
    SiameseEncoder,
    build_encoder,
    build_model,
)

__all__ = ["Encoder", "EnsembleEncoder", "SiameseEncoder", "build_encoder", "build_model", "cosine_similarity", "euclidean_distance", "pairwise_cosine"]
