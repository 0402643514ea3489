"""The HTTP gateway (`reward-openai`): the reward protocols clients speak, in front of the Triton ensemble.

- `app`: the FastAPI application (routes of every protocol, API key, OpenAI-shaped errors, metrics); `cli`: its
  command line;
- one package per protocol, each split as `protocol` (pydantic schemas), `serving` (the work) and `router` (the
  FastAPI routes): `openai/` (NVIDIA NIM's reward API, docs/openai.md), `openrlhf/` (OpenRLHF's remote RM
  `/get_reward`), `pooling/` (vLLM's `/pooling`), docs/rl.md;
- `errors`: errors answered in OpenAI's shape, typed by HTTP status; `config`: the start options; `backend`: the one
  shared gRPC channel to the ensemble (the client library's `RewardClient`); `body`: reading and validating request
  bodies; `chat_formats`: policy chat formats → messages; `rewards`: per-request weights; `metrics`: Prometheus text.
"""
