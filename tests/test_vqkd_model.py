"""The VQ-KD model's step: the decoder reads the codes, the two losses, fp32 quantisation, the
teacher kept out of checkpoints."""

import torch
import torch.nn.functional as F

from arvision.components import ImageSpec, Tokenizer, Tokens, TokenSpec
from arvision_plugins.vqkd_model import VQKDModel
from arvision_plugins.vqkd_quantizer import VectorQuantizer


class ConstantTeacher(Tokenizer):
    """Features (B, 4, 4, 6) from a fixed random projection of the image, with a parameter."""

    @classmethod
    def token_spec(cls, config, image):
        return TokenSpec(grid=(4, 4), dim=6, discrete=False)

    def __init__(self):
        super().__init__(None, ImageSpec(16, 3, 4))
        self.proj = torch.nn.Linear(48, 6)

    def forward(self, images):
        patches = F.unfold(images, 4, stride=4).transpose(1, 2)  # (B, 16, 48)
        return Tokens(self.proj(patches).view(-1, 4, 4, 6))


def model(teacher=None, beta=1.0) -> VQKDModel:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 4, kmeans_init=False, beta=beta)
    return VQKDModel.build(size=16, patch_size=4, in_chans=3, embed_dim=16, depth=1, num_heads=2,
                           drop_path=0.0, decoder_dim=16, decoder_depth=1, decoder_heads=2,
                           quantizer=quantizer, teacher=teacher, teacher_dim=6)


def images(n=3):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_the_decoder_reads_the_codes_and_the_losses_are_cosine_and_commitment():
    vq = model(beta=0.25).eval()  # eval: the codebook stays as it is
    x, target = images(), torch.randn(3, 4, 4, 6)
    out = vq(x, target)
    z = F.normalize(vq.encode(x), dim=-1)  # (B, 16, 4)
    ids = vq.quantize.nearest(z)
    codes = vq.quantize.codebook[ids]  # (B, 16, 4)
    reconstruction = vq.decode(codes)
    rec = (1 - F.cosine_similarity(reconstruction, target.flatten(1, 2), dim=-1)).mean()
    torch.testing.assert_close(out.parts["rec"], rec)
    torch.testing.assert_close(out.parts["quant"], 0.25 * F.mse_loss(codes, z))
    torch.testing.assert_close(out.loss, rec + 0.25 * F.mse_loss(codes, z))
    assert torch.equal(vq.tokenize(x), ids.view(3, 4, 4))


def test_the_reconstruction_loss_trains_the_encoder_through_the_codes():
    vq = model(beta=0.0).train()
    vq(images(), torch.randn(3, 4, 4, 6)).loss.backward()
    assert vq.encoder.blocks[0].mlp.fc1.weight.grad.abs().sum() > 0
    assert vq.encode_task_layer[2].weight.grad.abs().sum() > 0


def test_task_layer_and_quantiser_run_in_fp32_under_bf16():
    vq = model().train()
    seen = {}
    vq.encode_task_layer.register_forward_hook(lambda _m, _i, out: seen.update(z=out.dtype))
    vq.quantize.register_forward_pre_hook(lambda _m, args: seen.update(q=args[0].dtype))
    vq.decoder.blocks[0].mlp.fc1.register_forward_hook(lambda _m, _i, out: seen.update(d=out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        vq(images(), torch.randn(3, 4, 4, 6))
    assert seen == {"z": torch.float32, "q": torch.float32, "d": torch.bfloat16}


def test_the_teacher_runs_but_is_not_saved():
    teacher = ConstantTeacher()
    vq = model(teacher)
    state = vq.state_dict()
    assert not any(key.startswith("teacher.") for key in state)
    assert "quantize.codebook" in state and "quantize.last_used" in state
    vq.load_state_dict(state)  # strict: the teacher keeps its own weights
    assert not any(p.requires_grad for p in vq.teacher.parameters())
    x = images()
    out = vq.eval()(x)
    expected = vq(x, teacher(x).tokens)
    torch.testing.assert_close(out.loss, expected.loss)
