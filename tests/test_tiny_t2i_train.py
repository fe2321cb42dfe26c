"""The shapes domain and the tiny-t2i training code: determinism, held-out split, tokenizer, reproducible training."""

from __future__ import annotations

import numpy as np
import torch

from anna.adapters import tiny_t2i
from anna.domain import shapes
from anna.train import sharpen, t2i


def test_domain_is_deterministic_and_holds_out_prompts():
    scenes = shapes.all_scenes()
    captions = [c for c, _ in scenes]
    assert len(set(captions)) == len(captions) == 5490
    train, held = shapes.split()
    assert len(held) == shapes.HELD_OUT >= 200
    assert not {c for c, _ in train} & {c for c, _ in held}
    assert shapes.split() == shapes.split() and shapes.held_out_prompts(3) == [c for c, _ in held[:3]]
    a = shapes.render_caption(held[0][0])
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, shapes.render_caption(held[0][0]))


def test_caption_names_its_scene():
    s = shapes.scene_of("a red circle above a blue square on a yellow background")
    assert s == shapes.Scene("yellow", (("top", "circle", "red"), ("bottom", "square", "blue")))
    # the same picture in other words
    assert shapes.scene_of("a blue square below a red circle on a yellow background.") == s
    img = shapes.render(s)
    assert tuple(img[16, 32]) == shapes.COLOURS["red"] and tuple(img[48, 32]) == shapes.COLOURS["blue"]
    assert tuple(img[2, 2]) == shapes.COLOURS["yellow"]
    labels = s.slot_labels()
    assert labels[shapes.SLOTS.index("left")] == 0 and labels[shapes.SLOTS.index("top")] == 1 + 0 * 6 + 0
    assert labels[shapes.SLOTS.index("bottom")] == 1 + 1 * 6 + 2


def test_tokenizer_spells_every_domain_word_as_one_token():
    words = shapes.vocabulary()
    tok = tiny_t2i.build_tokenizer(words)
    for w in words:
        assert tok.tokenize(w) == [w + "</w>"]
    ids = tok("a red circle at the left on a blue background").input_ids
    assert len(ids) == 12 and ids[0] == len(tok) - 2 and ids[-1] == len(tok) - 1


def _train(seed: int, steps: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    caps = [c for c, _ in shapes.split()[0][:8]]
    pipe = tiny_t2i.build_fresh(shapes.vocabulary(), seed)
    latents = t2i.encode_latents(pipe, t2i.images_tensor(caps))
    cfg = t2i.TrainConfig(seed=seed, unet_steps=steps, unet_batch=8, unet_lr=2e-3)
    losses = t2i.train_unet(pipe, latents, t2i.token_ids(pipe, caps), cfg, log=lambda s: None, progress=False)
    return losses, {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def test_training_is_reproducible_and_the_loss_falls():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses, w1 = _train(seed=3, steps=40)
        again, w2 = _train(seed=3, steps=40)
    finally:
        torch.set_num_threads(threads)
    assert losses == again  # bit-identical on one thread
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])


def _sharpen(seed: int, steps: int) -> tuple[dict[str, list[float]], dict[str, torch.Tensor], tuple, tuple]:
    """Sharpen a fresh pipeline on 8 captions; also the loss terms on one fixed batch before and after."""
    caps = [c for c, _ in shapes.split()[0][:8]]
    pipe = tiny_t2i.build_fresh(shapes.vocabulary(), seed)
    images = t2i.images_tensor(caps)
    latents = t2i.encode_latents(pipe, images)
    ids = t2i.token_ids(pipe, caps)
    vae_before = {k: v.clone() for k, v in pipe.vae.state_dict().items()}
    cfg = sharpen.SharpenConfig(seed=seed, steps=steps, batch=8, lr=2e-3, pixel_share=0.5)

    def fixed() -> tuple:
        with torch.no_grad():
            return sharpen.sharpen_loss(pipe, latents, images, ids, caps, torch.Generator().manual_seed(99), cfg)[1:]

    before = fixed()
    hist = sharpen.sharpen_unet(pipe, latents, images, ids, caps, cfg, log=lambda s: None, progress=False)
    assert all(torch.equal(v, pipe.vae.state_dict()[k]) for k, v in vae_before.items())  # the VAE stays frozen
    assert all(p.requires_grad for p in pipe.vae.parameters())  # ... and is handed back trainable
    return hist, {k: v.clone() for k, v in pipe.unet.state_dict().items()}, before, fixed()


def test_sharpen_stage_is_reproducible_and_its_losses_fall():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        hist, w1, before, after = _sharpen(seed=5, steps=12)
        again, w2, _, _ = _sharpen(seed=5, steps=12)
    finally:
        torch.set_num_threads(threads)
    assert hist == again  # bit-identical on one thread
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert len(hist["loss"]) == 12
    # on one fixed batch (same timesteps and noise): the latent, pixel and hinge terms all fall
    assert after[0] < 0.5 * before[0] and after[1] < 0.95 * before[1] and after[2] < 0.9 * before[2], (before, after)


def test_sharpen_timesteps_hit_the_sampling_steps():
    t = sharpen.sharpen_timesteps(4000, torch.Generator().manual_seed(0))
    assert 0.45 < (t == 999).float().mean() < 0.55 and 0.2 < (t == 499).float().mean() < 0.3
    assert int(t.min()) >= 0 and int(t.max()) <= 999


def test_text_encoding_matches_the_pipeline():
    pipe = tiny_t2i.build_fresh(shapes.vocabulary(), 0)
    caption = shapes.held_out_prompts(1)[0]
    ours, pooled = t2i.encode_text(pipe, t2i.token_ids(pipe, [caption]))
    with torch.no_grad():
        embeds, _, theirs_pooled, _ = pipe.encode_prompt(caption, device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(ours, embeds)
    torch.testing.assert_close(pooled, theirs_pooled)
