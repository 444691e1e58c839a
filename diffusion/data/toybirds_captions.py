"""Toy-birds attributes and the words for them: caption generation and prompt parsing.

Every attribute value has a small set of phrases. `make_caption` picks a template and phrases
with a random generator; `parse_prompt` reads the same phrases back. Both use the tables below,
so a word the generator can write is a word the parser understands.

Parsing rule for the two colours (kept simple on purpose so prompts stay natural): a colour word
is the wing colour when the next word is "wings" ("with red wings") or when it follows
"wings are" ("its wings are red"); any other colour word is the body colour ("a red bird").
"""

import re
from collections.abc import Mapping

import numpy as np

from diffusion.errors import UserError, check_choice

SPECIES = ("songbird", "duck", "owl", "heron")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "black", "white")
FACING = ("left", "right")
POSES = ("perched", "flying", "on water")
BACKGROUNDS = ("day", "sunset", "night")
SIZES = ("small", "large")

# Attribute name -> its values, in a fixed order: the index of a value is its integer label.
ATTRIBUTES = {
    "species": SPECIES,
    "body_colour": COLOURS,
    "wing_colour": COLOURS,
    "facing": FACING,
    "pose": POSES,
    "background": BACKGROUNDS,
    "size": SIZES,
}

# How often the species is called just "bird", so that "a red bird" is a prompt the model has
# seen in training; the other attributes are always in the caption.
PLAIN_BIRD_PROBABILITY = 0.3

SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
# Phrases that follow the bird ("... a duck {pose}"); the first is the canonical one.
POSE_PHRASES = {
    "perched": ("perched on a branch", "sitting on a branch", "on a branch"),
    "flying": ("flying", "in flight", "flying through the air"),
    "on water": ("on water", "swimming on the water", "floating on water"),
}
# Phrases that can end or start a caption; no colour words, so the colour rule stays simple.
BACKGROUND_PHRASES = {
    "day": ("in the day sky", "on a clear day", "in daylight"),
    "sunset": ("at sunset", "at dusk", "under a sunset sky"),
    "night": ("at night", "under the night sky", "by night"),
}
FACING_PHRASES = ("facing {}", "facing to the {}", "looking {}", "turned to the {}")

# Sentence shapes; "a" before a vowel becomes "an" once the slots are filled.
TEMPLATES = (
    "a {size} {body} {species} with {wing} wings {pose}, {facing}, {background}",
    "{background}, a {size} {species} with a {body} body and {wing} wings {pose}, {facing}",
    "{pose} {background}, a {size} {body} {species} with {wing} wings {facing}",
    "a {size} {species} {facing}, {body} with {wing} wings, {pose} {background}",
    "a {size} {species} {pose} {background}, its body is {body} and its wings are {wing}, {facing}",
    "{background}, a {body} {species} with {wing} wings, {size}, {pose} and {facing}",
)

# Words in parsed prompts that name each value (single words or word sequences).
_PARSE_PHRASES = {
    "species": {name: (name, name + "s") for name in SPECIES},
    "size": SIZE_WORDS,
    "facing": {side: (side,) for side in FACING},
    "pose": {
        "perched": ("perched", "branch", "sitting"),
        "flying": ("flying", "flight", "flies"),
        "on water": ("water", "swimming", "floating", "lake"),
    },
    "background": {
        "day": ("day", "daylight", "daytime"),
        "sunset": ("sunset", "dusk"),
        "night": ("night",),
    },
}


# "bird" fills PLAIN_BIRD_PROBABILITY of ten entries, so a uniform pick gives that rate and the
# enumeration in `vocabulary_captions` visits both choices.
_PLAIN_CHOICES = tuple(i < round(10 * PLAIN_BIRD_PROBABILITY) for i in range(10))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_caption(attributes: dict, rng: np.random.Generator, pick=None) -> str:
    """One caption that names every attribute (the species only when not called "bird").

    `pick(slot, options)` chooses one phrase for a slot; by default a uniform draw from `rng`.
    `vocabulary_captions` passes its own `pick` to visit every phrase.
    """
    if pick is None:
        pick = lambda slot, options: options[int(rng.integers(len(options)))]  # noqa: E731
    template = pick("template", TEMPLATES)
    plain = pick("plain", _PLAIN_CHOICES)
    slots = {
        "size": pick("size", SIZE_WORDS[attributes["size"]]),
        "body": attributes["body_colour"],
        "wing": attributes["wing_colour"],
        "species": "bird" if plain else attributes["species"],
        "pose": pick("pose", POSE_PHRASES[attributes["pose"]]),
        "facing": pick("facing", FACING_PHRASES).format(attributes["facing"]),
        "background": pick("background", BACKGROUND_PHRASES[attributes["background"]]),
    }
    text = template.format(**slots)
    # "a orange owl" -> "an orange owl": articles are fixed once the slots are filled.
    return re.sub(r"\ba (\w)", lambda m: _article(m.group(1)) + " " + m.group(1), text)


def vocabulary_captions():
    """Captions that together use every word `make_caption` can ever write.

    Every template meets every attribute value and the k-th phrase of every table, so the
    tokenizer vocabulary built from these is complete without sampling luck (480 captions).
    """
    longest = max(
        len(FACING_PHRASES), len(_PLAIN_CHOICES),
        *(len(v) for v in SIZE_WORDS.values()),
        *(len(v) for v in POSE_PHRASES.values()),
        *(len(v) for v in BACKGROUND_PHRASES.values()),
    )
    most_values = max(len(values) for values in ATTRIBUTES.values())
    for k in range(longest):
        for j in range(most_values):
            attributes = {name: values[j % len(values)] for name, values in ATTRIBUTES.items()}
            for template in TEMPLATES:
                pick = lambda slot, options, template=template: (  # noqa: E731
                    template if slot == "template" else options[k % len(options)]
                )
                yield make_caption(attributes, None, pick)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _find(words: list[str], phrase: str) -> int:
    """Index of the first occurrence of `phrase` (a word sequence) in `words`, or -1."""
    target = phrase.split()
    for start in range(len(words) - len(target) + 1):
        if words[start:start + len(target)] == target:
            return start
    return -1


def parse_prompt(text: str) -> dict[str, str]:
    """The attributes a prompt mentions: "a red bird" -> {"body_colour": "red"}.

    Attributes the prompt does not mention are absent; when two values of one attribute are
    mentioned the first one wins.
    """
    words = _words(text)
    found: dict[str, str] = {}
    for name, table in _PARSE_PHRASES.items():
        best = None
        for value, phrases in table.items():
            for phrase in phrases:
                at = _find(words, phrase)
                if at >= 0 and (best is None or at < best[0]):
                    best = (at, value)
        if best is not None:
            found[name] = best[1]
    for i, word in enumerate(words):
        if word not in COLOURS:
            continue
        after = words[i + 1] if i + 1 < len(words) else ""
        is_wing = after in ("wings", "wing") or words[max(0, i - 2):i] == ["wings", "are"]
        found.setdefault("wing_colour" if is_wing else "body_colour", word)
    return found


def uniform_probabilities() -> dict[str, np.ndarray]:
    return {name: np.full(len(values), 1.0 / len(values)) for name, values in ATTRIBUTES.items()}


def attribute_probabilities(attribute_weights=None) -> dict[str, np.ndarray]:
    """Per-attribute probability vectors from the `attribute_weights` config (bias studies).

    Each entry is either a list with one weight per value (normalised here), or a mapping
    value -> probability where the values left out share the remainder equally:
    ``{"body_colour": {"red": 0.7}}`` makes red 0.7 and each other colour 0.3 / 7.
    Attributes not named stay uniform.
    """
    probabilities = uniform_probabilities()
    for name, weights in (attribute_weights or {}).items():
        if name not in ATTRIBUTES:
            raise UserError(f"attribute_weights names unknown attribute {name!r}; "
                            f"choose from: {', '.join(ATTRIBUTES)}")
        values = ATTRIBUTES[name]
        if isinstance(weights, Mapping):
            try:
                given = {str(k): float(v) for k, v in weights.items()}
            except (TypeError, ValueError):
                raise UserError(f"attribute_weights for {name} must map values to numbers, got {weights}") from None
            for value in given:
                check_choice(f"{name} value in attribute_weights", value, values)
            rest = 1.0 - sum(given.values())
            if rest < -1e-9 or any(p < 0 for p in given.values()):
                raise UserError(f"attribute_weights for {name} must be probabilities in [0, 1] "
                                f"summing to at most 1, got {given}")
            share = max(rest, 0.0) / max(len(values) - len(given), 1)
            vector = np.array([given.get(value, share) for value in values])
        else:
            try:
                vector = np.array([float(w) for w in weights]) if not isinstance(weights, str) else None
            except (TypeError, ValueError):
                vector = None
            if vector is None or len(vector) != len(values) or (vector < 0).any():
                raise UserError(f"attribute_weights for {name} needs {len(values)} non-negative "
                                f"weights, one per value ({', '.join(values)}), got {list(weights)}")
        if vector.sum() <= 0:
            raise UserError(f"attribute_weights for {name} gives every value probability 0")
        probabilities[name] = vector / vector.sum()
    return probabilities


def sample_attributes(rng: np.random.Generator, probabilities: dict) -> dict[str, str]:
    """One draw of every attribute, independently, from per-attribute probability vectors."""
    drawn = {}
    for name, values in ATTRIBUTES.items():
        cumulative = np.cumsum(probabilities[name])
        index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
        drawn[name] = values[min(index, len(values) - 1)]
    return drawn


def random_attributes(rng, attribute_weights=None) -> dict[str, str]:
    """Every attribute drawn at random (uniform unless weighted), e.g. for evaluation prompts."""
    return sample_attributes(np.random.default_rng(rng), attribute_probabilities(attribute_weights))


def random_prompt(rng, attribute_weights=None) -> tuple[str, dict[str, str]]:
    """A caption-like prompt for random attributes, and the attributes it actually mentions.

    The mentioned attributes leave out the species when the prompt says just "bird"; score a
    generated image only against those.
    """
    rng = np.random.default_rng(rng)
    text = make_caption(random_attributes(rng, attribute_weights), rng)
    return text, parse_prompt(text)
