"""OpenRLHF's remote reward model protocol: `POST /get_reward` (docs/rl.md)."""
