"""DiT: the paper's sizes and FLOPs, adaLN-Zero's identity start, the position embedding, the
UNet's calling contract, and training as a drop-in backbone."""

import pytest
import torch

from diffusion.conditioning import Cond
from models.dit import DiT, dit_flops_per_image, sincos_2d

# Peebles & Xie 2023, Table 1 and Table 4 (ImageNet 256: 32x32x4 latents, 1000 classes + the null class)
PAPER = {"XL/2": (dict(hidden_size=1152, depth=28, num_heads=16), 675e6, 118.6e9),
         "S/2": (dict(hidden_size=384, depth=12, num_heads=6), 33e6, 6.06e9),
         "B/2": (dict(hidden_size=768, depth=12, num_heads=12), 130e6, 23.01e9)}


@pytest.mark.parametrize("name", list(PAPER))
def test_parameters_and_flops_match_the_paper(name):
    size, params, gflops = PAPER[name]
    with torch.device("meta"):
        model = DiT(in_channels=4, patch_size=2, num_classes=1001, text_conditional=False, **size)
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(params, rel=0.01)
    # the paper counts a multiply-add as one FLOP; torch's counter counts two
    assert dit_flops_per_image(model, 4, 32) / 2 == pytest.approx(gflops, rel=0.01)


def test_position_embedding_is_2d_sincos():
    table = sincos_2d(4, 6, 16)
    assert table.shape == (24, 16)
    row_part, col_part = table[:, :8].view(4, 6, 8), table[:, 8:].view(4, 6, 8)
    assert torch.allclose(row_part[:, :1], row_part)  # the first half depends on the row only
    assert torch.allclose(col_part[:1], col_part)  # the second on the column only
    assert torch.allclose(table[0, :4], torch.zeros(4)) and torch.allclose(table[0, 4:8], torch.ones(4))  # sin 0, cos 0


def text_cond(batch, context_dim=16, vocab=20):
    return Cond(context=torch.randn(batch, 5, context_dim), context_mask=torch.ones(batch, 5, dtype=torch.bool),
                pooled=torch.randn(batch, context_dim), token_ids=torch.randint(1, vocab, (batch, 5)))


def test_adaln_zero_starts_at_zero_and_learns():
    model = DiT(in_channels=3, patch_size=2, hidden_size=32, depth=2, num_heads=2, context_dim=16, pooled_dim=16, vocab_size=20)
    x, cond = torch.randn(2, 3, 16, 16), text_cond(2)
    out = model(x, torch.tensor([3, 700]), cond)
    assert out.shape == x.shape and out.abs().max() == 0  # zero-initialised output layer and gates
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    target = torch.randn_like(x)
    losses = []
    for _ in range(30):
        loss = ((model(x, torch.tensor([3, 700]), cond) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_patch_embedding_keeps_positions_apart():
    """Unpatchify inverts patchify's layout: a model whose output is linear in the patch tokens puts each
    pixel back where it came from (checked by moving one input pixel and seeing only its patch change)."""
    torch.manual_seed(0)
    model = DiT(in_channels=3, patch_size=4, hidden_size=32, depth=0, num_heads=2)
    torch.nn.init.normal_(model.out.weight)
    x = torch.zeros(1, 3, 16, 16)
    base = model(x, torch.tensor([5]))
    x[0, :, 9, 2] = 1.0  # a pixel in patch row 2, column 0
    changed = (model(x, torch.tensor([5])) - base).abs().sum(dim=1)[0] > 1e-6
    assert changed[8:12, 0:4].any() and not changed[:8].any() and not changed[12:].any()


def test_bad_inputs_are_one_clear_line():
    model = DiT(in_channels=3, patch_size=4, hidden_size=32, depth=1, num_heads=2, context_dim=16)
    with pytest.raises(ValueError, match="not divisible by the DiT patch size 4"):
        model(torch.randn(1, 3, 18, 18), torch.tensor([1]), text_cond(1))
    with pytest.raises(ValueError, match="2x2 is smaller than the DiT patch size 4"):
        model(torch.randn(1, 3, 2, 2), torch.tensor([1]), text_cond(1))
    with pytest.raises(ValueError, match="text-conditional: pass cond with `context`"):
        model(torch.randn(1, 3, 16, 16), torch.tensor([1]), None)
    with pytest.raises(ValueError, match="class-conditional only"):
        DiT(in_channels=4, context_dim=16, text_conditional=False)


def test_dit_trains_and_samples_as_a_drop_in_backbone(tmp_path):
    """`train.py model=dit_tiny` with each objective, then sampling, through the same code as the UNet."""
    from diffusion.errors import UserError
    from diffusion.loading import load_model
    from diffusion.pipeline import generate_images
    from diffusion.training import train
    from tiny import tiny_train_cfg

    for objective in ("ddpm", "flow"):
        ckpt = train(tiny_train_cfg(tmp_path / objective, "model=dit_tiny", f"objective={objective}"))
        loaded = load_model(ckpt)
        assert type(loaded.model.denoiser).__name__ == "DiT"
        images = generate_images(loaded.model, loaded.sampler(), ["a red bird"], [0], shape=(3, 16, 16), steps=2,
                                 guidance_scale=2.0)
        assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    with pytest.raises(UserError, match="split into 8x8 patches"):
        train(tiny_train_cfg(tmp_path / "big_patch", "model=dit_tiny", "model.patch_size=8", "dataset.resolution=20"))
