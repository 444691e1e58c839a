"""CLIP's byte-level BPE tokenizer (Radford et al. 2021; Sennrich et al. 2016's BPE over GPT-2's byte alphabet).

A prompt becomes at most 77 ids, as Stable Diffusion 1.x feeds its text encoder (`models.clip_text`):

1. clean-up: HTML entities unescaped (twice, as CLIP does), Unicode NFC, runs of whitespace -> one space,
   lower-case. CLIP's own code first runs `ftfy.fix_text`, which repairs mojibake and odd characters; ftfy is not a
   dependency here, so only its final NFC step is done. transformers 5's CLIPTokenizer does the same NFC,
   whitespace and lower-casing, but no HTML unescaping ("&amp;" stays five characters there, one here), and its
   lower-casing writes a word-final capital sigma as σ where Python's (CLIP's) writes ς.
2. pre-tokenising with CLIP's pattern (below): the special tokens, English contractions, runs of letters, single
   digits, runs of other non-space characters. Spaces are dropped: a word's end is marked by `</w>` instead.
3. each piece's UTF-8 bytes -> printable characters (`bytes_to_unicode`), so any text has a spelling in the
   256-symbol alphabet; the last symbol gets `</w>`.
4. byte-pair merges: repeatedly join the adjacent pair with the lowest rank in `merges.txt` (cached per word).
5. ids from `vocab.json`, framed by `<|startoftext|>` ... `<|endoftext|>`, cut to 77 (the end token kept), padded
   with the end token as SD 1.x's tokenizer config says (`pad_token` = "<|endoftext|>").

The vocabulary is data: the diffusers folder's `tokenizer/vocab.json` + `merges.txt` (`from_files`), or CLIP's
`bpe_simple_vocab_16e6.txt.gz` (`from_bpe_gz`; merges only, the vocabulary follows from them).
"""

from __future__ import annotations

import gzip
import html
import json
import unicodedata
from functools import lru_cache
from pathlib import Path

import regex

START, END = "<|startoftext|>", "<|endoftext|>"
WORD_END = "</w>"
# CLIP's pre-tokenising pattern (simple_tokenizer.py): \p{L} letters, \p{N} digits, the rest; IGNORECASE as CLIP's
PATTERN = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                        regex.IGNORECASE)
BPE_GZ_MERGES = 49152 - 256 - 2  # bpe_simple_vocab_16e6 holds more merges than CLIP uses; it takes the first 48894


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> a printable character (GPT-2's table): printable Latin-1 bytes stand for themselves; the other 68
    (controls, space, soft hyphen...) take the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


def clean(text: str) -> str:
    """CLIP's basic_clean + whitespace_clean without ftfy (its NFC step only), then lower-case."""
    text = html.unescape(html.unescape(text))
    text = unicodedata.normalize("NFC", text)
    return regex.sub(r"\s+", " ", text).strip().lower()


def vocabulary_from_merges(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary order: the 256 byte symbols, the same with `</w>`, one token per merge, the two specials."""
    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + WORD_END for s in symbols), *("".join(pair) for pair in merges), START, END]
    return {token: index for index, token in enumerate(tokens)}


class CLIPTokenizer:
    def __init__(
        self,
        vocab: dict[str, int],             # token -> id (vocab.json)
        merges: list[tuple[str, str]],     # pairs, lowest rank (first) merged first (merges.txt)
        max_length: int = 77,              # the text encoder's positions, start and end tokens included
    ):
        missing = [token for token in (START, END) if token not in vocab]
        if missing:
            raise ValueError(f"the vocabulary has no {missing[0]} token; is this CLIP's vocab.json?")
        self.vocab = vocab
        self.tokens = {index: token for token, index in vocab.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.max_length = max_length
        self.start_id, self.end_id = vocab[START], vocab[END]
        self.pad_id = self.end_id  # SD 1.x pads with the end token
        self.byte_symbols = bytes_to_unicode()
        self.cache = {START: [START], END: [END]}  # special tokens typed in a prompt are kept whole, as CLIP does

    @classmethod
    def from_files(cls, vocab_json, merges_txt, **kwargs) -> "CLIPTokenizer":
        """The diffusers / transformers layout: `tokenizer/vocab.json` and `tokenizer/merges.txt`."""
        vocab = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
        return cls(vocab, read_merges(Path(merges_txt).read_text(encoding="utf-8").split("\n")), **kwargs)

    @classmethod
    def from_bpe_gz(cls, path, **kwargs) -> "CLIPTokenizer":
        """CLIP's own `bpe_simple_vocab_16e6.txt.gz`: a header line, then merges; CLIP uses the first 48894."""
        lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
        merges = read_merges(lines[1:BPE_GZ_MERGES + 1])  # its header line does not start with "#version"
        return cls(vocabulary_from_merges(merges), merges, **kwargs)

    @classmethod
    def from_tokenizer_json(cls, path, **kwargs) -> "CLIPTokenizer":
        """The `tokenizers` library's one-file form (`tokenizer.json`, what transformers 5 saves): its BPE model's
        `vocab` and `merges` (pairs as ["a", "b"] or "a b")."""
        model = json.loads(Path(path).read_text(encoding="utf-8"))["model"]
        merges = [tuple(pair) if isinstance(pair, list) else tuple(pair.split()) for pair in model["merges"]]
        return cls(model["vocab"], merges, **kwargs)

    @classmethod
    def from_path(cls, path, **kwargs) -> "CLIPTokenizer":
        """A folder holding `vocab.json` + `merges.txt` or `tokenizer.json` (a diffusers pipeline's `tokenizer/`),
        or CLIP's `.txt.gz`."""
        path = Path(path)
        if path.is_dir() and not (path / "vocab.json").is_file():
            return cls.from_tokenizer_json(path / "tokenizer.json", **kwargs)
        if path.is_dir():
            return cls.from_files(path / "vocab.json", path / "merges.txt", **kwargs)
        return cls.from_bpe_gz(path, **kwargs)

    def bpe(self, piece: str) -> list[str]:
        """One pre-tokenised piece (already byte symbols) -> its BPE tokens, the last ending in `</w>`."""
        if piece in self.cache:
            return self.cache[piece]
        word = [*piece[:-1], piece[-1] + WORD_END]
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):  # join every occurrence of the best pair, left to right
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self.cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Text -> ids, no start or end token, no truncation."""
        ids = []
        for piece in PATTERN.findall(clean(text)):
            if piece not in (START, END):
                piece = "".join(self.byte_symbols[byte] for byte in piece.encode("utf-8"))
            ids += [self.vocab[token] for token in self.bpe(piece)]
        return ids

    def decode(self, ids: list[int]) -> str:
        """Ids -> text (as cleaned: lower-case, one space between words), special tokens dropped."""
        byte_of = {symbol: byte for byte, symbol in self.byte_symbols.items()}
        words = "".join(self.tokens[i] for i in ids if i not in (self.start_id, self.end_id)).split(WORD_END)
        return " ".join(bytes(byte_of[c] for c in word).decode("utf-8", "replace") for word in words if word)

    def __call__(self, prompts: list[str] | str) -> tuple[list[list[int]], list[list[int]]]:
        """Prompts -> (ids, attention mask), each row `max_length` long, as SD 1.x's pipeline calls its tokenizer
        (`padding="max_length", truncation=True`): start, up to 75 ids, end, then end tokens (mask 0) to fill."""
        prompts = [prompts] if isinstance(prompts, str) else prompts
        rows, masks = [], []
        for prompt in prompts:
            ids = [self.start_id, *self.encode(prompt)[:self.max_length - 2], self.end_id]
            padding = self.max_length - len(ids)
            rows.append(ids + [self.pad_id] * padding)
            masks.append([1] * len(ids) + [0] * padding)
        return rows, masks

    def dropped(self, prompt: str) -> str:
        """The part of `prompt` cut off at `max_length` tokens ('' when it fits): to say which words were lost."""
        return self.decode(self.encode(prompt)[self.max_length - 2:])


def read_merges(lines: list[str]) -> list[tuple[str, str]]:
    """`#version: ...` header (skipped), then one `left right` pair per line."""
    return [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
