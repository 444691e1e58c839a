"""The UNet: shapes for every config, the DDPM parameter count, gradients, masks, and that it learns."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from diffusion.config import build
from diffusion.noise_schedules import NoiseSchedule
from models.layers import timestep_embedding
from models.unet import UNet

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"


def unet_from_config(name: str, **fill) -> UNet:
    return build(OmegaConf.load(CONF / f"{name}.yaml"), **fill)


def unzero(net: UNet) -> UNet:
    """Undo the zero inits (output and residual branches) so that every path carries signal in a test."""
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.05)
    return net


def text_cond(batch: int, length: int = 5, width: int = 32, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"context": torch.randn(batch, length, width, generator=gen),
            "context_mask": torch.ones(batch, length, dtype=torch.bool),
            "pooled": torch.randn(batch, width, generator=gen)}


@pytest.mark.parametrize("name", ["unet_tiny", "unet_small", "unet_base"])
@pytest.mark.parametrize("channels,resolutions", [(3, (32, 16)), (4, (8, 16))])
def test_output_shape_for_every_config(name, channels, resolutions):
    net = unet_from_config(name, in_channels=channels, out_channels=channels, context_dim=32, pooled_dim=32)
    for resolution in resolutions:
        x = torch.randn(2, channels, resolution, resolution)
        with torch.no_grad():
            assert net(x, torch.tensor([3, 700]), text_cond(2)).shape == x.shape


def test_indivisible_resolution_is_a_clear_error():
    net = unet_from_config("unet_tiny", in_channels=3, out_channels=3)
    with pytest.raises(ValueError, match="30x30 is not divisible by the UNet's total downsampling 4"):
        net(torch.randn(1, 3, 30, 30), torch.tensor([0]))


def test_unet_base_has_the_ddpm_cifar10_parameter_count():
    net = unet_from_config("unet_base", in_channels=3, out_channels=3)
    count = sum(p.numel() for p in net.parameters())
    assert abs(count - 35.7e6) / 35.7e6 < 0.01, count  # Ho et al. 2020 report 35.7M


def test_norm_groups_and_emb_dim_shape_the_network():
    """norm_groups caps the GroupNorm groups (default 32: one channel a group at widths <= 32); emb_dim sets
    the time-embedding width (default 4 * base_channels) and every block's FiLM reads that width."""
    def groups(net):
        return sorted({(m.num_groups, m.num_channels) for m in net.modules() if isinstance(m, torch.nn.GroupNorm)})

    kwargs = dict(base_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1, attention_levels=(2,), context_dim=32,
                  pooled_dim=32)
    default, eight = UNet(3, **kwargs), UNet(3, norm_groups=8, emb_dim=96, **kwargs)
    assert groups(default) == [(16, 16), (16, 48), (32, 32), (32, 64), (32, 96), (32, 128)]  # 16 and 32 wide: instance norm
    assert groups(eight) == [(8, 16), (8, 32), (8, 48), (8, 64), (8, 96), (8, 128)]
    assert default.time_embed[-1].out_features == 64 and eight.time_embed[-1].out_features == 96
    assert {m.emb.in_features for m in eight.modules() if hasattr(m, "emb") and m.emb is not None} == {96}
    with torch.no_grad():
        assert eight(torch.randn(2, 3, 16, 16), torch.tensor([3, 700]), text_cond(2)).shape == (2, 3, 16, 16)


def test_output_layer_is_zero_initialised():
    net = UNet(3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_dim=16)
    assert torch.count_nonzero(net(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]))) == 0


def test_unconditional_and_class_conditional_from_the_same_class():
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 500])
    plain = UNet(3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_dim=16)
    assert plain(x, t).shape == x.shape
    by_class = unzero(UNet(3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_dim=16,
                           num_classes=10))
    a = by_class(x, t, {"class_labels": torch.tensor([1, 1])})
    b = by_class(x, t, {"class_labels": torch.tensor([1, 2])})
    assert torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])


def small_text_unet(**kwargs) -> UNet:
    torch.manual_seed(0)
    return unzero(UNet(3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(0, 1), head_dim=8,
                       context_dim=32, pooled_dim=32, **kwargs))


def test_every_parameter_gets_a_gradient_and_checkpointing_gives_the_same_ones():
    x, t, cond = torch.randn(2, 3, 16, 16), torch.tensor([10, 900]), text_cond(2)
    grads = {}
    for checkpointing in (False, True):
        net = small_text_unet(gradient_checkpointing=checkpointing).train()
        net(x, t, cond).square().mean().backward()
        missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert not missing, missing
        grads[checkpointing] = {n: p.grad.clone() for n, p in net.named_parameters()}
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, atol=1e-5, rtol=1e-4)


def test_padding_tokens_are_masked_and_prompts_matter():
    net = small_text_unet().eval()
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([300])
    cond = text_cond(1, length=4)
    padded = {"context": torch.cat([cond["context"], torch.randn(1, 3, 32) * 10], dim=1),
              "context_mask": torch.cat([cond["context_mask"], torch.zeros(1, 3, dtype=torch.bool)], dim=1),
              "pooled": cond["pooled"]}
    with torch.no_grad():
        out = net(x, t, cond)
        torch.testing.assert_close(net(x, t, padded), out, atol=1e-5, rtol=1e-5)
        other = text_cond(1, length=4, seed=1)
        assert (net(x, t, other) - out).abs().max() > 1e-3
        torch.testing.assert_close(net(x, t, cond), out)  # deterministic


def test_timestep_embedding_is_the_transformer_sinusoid():
    emb = timestep_embedding(torch.tensor([0.0, 10.0]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]))
    torch.testing.assert_close(emb[1, 0], torch.cos(torch.tensor(10.0)))


def test_the_network_learns_a_fixed_batch():
    """A broken block (a wrong skip, a dead attention) would not fit 8 images in a hundred steps (measured: the loss
    falls from 1.0 to ~2e-4, so a 50x drop leaves a wide margin)."""
    torch.manual_seed(0)
    schedule = NoiseSchedule.from_name("cosine")
    net = UNet(3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_dim=16,
               context_dim=16, pooled_dim=16)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 3, 16, 16, generator=gen).clamp(-1, 1)
    cond = text_cond(8, width=16)
    noise = torch.randn(8, 3, 16, 16, generator=gen)
    t = torch.linspace(50, 950, 8).long()
    x_t = schedule.add_noise(x0, noise, t)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = (net(x_t, t, cond) - noise).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 50, (losses[0], losses[-1])


def word_unet(**kwargs) -> UNet:
    torch.manual_seed(0)
    return UNet(3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_dim=8,
                context_dim=32, vocab_size=20, **kwargs)


def test_bag_of_words_is_the_pooled_rows_of_the_prompt_words_and_ignores_padding():
    """vocab_size: emb += the prompt's word vectors combined (sum, rms = sum / sqrt(n), or mean), real tokens only."""
    ids = torch.tensor([[1, 5, 7, 7, 2, 0, 0]])  # <bos> 5 7 7 <eos> <pad> <pad>
    mask = ids != 0
    for pooling, divisor in (("sum", 1.0), ("rms", 5 ** 0.5), ("mean", 5.0)):
        net = word_unet(word_pooling=pooling)
        rows = net.word_embed.weight
        expected = (rows[1] + rows[5] + 2 * rows[7] + rows[2]) / divisor
        torch.testing.assert_close(net.bag_of_words(ids, mask)[0], expected)
        junk = ids.masked_fill(~mask, 9)  # whatever sits under the padding is never read
        torch.testing.assert_close(net.bag_of_words(junk, mask), net.bag_of_words(ids, mask))


def test_bigrams_make_word_order_visible_and_never_pair_with_padding():
    """bigram_buckets > 0 adds a vector per adjacent word pair (hashed), so "red bird, blue wings" and
    "blue bird, red wings" get different bags; unigrams alone cannot tell them apart."""
    red_first, blue_first = torch.tensor([[1, 5, 6, 7, 8, 2]]), torch.tensor([[1, 7, 6, 5, 8, 2]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    unigrams, bigrams = word_unet(word_pooling="sum"), word_unet(word_pooling="sum", bigram_buckets=64)
    torch.testing.assert_close(unigrams.bag_of_words(red_first, mask), unigrams.bag_of_words(blue_first, mask))
    assert (bigrams.bag_of_words(red_first, mask) - bigrams.bag_of_words(blue_first, mask)).abs().max() > 0.1
    rows, pairs = bigrams.word_embed.weight, bigrams.bigram_embed.weight
    bucket = lambda a, b: (a * 1_000_003 + b) % 64  # noqa: E731
    short = torch.tensor([[1, 5, 2, 0, 0]])
    expected = rows[1] + rows[5] + rows[2] + pairs[bucket(1, 5)] + pairs[bucket(5, 2)]  # no (2, pad) pair
    torch.testing.assert_close(bigrams.bag_of_words(short, short != 0)[0], expected)


def test_words_reach_the_output_through_the_time_embedding():
    """Two prompts that differ in one word change the output even with no cross-attention or pooled vector."""
    net = unzero(UNet(3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), head_dim=8,
                      context_dim=32, vocab_size=20))
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([400])
    context, mask = torch.zeros(1, 4, 32), torch.ones(1, 4, dtype=torch.bool)
    left = {"context": context, "context_mask": mask, "token_ids": torch.tensor([[1, 5, 10, 2]])}
    right = {**left, "token_ids": torch.tensor([[1, 5, 11, 2]])}
    with torch.no_grad():
        assert (net(x, t, left) - net(x, t, right)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="token_ids"):
        net(x, t, {"context": context, "context_mask": mask})


def test_cross_attention_levels_add_text_only_blocks():
    """cross_attention_levels: a level gets cross-attention to the text and nothing else (no self-attention, no
    MLP), so the prompt reaches a higher resolution at a fraction of a full transformer block's cost."""
    from models.layers import SpatialTransformer

    kwargs = dict(base_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1, attention_levels=(2,), head_dim=8,
                  context_dim=32)
    plain, crossed = UNet(3, **kwargs), UNet(3, cross_attention_levels=(1,), **kwargs)
    blocks = lambda net: [m.block for m in net.modules() if isinstance(m, SpatialTransformer)]  # noqa: E731
    assert len(blocks(crossed)) == len(blocks(plain)) + 3  # one level-1 block down, two up
    light = [b for b in blocks(crossed) if b.cross_only]
    assert len(light) == 3 and not any(hasattr(b, "self_attn") or hasattr(b, "ff") for b in light)
    net = unzero(crossed).eval()
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([300])
    with torch.no_grad():
        assert (net(x, t, text_cond(1)) - net(x, t, text_cond(1, seed=1))).abs().max() > 1e-3
    with pytest.raises(ValueError, match="cross_attention_levels"):
        UNet(3, **{**kwargs, "cross_attention_levels": (3,)})


def test_ff_mult_sets_the_transformer_mlp_width():
    from models.layers import FeedForward

    for mult in (1, 4):
        net = UNet(3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_dim=8,
                   context_dim=32, ff_mult=mult)
        widths = {(m.proj_in.in_features, m.proj_out.in_features) for m in net.modules() if isinstance(m, FeedForward)}
        assert widths == {(32, 32 * mult)}  # the middle and level 1 are both 32 wide
