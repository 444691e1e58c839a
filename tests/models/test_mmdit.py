"""MMDiT: the identity start, the calling contract, that the joint attention carries the text (and ignores
padding), the bad-input lines, and train.py -> sample.py from the command line."""

import pytest
import torch

from diffusion.conditioning import Cond
from models.mmdit import MMDiT


def small(**kwargs):
    size = dict(in_channels=3, patch_size=2, hidden_size=32, depth=2, num_heads=2, context_dim=16)
    return MMDiT(**{**size, **kwargs})


def text_cond(batch, length=6, real=4, context_dim=16, vocab=20, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.arange(length)[None].expand(batch, length) < real  # the last length - real tokens are padding
    return Cond(context=torch.randn(batch, length, context_dim, generator=generator), context_mask=mask,
                pooled=torch.randn(batch, context_dim, generator=generator),
                token_ids=torch.randint(1, vocab, (batch, length), generator=generator) * mask)


def make_live(model, seed=0):
    """Random weights in the zero-initialised layers (gates, adaLN, output), so that every path is active."""
    generator = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "ada" in name or name.startswith("out."):
            p.data.copy_(0.1 * torch.randn(p.shape, generator=generator))
    return model


def test_starts_at_zero_keeps_shapes_and_learns():
    torch.manual_seed(0)
    model = small(pooled_dim=16, vocab_size=20)
    x, cond, t = torch.randn(2, 3, 16, 16), text_cond(2), torch.tensor([3, 700])
    out = model(x, t, cond)
    assert out.shape == x.shape and out.abs().max() == 0  # zero-initialised gates and output layer
    assert (model.downsampling, model.patch_size, model.in_channels, model.out_channels) == (2, 2, 3, 3)
    assert model.blocks[-1].text.pre_only and not model.blocks[0].text.pre_only  # SD3's context_pre_only last block
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    target = torch.randn_like(x)
    losses = []
    for _ in range(25):
        loss = ((model(x, t, cond) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_the_text_reaches_the_image_through_joint_attention():
    """No pooled vector, no bag of words: the text tokens are the only way the prompt gets in, so another
    context gives another output."""
    torch.manual_seed(0)
    model = make_live(small(depth=3)).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    with torch.no_grad():
        first, second = model(x, t, text_cond(2, seed=0)), model(x, t, text_cond(2, seed=1))
    assert (first - second).abs().max() > 1e-3


def test_padding_tokens_do_not_change_the_output():
    torch.manual_seed(0)
    model = make_live(small(depth=3, pooled_dim=16, vocab_size=20)).eval()
    x, t, cond = torch.randn(2, 3, 16, 16), torch.tensor([10, 500]), text_cond(2, length=7, real=3)
    padded = Cond(context=cond.context.clone(), context_mask=cond.context_mask, pooled=cond.pooled,
                  token_ids=cond.token_ids)
    padded.context[:, 3:] = 100 * torch.randn(2, 4, 16)  # what a tokenizer's padding holds must not matter
    with torch.no_grad():
        reference, changed = model(x, t, cond), model(x, t, padded)
        unmasked = model(x, t, Cond(context=padded.context, pooled=cond.pooled, token_ids=cond.token_ids,
                                    context_mask=torch.ones_like(cond.context_mask)))
    assert torch.allclose(reference, changed, atol=1e-5)
    assert (reference - unmasked).abs().max() > 1e-3  # while a real token there does


def test_bad_inputs_are_one_clear_line():
    model = small(patch_size=4)
    with pytest.raises(ValueError, match="18x18 is not divisible by the MMDiT patch size 4"):
        model(torch.randn(1, 3, 18, 18), torch.tensor([1]), text_cond(1))
    with pytest.raises(ValueError, match="2x2 is smaller than the MMDiT patch size 4"):
        model(torch.randn(1, 3, 2, 2), torch.tensor([1]), text_cond(1))
    with pytest.raises(ValueError, match="MMDiT needs text tokens: pass cond with `context`"):
        model(torch.randn(1, 3, 16, 16), torch.tensor([1]), None)
    with pytest.raises(ValueError, match="MMDiT is text-conditional by design: use text=scratch|minilm or model=dit_"):
        MMDiT(in_channels=3, context_dim=None)


def test_built_without_text_the_config_error_is_one_line(tmp_path):
    from diffusion.errors import UserError
    from diffusion.model import build_diffusion_model
    from tiny import tiny_train_cfg

    cfg = tiny_train_cfg(tmp_path, "model=mmdit_tiny", "text=none")
    with pytest.raises(UserError, match="model: MMDiT is text-conditional by design"):
        build_diffusion_model(cfg, {"shape": [3, 16, 16]}, None)


def test_train_and_sample_from_the_command_line(tmp_path):
    from diffusion import checkpoint as ckpt
    from tiny import TINY_TRAIN, run_in_process as run_script  # the command lines, in this process

    run = tmp_path / "run"
    tiny = [o for o in TINY_TRAIN if not o.startswith("model.")]
    result = run_script("train.py", *tiny, "model=mmdit_tiny", "model.hidden_size=32", "model.depth=2",
                        "model.num_heads=2", "trainer.max_steps=2", f"paths.data_dir={tmp_path / 'data'}",
                        f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    checkpoint = ckpt.load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert checkpoint["step"] == 2 and "models.mmdit.MMDiT" in checkpoint["config"]
    out = tmp_path / "samples"
    result = run_script("sample.py", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "prompt=a small red bird",
                        "num_images=1", "steps=2", f"out_dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list(out.glob("*_seed*.png"))) == 1
