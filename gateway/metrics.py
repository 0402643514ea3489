"""The gateway's request metrics in Prometheus text format (`GET /metrics`)."""

from __future__ import annotations

import bisect
from collections import Counter


class Metrics:
    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.latency: dict[str, list[float]] = {}  # route -> per-bucket counts (+Inf last), then sum
        self.prompt_tokens = 0
        self.in_flight = 0

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests[(route, method, status)] += 1
        row = self.latency.setdefault(route, [0.0] * (len(self.BUCKETS) + 2))
        row[bisect.bisect_left(self.BUCKETS, seconds)] += 1
        row[-1] += seconds

    def render(self) -> str:
        out = [
            "# HELP reward_openai_requests_total HTTP requests by route, method and status.",
            "# TYPE reward_openai_requests_total counter",
        ]
        for (route, method, status), n in sorted(self.requests.items()):
            out.append(f'reward_openai_requests_total{{route="{route}",method="{method}",status="{status}"}} {n}')
        out += [
            "# HELP reward_openai_request_duration_seconds HTTP request latency by route.",
            "# TYPE reward_openai_request_duration_seconds histogram",
        ]
        for route, row in sorted(self.latency.items()):
            cumulative = 0.0
            for bound, n in zip([*map(str, self.BUCKETS), "+Inf"], row[:-1], strict=True):
                cumulative += n
                out.append(
                    f'reward_openai_request_duration_seconds_bucket{{route="{route}",le="{bound}"}} {cumulative:g}'
                )
            out.append(f'reward_openai_request_duration_seconds_sum{{route="{route}"}} {row[-1]:.6f}')
            out.append(f'reward_openai_request_duration_seconds_count{{route="{route}"}} {cumulative:g}')
        out += [
            "# HELP reward_openai_prompt_tokens_total Tokens scored by the ensemble.",
            "# TYPE reward_openai_prompt_tokens_total counter",
            f"reward_openai_prompt_tokens_total {self.prompt_tokens}",
            "# HELP reward_openai_requests_in_flight HTTP requests being served.",
            "# TYPE reward_openai_requests_in_flight gauge",
            f"reward_openai_requests_in_flight {self.in_flight}",
        ]
        return "\n".join(out) + "\n"
