"""The HTTP gateway's parts beside the NIM API of `client/openai_server.py` (docs/openai.md, docs/rl.md).

- `errors`: errors answered in OpenAI's shape, typed by HTTP status;
- `config`: the gateway's start options; `backend`: the one shared gRPC channel to the ensemble;
- `body`: reading and validating request bodies;
- `chat_formats`: policy chat formats (ChatML, Llama 3, Llama 2, this model's) → messages;
- `openrlhf/`, `pooling/`: one protocol each (OpenRLHF's remote RM `/get_reward`, vLLM's `/pooling`), split as
  `protocol` (pydantic schemas), `serving` (the work) and `router` (the FastAPI route).
"""
