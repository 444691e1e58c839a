"""Every fast path gives what the plain path gives: channels_last, bf16 autocast, torch.compile, SDPA,
for-each EMA, fused AdamW, batched classifier-free guidance, and no host-device sync inside a training step.

Each test states its tolerance. fp32 paths differ only by the order of floating-point operations
(different convolution / attention kernels), so they agree to ~1e-6 relative; bf16 keeps 8 mantissa
bits, so it is compared on the relative error of the whole output.
"""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from diffusion.conditioning import Cond
from diffusion.guidance import classifier_free_guidance
from diffusion.training.ema import EMA
from diffusion.training.optim import make_optimizer
from diffusion.training.runtime import autocast
from models.layers import attention
from models.unet import UNet

FP32 = {"atol": 1e-5, "rtol": 1e-4}  # fp32 with a different kernel / reduction order


def unzeroed_unet(seed: int = 0, **kwargs) -> UNet:
    """A small text-conditional UNet with every zero-initialised layer made live, so that every path carries
    signal (the real init zeroes the output layer: all outputs would be 0 and compare equal trivially)."""
    torch.manual_seed(seed)
    options = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(0, 1), head_dim=8,
                   context_dim=32, pooled_dim=32)
    net = UNet(3, **{**options, **kwargs})
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.05)
    return net


def inputs(batch: int = 2, resolution: int = 16, length: int = 6, width: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 3:] = False  # one padded prompt
    cond = Cond(context=torch.randn(batch, length, width, generator=g), context_mask=mask,
                pooled=torch.randn(batch, width, generator=g))
    return torch.randn(batch, 3, resolution, resolution, generator=g), torch.tensor([10, 900])[:batch], cond


def output_and_grads(net: UNet, x, t, cond):
    out = net(x, t, cond)
    out.square().mean().backward()
    grads = {name: p.grad.detach().clone() for name, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    return out.detach(), grads


def assert_same_grads(a: dict, b: dict, **tolerance) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], **tolerance, msg=lambda m, n=name: f"{n}: {m}")


def test_channels_last_matches_contiguous():
    """trainer.channels_last: same outputs and gradients (fp32 tolerance: atol 1e-5, rtol 1e-4)."""
    net = unzeroed_unet()
    x, t, cond = inputs()
    out, grads = output_and_grads(net, x, t, cond)
    fast = copy.deepcopy(net).to(memory_format=torch.channels_last)
    out_cl, grads_cl = output_and_grads(fast, x.contiguous(memory_format=torch.channels_last), t, cond)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)  # the layout really went through the network
    torch.testing.assert_close(out_cl, out, **FP32)
    assert_same_grads(grads, grads_cl, **FP32)


def test_bf16_autocast_on_cpu_is_close_to_fp32():
    """trainer.precision=bf16: the output's relative error (||bf16 - fp32|| / ||fp32||) stays under 3%
    (bf16 has an 8-bit mantissa: ~0.4% per rounding, accumulated over ~20 layers), and so does the
    gradient of every parameter tensor with a meaningful gradient (under 10%)."""
    net = unzeroed_unet()
    x, t, cond = inputs()
    out, grads = output_and_grads(net, x, t, cond)
    with autocast(torch.device("cpu"), "bf16"):
        out_bf16 = net(x, t, cond)
    assert out_bf16.dtype == torch.bfloat16  # autocast really ran the convolutions in bf16
    out_bf16.float().square().mean().backward()
    relative = lambda a, b: ((a.float() - b).norm() / b.norm()).item()  # noqa: E731
    assert relative(out_bf16.detach(), out) < 0.03
    for name, p in net.named_parameters():
        if grads[name].norm() > 1e-3 * max(g.norm() for g in grads.values()):
            assert relative(p.grad, grads[name]) < 0.10, name


def test_sdpa_matches_the_attention_formula():
    """models.layers.attention (F.scaled_dot_product_attention) equals softmax(q k^T / sqrt(d)) v with padding
    masked out, per head (fp32: atol 1e-5); and the whole UNet gives the same output on SDPA's math backend."""
    g = torch.Generator().manual_seed(0)
    heads, d = 2, 8
    q, k, v = torch.randn(3, 5, heads * d, generator=g), torch.randn(3, 7, heads * d, generator=g), torch.randn(3, 7, heads * d, generator=g)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    split = lambda z: z.unflatten(-1, (heads, d)).transpose(1, 2)  # noqa: E731  (B, N, h*d) -> (B, h, N, d)
    scores = split(q) @ split(k).transpose(-1, -2) / d**0.5
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    expected = (scores.softmax(-1) @ split(v)).transpose(1, 2).flatten(2)
    torch.testing.assert_close(attention(q, k, v, heads, mask), expected, **FP32)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    net = unzeroed_unet().eval()
    x, t, cond = inputs()
    with torch.no_grad():
        fast = net(x, t, cond)
        with sdpa_kernel([SDPBackend.MATH]):
            plain = net(x, t, cond)
    torch.testing.assert_close(fast, plain, **FP32)


def compare_compiled(backend: str, **tolerance) -> None:
    net = unzeroed_unet()
    x, t, cond = inputs()
    out, grads = output_and_grads(net, x, t, cond)
    torch._dynamo.reset()
    compiled = torch.compile(copy.deepcopy(net), backend=backend)
    out_c, grads_c = output_and_grads(compiled, x, t, cond)
    torch.testing.assert_close(out_c, out, **tolerance)
    assert_same_grads(grads, {k.removeprefix("_orig_mod."): v for k, v in grads_c.items()}, **tolerance)


def test_compile_graph_capture_matches_eager():
    """trainer.compile: TorchDynamo + AOTAutograd capture of the UNet (forward and backward graphs, run
    eagerly: backend aot_eager) gives eager's outputs and gradients (fp32: atol 1e-5, rtol 1e-4). Fast;
    the inductor code generation itself is the slow test below."""
    compare_compiled("aot_eager", **FP32)


@pytest.mark.slow  # inductor compiles C++ kernels: ~100 s on a 2-core CPU
def test_compile_inductor_matches_eager():
    """torch.compile's default backend (inductor: fused, reordered fp32 kernels): atol 1e-4, rtol 1e-3."""
    compare_compiled("inductor", atol=1e-4, rtol=1e-3)


def test_foreach_ema_matches_a_plain_loop():
    """EMA's torch._foreach_lerp_ equals the per-tensor loop and the formula ema = d * ema + (1 - d) * p,
    over several updates with warm-up (fp32 round-off: assert_close's float32 defaults, rtol 1.3e-6)."""
    net = unzeroed_unet()
    fast, plain = EMA(net, decay=0.9, warmup=True, foreach=True), EMA(net, decay=0.9, warmup=True, foreach=False)
    by_hand = [p.detach().clone() for p in net.parameters()]
    for step in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        fast.update(net, step)
        plain.update(net, step)
        d = min(0.9, (1 + step) / (10 + step))
        by_hand = [d * e + (1 - d) * p.detach() for e, p in zip(by_hand, net.parameters())]
    for a, b, c in zip(fast.model.parameters(), plain.model.parameters(), by_hand):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)


def fused_supported(device: str) -> bool:
    try:
        p = torch.nn.Parameter(torch.zeros(2, device=device))
        p.grad = torch.ones(2, device=device)
        torch.optim.AdamW([p], fused=True).step()
        return True
    except (RuntimeError, NotImplementedError):
        return False


@pytest.mark.skipif(not fused_supported("cpu"), reason="this torch has no fused AdamW on CPU (older than 2.4)")
def test_fused_adamw_matches_unfused():
    """optim.fused=true: given the same gradients, the fused AdamW kernel moves the weights as the for-each one
    does over 5 steps (fp32: atol 1e-6, rtol 1e-5); make_optimizer picks it on request, and by default
    (fused=auto) on CPU too where this torch has it."""
    config = OmegaConf.create({"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "fused": True})
    nets = {fused: unzeroed_unet() for fused in (False, True)}
    optimizers = {fused: make_optimizer(nets[fused].parameters(), OmegaConf.merge(config, {"fused": fused}), torch.device("cpu"))
                  for fused in nets}
    assert optimizers[True].defaults["fused"] and not optimizers[False].defaults["fused"]
    auto = make_optimizer(nets[False].parameters(), OmegaConf.merge(config, {"fused": "auto"}), torch.device("cpu"))
    assert auto.defaults["fused"]  # the skipif above: this torch has the CPU kernel
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g) for p in nets[False].parameters()]
        for fused, net in nets.items():
            for p, grad in zip(net.parameters(), grads):
                p.grad = grad.clone()
            optimizers[fused].step()
    for a, b in zip(nets[False].parameters(), nets[True].parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def test_batched_guidance_equals_two_separate_forwards():
    """classifier_free_guidance runs [uncond; cond] as one batch (prompts of different lengths padded and
    masked); it equals uncond + s * (cond - uncond) from two separate forwards (fp32: atol 1e-5, rtol 1e-4)."""
    net = unzeroed_unet().eval()
    x, t, cond = inputs()
    g = torch.Generator().manual_seed(5)
    uncond = Cond(context=torch.randn(2, 2, 32, generator=g), context_mask=torch.ones(2, 2, dtype=torch.bool),
                  pooled=torch.randn(2, 32, generator=g))  # the empty prompt: 2 tokens, shorter than the prompts
    scale = 4.0
    with torch.no_grad():
        guided = classifier_free_guidance(net, cond, uncond, scale)(x, 500)
        out_cond, out_uncond = net(x, torch.tensor(500), cond), net(x, torch.tensor(500), uncond)
    torch.testing.assert_close(guided, out_uncond + scale * (out_cond - out_uncond), **FP32)


def test_the_training_loop_reads_the_loss_only_at_log_steps(tmp_path, monkeypatch):
    """No per-step host reads of device values in the loop (each would be a host-device sync on a GPU): with
    4 steps and log_every=2, the loop reads a tensor (item / bool / float) only at steps 2 and 4."""
    import sys

    from diffusion.training import loop, train
    from tiny import tiny_train_cfg

    reads = []

    def spy(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args):
            frame = sys._getframe(1)
            if frame.f_code.co_filename == loop.__file__ and frame.f_code.co_name == "train_denoiser":
                reads.append((name, frame.f_lineno))
            return original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, read)

    for name in ("item", "__bool__", "__float__", "tolist"):
        spy(name)
    train(tiny_train_cfg(tmp_path, "trainer.max_steps=4", "trainer.log_every=2", "trainer.checkpoint_every=0",
                         "trainer.sample_every=0"))
    lines = sorted({line for _, line in reads})
    per_log_step = len(reads) / 2
    assert per_log_step == len(lines) and per_log_step <= 3, reads  # the same few reads, once per log step


@pytest.mark.gpu
def test_no_host_device_sync_inside_a_training_step(tmp_path):
    """The loop's step body (`train_step`: micro-batch loss with text encoding, backward, clipping, fused AdamW,
    EMA) runs under torch.cuda.set_sync_debug_mode('error'): any synchronising call raises."""
    from diffusion.config import objective_for
    from diffusion.model import build_diffusion_model
    from diffusion.spaces import PixelSpace
    from diffusion.training.data import batch_stream, build_dataset, data_info
    from diffusion.training.loop import train_step
    from diffusion.training.runtime import Processes
    from models.text_encoder import Tokenizer
    from tiny import tiny_train_cfg

    cfg = tiny_train_cfg(tmp_path, "device=cuda")
    device = torch.device("cuda")
    dataset = build_dataset(cfg, "train")
    info = {**data_info(dataset), **PixelSpace(dataset.resolution).info}
    vocabulary = Tokenizer.from_captions(dataset.all_captions()[:200]).vocabulary
    model = build_diffusion_model(cfg, info, vocabulary).to(device, memory_format=torch.channels_last)
    ema = EMA(model, 0.999)
    optimizer = make_optimizer(model.parameters(), cfg.optim, device)
    stream = batch_stream(dataset, 4, 0, 0, 0, 1, 0, True)

    def step(index):
        return train_step(model, model, ema, optimizer, [next(stream)], objective_for(cfg), cfg, Processes(), device,
                          index, torch.channels_last)

    step(0)  # warm-up: lazy CUDA initialisation (cuBLAS handles, allocator) may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = step(1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss)
