"""The toy model's word-level tokenizer, in Hugging Face `tokenizers` format.

Words and punctuation are tokens; digit runs split into two-digit pieces, so "1732" is
"17" "32" as in GPT-2 and the toy can run Greater-Than.
"""

from __future__ import annotations

from collections.abc import Iterable

SPECIALS = ("<bos>", "<pad>", "<unk>")


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Whitespace(),
            pre_tokenizers.Split(pattern=Regex(r"\d\d"), behavior="isolated"),
        ]
    )


def word_level_tokenizer(texts: Iterable[str]):
    """A `tokenizers.Tokenizer` whose vocabulary is every piece of `texts` (sorted, stable)."""
    from tokenizers import Tokenizer, decoders, models

    pre = _pre_tokenizer()
    pieces = {p for text in texts for p, _ in pre.pre_tokenize_str(text)}
    pieces |= {f"{y:02d}" for y in range(100)}
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for piece in sorted(pieces - set(SPECIALS)):
        vocab[piece] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return tok
