import torch

from anna.adapters import tiny as tiny_adapter


def test_weights_are_seeded():
    a = tiny_adapter.build_pipeline().unet.state_dict()
    b = tiny_adapter.build_pipeline().unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sdxl_shaped(tiny):
    pipe = tiny.pipeline
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert pipe.unet.config.addition_embed_type == "text_time"
    names = dict(pipe.unet.named_modules())
    for n in ("conv_in", "time_embedding.linear_1", "down_blocks.1.attentions.0.transformer_blocks.0.attn2"):
        assert n in names
    assert len(pipe.tokenizer("a cat").input_ids) == 6  # bos, a, c, a, t, eos: character tokens, offline
