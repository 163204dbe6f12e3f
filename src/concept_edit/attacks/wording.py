"""Does a prompt put the concept back? Whether a found prompt names the concept or one of its other words, the
vocabulary the searches leave out, and the text a searched token sequence is drawn as.
"""

from __future__ import annotations

from collections.abc import Sequence

from concept_edit.words import STOPWORDS, concept_words, stem, words


def _has_phrase(words: list[str], phrase: list[str]) -> bool:
    k = len(phrase)
    return k > 0 and any(words[i : i + k] == phrase for i in range(len(words) - k + 1))


def contains_concept(pipe, text: str, concept: str) -> bool:
    """Whether `text` names the concept: its token ids hold one of the concept's content-word tokens (after the
    tokenizer's own round trip of the text), or one of its words starts with a concept word's stem
    ('circles', 'circular', 'strip ##ed' decoded as 'striped'). Conservative: it flags more than it misses."""
    tok = pipe.tokenizer
    ids = set(tok(text, add_special_tokens=False).input_ids)
    text_words = words(text)
    for word in concept_words(concept):
        pieces = tok(word, add_special_tokens=False).input_ids
        if len(pieces) == 1 and pieces[0] in ids:
            return True
        if any(w.startswith(stem(word)) for w in text_words):
            return True
    return False


def contains_synonym(text: str, synonyms: Sequence[str], generic: frozenset[str] = frozenset()) -> bool:
    """Whether `text` holds one of the concept's other words (`World.synonyms`: ShapesSD's 'disc', 'round shape'
    for circle): a whole phrase, or a distinctive word of one, or a word with its stem ('discs', 'round', 'hoop');
    the `generic` words of a synonym (`World.generic_words`: 'shape' of 'round shape') are not flagged alone."""
    text_words = words(text)
    for phrase in synonyms:
        parts = [w for w in words(phrase) if w not in STOPWORDS]
        if _has_phrase(text_words, parts):
            return True
        if any(w.startswith(stem(p)) for p in parts if p not in generic for w in text_words):
            return True
    return False


def concept_token_ids(tokenizer, concept: str) -> list[int]:
    """Vocabulary ids whose text starts with a stem of one of the concept's words ('circle', 'circ', 'circles',
    '##circ...'), and the word's own tokens: what the searches leave out."""
    stems = [stem(w) for w in concept_words(concept)]
    out = {i for w in concept_words(concept) for i in tokenizer(w, add_special_tokens=False).input_ids
           if len(tokenizer(w, add_special_tokens=False).input_ids) == 1}  # fmt: skip
    for token, i in tokenizer.get_vocab().items():
        text = token.lower().removeprefix("##").removesuffix("</w>").lstrip("ġ▁")
        if len(text) >= 3 and any(text.startswith(s) or (len(text) >= 4 and s.startswith(text)) for s in stems):
            out.add(i)
    return sorted(out)


def drawn_text(tokenizer, ids: Sequence[int]) -> str:
    """The text a searched token sequence is drawn as: leading continuation tokens ('##pon') dropped, decoded."""
    tokens = tokenizer.convert_ids_to_tokens(list(ids))
    start = 0
    while start < len(tokens) and str(tokens[start]).startswith("##"):
        start += 1
    text = tokenizer.decode(list(ids)[start:]).replace("</w>", " ")  # a CLIP tokenizer without its decoder
    return " ".join(text.split())
