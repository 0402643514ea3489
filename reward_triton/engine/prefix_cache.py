"""Prefix cache of the PyTorch engine: key/value blocks of a fixed number of tokens, chained by hash.

The scheme of TensorRT-LLM's KV-cache block reuse and vLLM's automatic prefix caching. A sequence is cut into blocks
of `block_tokens` tokens; block j is named by a hash of block j-1's name and block j's own tokens, so one name
stands for the whole prefix up to the end of its block. A sequence whose leading blocks are stored computes only
the tokens after them (reward_triton/engine/model.py), attending to the stored keys and values.

- Only full blocks are stored, and at most (len - 1) // block_tokens of them per sequence: the last token is always
  computed, since its hidden state gives the logits.
- A block is one tensor [layers, block_tokens, 2 * kv_heads, head_dim]: every layer's post-rotary K heads then V
  heads, in the engine's compute dtype.
- Memory: the stored blocks' bytes never exceed `budget_bytes`; storing a block evicts the least recently used ones
  first (never a block of the chain being stored: a chain longer than the budget keeps its first blocks). A lookup
  or store touches its chain deepest block first, so a block is always more recent than its descendants and
  eviction takes a chain from its tail (a block whose parent is gone could never be reached).
  The bytes a running forward holds (the blocks it read, the keys/values it computes) are outside the budget.
- Threads: one lock around the table. A forward keeps references to the blocks it read, so an eviction meanwhile
  only drops them from the table; their memory is freed when the forward lets go of them.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

DEFAULT_BLOCK_TOKENS = 32
# Served default (build_engine/repository.py): 2 GiB of keys/values. On a 24 GiB machine that leaves the weights,
# a batch's activations and Triton's shared memory ample room; it holds 262k tokens of the 22 M-parameter benchmark
# fixture in fp32 (8 KiB a token), ~300 conversations of 800 tokens.
DEFAULT_BUDGET_BYTES = 2 << 30


@dataclass
class Counters:
    """What the engine was asked for and what it computed (kept by the engine whether the cache is on or off)."""

    sequences: int = 0  # sequences scored
    hit_sequences: int = 0  # sequences that read at least one cached block
    tokens_sent: int = 0  # tokens of the sequences scored
    tokens_cached: int = 0  # of those, read from the cache
    tokens_computed: int = 0  # of those, computed (sent - cached)

    def add(self, sent: int, cached: int) -> None:
        self.sequences += 1
        self.hit_sequences += cached > 0
        self.tokens_sent += sent
        self.tokens_cached += cached
        self.tokens_computed += sent - cached


def block_hashes(tokens: Sequence[int] | np.ndarray, block_tokens: int) -> list[bytes]:
    """Chained names of the blocks a sequence may store: its first (len - 1) // block_tokens full blocks."""
    ids = np.asarray(tokens, dtype=np.int64)
    names, parent = [], b""
    for j in range((len(ids) - 1) // block_tokens):
        parent = hashlib.blake2b(parent + ids[j * block_tokens : (j + 1) * block_tokens].tobytes(), digest_size=16)
        parent = parent.digest()
        names.append(parent)
    return names


class PrefixCache:
    def __init__(self, budget_bytes: int, block_tokens: int = DEFAULT_BLOCK_TOKENS):
        if budget_bytes < 0 or block_tokens < 1:
            raise ValueError(f"prefix cache: budget {budget_bytes} bytes and block {block_tokens} tokens")
        self.budget_bytes, self.block_tokens = budget_bytes, block_tokens
        self._blocks: OrderedDict[bytes, torch.Tensor] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self.bytes_used = 0
        self.blocks_stored = 0
        self.blocks_evicted = 0

    def hashes(self, tokens: Sequence[int] | np.ndarray) -> list[bytes]:
        return block_hashes(tokens, self.block_tokens)

    def _run(self, names: Sequence[bytes]) -> int:
        """How many leading blocks of `names` are stored (lock held)."""
        n = 0
        while n < len(names) and names[n] in self._blocks:
            n += 1
        return n

    def _touch(self, names: Sequence[bytes]) -> None:
        """Most recent: the chain's first block; its deepest block least recent of the chain (lock held)."""
        for name in reversed(names):
            self._blocks.move_to_end(name)

    def lookup(self, names: Sequence[bytes]) -> list[torch.Tensor]:
        """The stored leading blocks of a chain (possibly none), marked as just used."""
        with self._lock:
            n = self._run(names)
            self._touch(names[:n])
            return [self._blocks[name] for name in names[:n]]

    def store(self, names: Sequence[bytes], blocks: Sequence[torch.Tensor], first: int) -> None:
        """Store `blocks` as names[first:first + len(blocks)] (their parents names[:first] were read from here). A
        block already stored (the same prefix computed meanwhile by another forward) is kept as it is."""
        names = names[: first + len(blocks)]
        chain = set(names)
        with self._lock:
            for name, block in zip(names[first:], blocks, strict=True):
                if name in self._blocks:
                    continue
                size = block.numel() * block.element_size()
                # evict least recently used blocks, but never this chain's own: a block whose parent is gone could
                # never be reached, so the chain stops here when the budget cannot hold it
                while self.bytes_used + size > self.budget_bytes and self._blocks:
                    oldest = next(iter(self._blocks))
                    if oldest in chain:
                        break
                    evicted = self._blocks.pop(oldest)
                    self.bytes_used -= evicted.numel() * evicted.element_size()
                    self.blocks_evicted += 1
                if self.bytes_used + size > self.budget_bytes:
                    break
                self._blocks[name] = block
                self.bytes_used += size
                self.blocks_stored += 1
            self._touch([name for name in names if name in self._blocks])

    def next_wave(
        self, pending: Sequence[int], names: Sequence[Sequence[bytes]], lengths: Sequence[int]
    ) -> tuple[list[int], list[int]]:
        """Split the sequences `pending` of one batch into those to compute now and those to compute after them.

        A sequence waits when its first block not yet stored is one that a sequence computed now will store: it
        then reads that block instead of computing it again (one row of each group of rows sharing a prompt goes
        first, the others after it). Longest sequences lead, so a conversation's last turn covers the earlier
        ones. Both lists keep batch order; the first is never empty."""
        with self._lock:
            stored = {i: self._run(names[i]) for i in pending}
        now, later, claimed = [], [], set()
        for i in sorted(pending, key=lambda i: -lengths[i]):
            chain, n = names[i], stored[i]
            if n < len(chain) and chain[n] in claimed:
                later.append(i)
            else:
                now.append(i)
                claimed.update(chain[n:])
        return sorted(now), sorted(later)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "blocks": len(self._blocks),
                "bytes_used": self.bytes_used,
                "budget_bytes": self.budget_bytes,
                "block_tokens": self.block_tokens,
                "blocks_stored": self.blocks_stored,
                "blocks_evicted": self.blocks_evicted,
            }


def stats(counters: Counters, cache: PrefixCache | None) -> dict[str, int]:
    """The engine's statistics: its counters, and the cache's table when it has one."""
    return {**asdict(counters), **(cache.stats() if cache is not None else {"budget_bytes": 0})}
