"""A veRL reward function that scores each response on the reward-triton gateway (docs/rl.md).

    custom_reward_function.path=docs/examples/verl_reward.py custom_reward_function.name=compute_score

veRL calls `compute_score(data_source, solution_str, ground_truth, extra_info)` once per response, with the
decoded RESPONSE only; the prompt must come from the dataset, here `extra_info["question"]` (veRL's own data
preprocessing scripts store it there). The conversation is sent as OpenAI messages to `POST /pooling`, whose
`reward` is the model's scalar reward (`REWARD_WEIGHTS`, JSON, replaces the checkpoint's weights).
Environment: REWARD_GATEWAY_URL (default http://localhost:9000), REWARD_API_KEY if the gateway has one.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

URL = os.environ.get("REWARD_GATEWAY_URL", "http://localhost:9000").rstrip("/")


def compute_score(data_source: str, solution_str: str, ground_truth: Any = None, extra_info: Any = None) -> float:
    question = (extra_info or {}).get("question")
    if not isinstance(question, str):
        raise ValueError(f"{data_source}: extra_info['question'] (the prompt) is needed to score a response")
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": solution_str}]
    }
    if os.environ.get("REWARD_WEIGHTS"):
        body["weights"] = json.loads(os.environ["REWARD_WEIGHTS"])
    headers = {"Content-Type": "application/json"}
    if os.environ.get("REWARD_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['REWARD_API_KEY']}"
    request = urllib.request.Request(f"{URL}/pooling", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=600) as response:
        return float(json.load(response)["data"][0]["reward"])
