"""The Siamese encoder and its distances."""

from pipeline.model.distances import cosine_similarity, euclidean_distance, pairwise_cosine
from pipeline.model.encoder import SiameseEncoder, build_encoder

__all__ = ["SiameseEncoder", "build_encoder", "cosine_similarity", "euclidean_distance", "pairwise_cosine"]
