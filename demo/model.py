"""A small PyTorch implementation of exactly the NeMo / Megatron-core Nemotron reward-model math.

Parameters live directly under the canonical NeMo names and shapes of docs/formats.md (layer tensors stacked
with a leading `num_layers` axis, as in the distributed checkpoint), so exporting is `model.nemo_tensors()`.

Math (the canonical layout is in docs/formats.md):
- pre-LN decoder: x + attn(ln1(x)); x + mlp(ln2(x)); final LayerNorm;
- layernorm1p: norm(x) * (1 + w) + b;
- fused grouped QKV rows per query group g: [q_{g,0} .. q_{g,hpg-1}, k_g, v_g], hd rows each;
- rope NeoX style (rotate_half) on the first rotary_percentage * hd dims of each head, base rotary_base;
- causal attention with scale 1/sqrt(hd); squared-relu MLP; no linear biases;
- reward head y = W h_last + b on the final-LayerNorm output of the LAST token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reward_triton.engine.weights import (
    EMBEDDING,
    FC1,
    FC2,
    HEAD_B,
    HEAD_W,
    LN1_B,
    LN1_W,
    LN2_B,
    LN2_W,
    LNF_B,
    LNF_W,
    OUTPUT,
    PROJ,
    QKV,
)

OUTPUT_LAYER = OUTPUT
LAYER_NAMES = (LN1_W, LN1_B, QKV, PROJ, LN2_W, LN2_B, FC1, FC2)


@dataclass(frozen=True)
class TinyConfig:
    vocab_size: int = 1024  # padded embedding rows (multiple of 128)
    hidden_size: int = 256
    num_layers: int = 4
    num_attention_heads: int = 8
    num_query_groups: int = 2
    ffn_hidden_size: int = 1024
    num_attributes: int = 9
    rotary_percentage: float = 0.5
    rotary_base: float = 10000.0
    layernorm_epsilon: float = 1e-5
    max_position_embeddings: int = 512

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups


def _key(name: str) -> str:
    return name.replace(".", "__")


class TinyNemotronReward(nn.Module):
    """Nemotron reward model whose parameters are the canonical NeMo tensors (stacked per layer)."""

    def __init__(self, cfg: TinyConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        h, f, n_layers = cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_layers
        qkv_rows = (cfg.num_attention_heads + 2 * cfg.num_query_groups) * cfg.head_dim
        std = 0.02
        out_std = std / math.sqrt(2 * n_layers)

        def normal(*shape: int, s: float = std) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=generator) * s)

        def zeros(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(*shape))

        self.params = nn.ParameterDict(
            {
                _key(EMBEDDING): normal(cfg.vocab_size, h),
                _key(LN1_W): zeros(n_layers, h),
                _key(LN1_B): zeros(n_layers, h),
                _key(QKV): normal(n_layers, qkv_rows, h),
                _key(PROJ): normal(n_layers, h, cfg.num_attention_heads * cfg.head_dim, s=out_std),
                _key(LN2_W): zeros(n_layers, h),
                _key(LN2_B): zeros(n_layers, h),
                _key(FC1): normal(n_layers, f, h),
                _key(FC2): normal(n_layers, h, f, s=out_std),
                _key(LNF_W): zeros(h),
                _key(LNF_B): zeros(h),
                _key(OUTPUT_LAYER): normal(cfg.vocab_size, h),
                _key(HEAD_W): normal(cfg.num_attributes, h),
                _key(HEAD_B): zeros(cfg.num_attributes),
            }
        )

    def p(self, name: str) -> torch.Tensor:
        return self.params[_key(name)]

    # ---- export / import -------------------------------------------------------------------------------
    def nemo_tensors(self) -> dict[str, torch.Tensor]:
        """Canonical name -> tensor (layer tensors stacked [num_layers, ...]), detached fp32 copies."""
        return {k.replace("__", "."): v.detach().clone() for k, v in self.params.items()}

    def load_nemo_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(tensors[k.replace("__", ".")].to(v.dtype))

    # ---- math ------------------------------------------------------------------------------------------
    def _ln1p(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), weight=1.0 + w, bias=b, eps=self.cfg.layernorm_epsilon)

    def _rope(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        rot = int(self.cfg.head_dim * self.cfg.rotary_percentage)
        inv_freq = 1.0 / (self.cfg.rotary_base ** (torch.arange(0, rot, 2, dtype=torch.float32, device=device) / rot))
        t = torch.arange(seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)  # [T, rot]
        return emb.cos(), emb.sin()

    @staticmethod
    def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x [B, heads, T, hd]; NeoX rotate_half on the first `rot` dims, the rest pass through.
        rot = cos.shape[-1]
        xr, xp = x[..., :rot], x[..., rot:]
        x1, x2 = xr[..., : rot // 2], xr[..., rot // 2 :]
        rotated = torch.cat([-x2, x1], dim=-1)
        return torch.cat([xr * cos + rotated * sin, xp], dim=-1)

    def hidden_states(self, tokens: torch.Tensor, taps: tuple[int, ...] = ()) -> torch.Tensor:
        """tokens [B, T] (right-padded) -> final-LayerNorm output [B, T, H].

        `taps`: layer counts after which the residual stream is also kept (training aids), in `self.tapped`."""
        cfg = self.cfg
        self.tapped: dict[int, torch.Tensor] = {}
        b, t = tokens.shape
        nh, ng, hpg, hd = cfg.num_attention_heads, cfg.num_query_groups, cfg.heads_per_group, cfg.head_dim
        x = F.embedding(tokens, self.p(EMBEDDING))
        cos, sin = self._rope(t, tokens.device)
        for i in range(cfg.num_layers):
            y = self._ln1p(x, self.p(LN1_W)[i], self.p(LN1_B)[i])
            qkv = (y @ self.p(QKV)[i].t()).view(b, t, ng, hpg + 2, hd)
            q = qkv[:, :, :, :hpg].reshape(b, t, nh, hd).transpose(1, 2)  # head = g * hpg + j
            k = qkv[:, :, :, hpg].transpose(1, 2)  # [B, ng, T, hd]
            v = qkv[:, :, :, hpg + 1].transpose(1, 2)
            q = self._apply_rope(q, cos, sin)
            k = self._apply_rope(k, cos, sin)
            k = k.repeat_interleave(hpg, dim=1)
            v = v.repeat_interleave(hpg, dim=1)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / math.sqrt(hd))
            a = a.transpose(1, 2).reshape(b, t, nh * hd)
            x = x + a @ self.p(PROJ)[i].t()
            y = self._ln1p(x, self.p(LN2_W)[i], self.p(LN2_B)[i])
            y = torch.relu(y @ self.p(FC1)[i].t()).square()
            x = x + y @ self.p(FC2)[i].t()
            if i + 1 in taps:
                self.tapped[i + 1] = x
        return self._ln1p(x, self.p(LNF_W), self.p(LNF_B))

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self._ln1p(x, self.p(LNF_W), self.p(LNF_B))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.p(HEAD_W).t() + self.p(HEAD_B)

    def lm_logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.p(OUTPUT_LAYER).t()

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Rewards [B, K] read at the last real token (position length-1) of each right-padded row."""
        h = self.hidden_states(tokens)
        last = h[torch.arange(h.shape[0]), lengths - 1]
        return self.head(last)

    @torch.no_grad()
    def score(self, sequences: list[list[int]], batch_size: int = 64) -> torch.Tensor:
        """Unpadded token lists -> rewards [N, K] (fp32)."""
        out = []
        for s in range(0, len(sequences), batch_size):
            chunk = sequences[s : s + batch_size]
            tokens, lengths = pad_batch(chunk)
            out.append(self(tokens, lengths).float())
        return torch.cat(out) if out else torch.zeros(0, self.cfg.num_attributes)


def pad_batch(seqs: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest row; causal attention keeps padding out of every real position."""
    n = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return tokens, torch.tensor([len(s) for s in seqs], dtype=torch.long)


def count_parameters(model: nn.Module, include_output_layer: bool = True) -> int:
    return sum(p.numel() for k, p in model.named_parameters() if include_output_layer or "output_layer" not in k)
