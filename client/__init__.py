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
from client.replicas import ReplicaPool, connect

__all__ = [
    "ModelMetadata",
    "ReplicaPool",
    "RequestRejected",
    "RetryPolicy",
    "RewardClient",
    "RewardClientError",
    "Score",
    "ServerFailure",
    "connect",
]
