"""Inspection tools: the trajectory callback sees every step, attention maps are distributions over the
prompt's real tokens, and the schedule plot is written."""

import torch

from diffusion.tools.inspection import (AttentionRecorder, TrajectoryRecorder, average_maps, cross_attention_layers,
                                  cross_attention_maps, plot_schedules, render_attention, render_trajectory,
                                  schedule_configs)
from diffusion.pipeline import generate_images
from diffusion.tools.workbench import load_model


def test_trajectory_recorder_keeps_every_step_with_its_shapes(tiny_checkpoint, tmp_path):
    loaded = load_model(tiny_checkpoint)
    sampler = loaded.sampler()
    recorder = TrajectoryRecorder()
    images = generate_images(loaded.model, sampler, ["a red bird", "a blue duck on water"], [0, 1], shape=(3, 16, 16),
                             steps=6, guidance_scale=2.0, callback=recorder)
    assert len(recorder) == 6
    assert recorder.timesteps == sampler.levels(6)
    for name in ("x_t", "pred_x0", "pred_eps"):
        assert recorder.stacked(name).shape == (6, 2, 3, 16, 16)
    # the sampler's last step lands on x0 = its own prediction (t_prev = -1)
    assert recorder.steps[-1].t_prev == -1
    torch.testing.assert_close(recorder.steps[-1].pred_x0.clamp(-1, 1), images, atol=1e-5, rtol=0)
    path = render_trajectory(recorder, tmp_path / "trajectory.png", max_rows=4, show_noise=True)
    assert path.is_file() and path.stat().st_size > 1000

    only_first = TrajectoryRecorder(images=[0])
    generate_images(loaded.model, sampler, ["a red bird", "a blue duck"], [0, 1], shape=(3, 16, 16), steps=3,
                    callback=only_first)
    assert only_first.stacked("x_t").shape == (3, 1, 3, 16, 16)


def test_cross_attention_maps_sum_to_one_over_the_real_tokens(tiny_checkpoint, tmp_path):
    loaded = load_model(tiny_checkpoint)
    model = loaded.model
    layers = cross_attention_layers(model)
    assert layers and all(name.endswith("cross_attn") for name, _ in layers)
    prompt = "a small red bird with blue wings"
    x_t = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = cross_attention_maps(model, prompt, x_t, t=500)
    assert maps.tokens == ["<bos>", "a", "small", "red", "bird", "with", "blue", "wings", "<eos>"]
    assert maps.maps.shape == (len(maps.tokens), maps.resolution, maps.resolution)
    torch.testing.assert_close(maps.maps.sum(0), torch.ones(maps.resolution, maps.resolution), atol=1e-5, rtol=0)
    assert all(not layer.record_maps and layer.last_maps is None for _, layer in layers)  # switched off again
    path = render_attention(maps, tmp_path / "attention.png", image=x_t[0].clamp(-1, 1))
    assert path.is_file() and path.stat().st_size > 1000


def test_padding_tokens_get_no_attention_and_layers_average_at_any_resolution():
    # two prompts of different lengths in one batch: the shorter one's padding is masked in the softmax
    from models.layers import attention_probabilities

    generator = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 16, 8, generator=generator), torch.randn(2, 5, 8, generator=generator)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    coarse = attention_probabilities(q, k, heads=2, key_mask=mask)  # (2, 16 = 4x4, 5)
    fine = attention_probabilities(torch.randn(2, 64, 8, generator=generator), k, heads=2, key_mask=mask)  # 8x8
    averaged = average_maps([coarse, fine])
    assert averaged.shape == (2, 5, 8, 8)
    torch.testing.assert_close(averaged.sum(1), torch.ones(2, 8, 8), atol=1e-5, rtol=0)
    assert averaged[1, 3:].abs().max() == 0
    assert average_maps([coarse, fine], resolution=4).shape == (2, 5, 4, 4)


def test_attention_recorder_keeps_the_conditional_half_of_every_guided_step(tiny_checkpoint):
    loaded = load_model(tiny_checkpoint)
    with AttentionRecorder(loaded.model) as attention:
        generate_images(loaded.model, loaded.sampler(), ["a red owl"], [0], shape=(3, 16, 16), steps=4,
                        guidance_scale=3.0, callback=attention)
    assert len(attention.steps) == 4
    t, maps = attention.steps[0]
    assert maps.shape[0] == 1 and maps.shape[1] == 5  # <bos> a red owl <eos>
    torch.testing.assert_close(maps.sum(1), torch.ones_like(maps.sum(1)), atol=1e-5, rtol=0)


def test_schedule_plot_covers_every_schedule_config(tmp_path):
    names = set(schedule_configs())
    assert {"linear", "cosine", "scaled_linear", "sigmoid"} <= names
    path = plot_schedules(tmp_path / "schedules.png")
    assert path.is_file() and path.stat().st_size > 10_000
