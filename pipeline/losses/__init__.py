"""Losses. Each returns a scalar tensor; one concept per module."""

from pipeline.losses.combined import WeightedSumLoss
from pipeline.losses.contrastive import ContrastiveLoss, contrastive_pair_loss
from pipeline.losses.margin_softmax import MarginSoftmaxLoss
from pipeline.losses.multi_similarity import MultiSimilarityLoss
from pipeline.losses.triplet import TripletLoss

__all__ = ["ContrastiveLoss", "contrastive_pair_loss", "TripletLoss", "MarginSoftmaxLoss", "WeightedSumLoss",
           "MultiSimilarityLoss"]
