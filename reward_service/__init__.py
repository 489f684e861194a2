"""Appearance reward (paper Eq. 5–6): metrics on pretrained CNN features, and the RewardWorker that
executes, renders and scores batches of parameter sets."""

from reward_service.config import MetricConfig, RewardConfig
from reward_service.metrics import AppearanceMetric, Descriptor, gram
from reward_service.worker import RequestError, RewardWorker, ScoreRequest, ScoreResult

__all__ = ["AppearanceMetric", "Descriptor", "MetricConfig", "RequestError", "RewardConfig", "RewardWorker",
           "ScoreRequest", "ScoreResult", "gram"]
