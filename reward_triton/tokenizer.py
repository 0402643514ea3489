"""SentencePiece tokenizer as the reward model was trained with it: ids of the text only, no BOS and no EOS."""

from __future__ import annotations

import os
from pathlib import Path

import sentencepiece as spm

from reward_triton.metadata import RewardMetadata


class Tokenizer:
    def __init__(self, model_file: str | os.PathLike[str]) -> None:
        path = Path(model_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tokenizer model not found")
        self.path = path
        self._sp = spm.SentencePieceProcessor(model_file=str(path))

    @classmethod
    def from_metadata(cls, directory: str | os.PathLike[str], meta: RewardMetadata | None = None) -> Tokenizer:
        meta = meta or RewardMetadata.load(directory)
        return cls(meta.tokenizer_path(directory))

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    @property
    def eos_id(self) -> int:
        """The EOS token id, -1 when the model has none."""
        return int(self._sp.eos_id())

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text, add_bos=False, add_eos=False))

    def decode(self, ids: list[int]) -> str:
        return str(self._sp.decode(ids))
