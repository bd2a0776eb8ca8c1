"""Build a tiny transformers model (GPT-2 shaped, a BPE tokenizer trained offline) into a
folder, or load one through HF_ENDPOINT and report how long it took. Run as a child process:
huggingface_hub reads HF_ENDPOINT when it is imported."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

TEXT = "the quick brown fox jumps over the lazy dog"


def build(out: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=64, special_tokens=["<unk>", "<eos>"])
    tok.train_from_iterator([TEXT] * 50, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>") \
        .save_pretrained(out)  # fmt: skip
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    GPT2Model(config).save_pretrained(out)


def load(repo: str) -> None:
    from transformers import AutoModel, AutoTokenizer

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(repo)
    model = AutoModel.from_pretrained(repo)
    took = time.monotonic() - started
    ids = tokenizer(TEXT)["input_ids"]
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"seconds": took, "ids": ids, "params": params}))


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(Path(sys.argv[2]))
    else:
        load(sys.argv[2])
