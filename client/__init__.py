"""gRPC client library and `reward-client` CLI for the reward models served by this project's Triton repository."""

from client.api import (
    ModelMetadata,
    RequestRejected,
    RetryPolicy,
    RewardClient,
    RewardClientError,
    Score,
    ServerFailure,
)

__all__ = [
    "ModelMetadata",
    "RequestRejected",
    "RetryPolicy",
    "RewardClient",
    "RewardClientError",
    "Score",
    "ServerFailure",
]
