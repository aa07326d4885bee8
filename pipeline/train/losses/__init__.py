"""Losses. Each returns a scalar tensor; one concept per module."""

from pipeline.train.losses.combined import WeightedSumLoss
from pipeline.train.losses.contrastive import ContrastiveLoss, contrastive_pair_loss
from pipeline.train.losses.margin_softmax import MarginSoftmaxLoss
from pipeline.train.losses.multi_similarity import MultiSimilarityLoss
from pipeline.train.losses.triplet import TripletLoss

__all__ = ["ContrastiveLoss", "contrastive_pair_loss", "TripletLoss", "MarginSoftmaxLoss", "WeightedSumLoss",
           "MultiSimilarityLoss"]
