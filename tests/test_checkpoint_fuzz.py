"""Damaged and edited checkpoints are named, never sampled: a fuzz over copies of a real checkpoint with fields
removed or retyped, bytes flipped and the file cut short. Every copy either loads to exactly the original weights
(a flip that hit bytes nothing reads) or is refused with one `UserError` — never another exception, never
different weights."""

import random

import pytest
import torch

from diffusion import checkpoint as ckpt
from diffusion.errors import UserError
from diffusion.loading import load_model

WRONG_VALUES = [None, 1.5, "x", {"a": 1}]


@pytest.fixture(scope="module")
def original(tiny_checkpoint):
    payload = ckpt.load_checkpoint(tiny_checkpoint)
    return tiny_checkpoint, payload, load_model(tiny_checkpoint).model.state_dict()


def outcome(path, weights) -> str:
    """'refused' (one UserError), 'same' (the original weights), or the failure, for the assertion message."""
    try:
        loaded = load_model(path).model.state_dict()
    except UserError as error:
        assert "\n" not in str(error), str(error)
        return "refused"
    except Exception as error:  # noqa: BLE001 (what the test is looking for)
        return f"{type(error).__name__}: {error}"
    same = loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)
    return "same" if same else "different weights"


def test_every_field_removed_or_retyped_is_refused_in_one_line(original, tmp_path):
    _, payload, weights = original
    results = {}
    for field in [*ckpt.FIELDS["diffusion"], "format_version", "kind", "checksum"]:
        edits = [("removed", {k: v for k, v in payload.items() if k != field})]
        edits += [(f"= {value!r}", {**payload, field: value}) for value in WRONG_VALUES]
        for name, edited in edits:
            path = tmp_path / "edited.ckpt"
            torch.save(edited, path)
            results[f"{field} {name}"] = outcome(path, weights)
    bad = {case: result for case, result in results.items() if result not in ("refused", "same")}
    assert not bad, bad
    assert sum(result == "refused" for result in results.values()) >= len(results) - 6  # the few harmless edits:
    # a removed or null checksum (a checkpoint from before checksums), tokenizer / autoencoder null where allowed


def test_flipped_bytes_and_cut_files_never_sample_other_weights(original, tmp_path):
    path, _, weights = original
    data = path.read_bytes()
    rng = random.Random(0)
    results = []
    for copy in range(16):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            position = rng.randrange(len(damaged))
            damaged[position] ^= 1 << rng.randrange(8)
        (tmp_path / "flipped.ckpt").write_bytes(bytes(damaged))
        results.append(outcome(tmp_path / "flipped.ckpt", weights))
    for fraction in (0.1, 0.5, 0.9, 0.999):
        (tmp_path / "cut.ckpt").write_bytes(data[: int(len(data) * fraction)])
        assert outcome(tmp_path / "cut.ckpt", weights) == "refused"
    assert all(result in ("refused", "same") for result in results), results
    assert results.count("refused") >= 13, results  # nearly every flip lands in the weights, which the checksum guards
