"""vLLM's pooling API for reward models: `POST /pooling` (docs/rl.md)."""
