"""A tiny generated treebank for the token-level tests: sentences of a fixed pattern whose tags
need context (the ambiguous "walks") and characters (numbers no vocabulary holds), written as
CoNLL-U with the verb as every other word's head."""

from __future__ import annotations

import random
from pathlib import Path

LEXICON = {
    "DET": ["the", "a", "every", "this"],
    "NOUN": ["cat", "dog", "man", "park", "ball", "girl", "tree", "car"],
    "VERB": ["sees", "likes", "kicks", "finds"],
    "ADJ": ["big", "red", "old", "small"],
}


def sentence(rng: random.Random, max_number: int = 99999) -> list[tuple[str, str]]:
    """DET (ADJ) NOUN VERB DET (ADJ) NOUN (NUM) . with the ambiguous "walks": a NOUN after a
    determiner, a VERB after a noun (so a tagger needs the context), and numbers written
    with digits up to ``max_number`` (so it needs the characters)."""

    def noun_phrase() -> list[tuple[str, str]]:
        words = [(rng.choice(LEXICON["DET"]), "DET")]
        if rng.random() < 0.4:
            words.append((rng.choice(LEXICON["ADJ"]), "ADJ"))
        noun = "walks" if rng.random() < 0.2 else rng.choice(LEXICON["NOUN"])
        return [*words, (noun, "NOUN")]

    verb = "walks" if rng.random() < 0.3 else rng.choice(LEXICON["VERB"])
    words = [*noun_phrase(), (verb, "VERB"), *noun_phrase()]
    if rng.random() < 0.3:
        words.append((str(rng.randint(10, max_number)), "NUM"))
    return [*words, (".", "PUNCT")]


def write_conllu(path: Path, n: int, seed: int, max_number: int = 99999, text: bool = True) -> None:
    """``n`` sentences (seeded) as CoNLL-U at ``path``; ``text``: with ``# text`` comments."""
    rng = random.Random(seed)
    lines: list[str] = []
    for s in range(n):
        words = sentence(rng, max_number)
        verb = next(i for i, (_, tag) in enumerate(words) if tag == "VERB") + 1
        lines.append(f"# sent_id = s{seed}-{s}")
        if text:
            lines.append(f"# text = {' '.join(w for w, _ in words)}")
        for i, (word, tag) in enumerate(words, start=1):
            head = 0 if i == verb else verb
            rel = "root" if i == verb else "dep"
            lines.append(f"{i}\t{word}\t{word}\t{tag}\t_\t_\t{head}\t{rel}\t_\t_")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
