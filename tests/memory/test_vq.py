"""VQ codebook: straight-through gradients, nearest-code assignment, EMA, usage, bit packing."""

import torch

from agentlab.memory.tokenizer import SharedTokenizer, supcon_loss
from agentlab.memory.encoders import encode_text
from agentlab.memory.vq import VectorQuantizer
from agentlab.memory.vqvae import ImageVQVAE, pack_codes, unpack_codes


def test_straight_through_gradient_is_identity():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=8, dim=4)
    vq.train()
    z = torch.randn(5, 3, 4, requires_grad=True)
    out = vq(z)
    w = torch.randn_like(z)
    (out.quantized * w).sum().backward()
    assert torch.allclose(z.grad, w)  # d quantized / d z = I (van den Oord 2017, eq. 3)
    # forward value is the chosen code (eval: no EMA update between lookup and check)
    vq.eval()
    out = vq(z)
    assert torch.allclose(out.quantized.detach(), vq.embed[out.codes], atol=1e-6)


def test_codes_are_nearest_and_value_is_code():
    vq = VectorQuantizer(num_codes=3, dim=2)
    vq.eval()
    vq.embed.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    z = torch.tensor([[[9.0, 1.0], [1.0, 8.0], [0.5, -0.2]]])
    out = vq(z)
    assert out.codes.tolist() == [[1, 2, 0]]
    assert torch.allclose(out.quantized, vq.embed[out.codes])
    # commitment = beta * mean squared distance to the chosen code
    expected = 0.25 * ((z - vq.embed[out.codes]) ** 2).mean()
    assert torch.allclose(out.commitment, expected)


def test_dead_codes_restart_so_usage_stays_high():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=16, dim=2, decay=0.5, dead_threshold=0.5)
    vq.train()
    data = torch.randn(256, 2) * 3
    vq(data)  # data-initialised
    vq.embed[:8] = 1000.0  # half the codes far away: never chosen, so their counts decay
    vq.ema_sum[:8] = 1000.0
    for _ in range(20):
        vq(data)
    vq.reset_usage()
    vq(data)
    assert vq.usage() > 0.9
    assert (vq.embed.abs() < 100).all()


def test_pack_unpack_roundtrip_and_size():
    codes = torch.randint(0, 128, (10, 49))
    packed = pack_codes(codes, 7)
    assert packed.dtype == torch.uint8 and packed.shape == (10, 43)
    assert torch.equal(unpack_codes(packed, 49, 7), codes)


def test_vqvae_compression_ratio_and_shapes():
    m = ImageVQVAE(num_codes=128, dim=8, width=16)
    assert abs(m.compression_ratio() - 6272 / 343) < 1e-9
    x = torch.rand(4, 1, 28, 28)
    recon, terms = m(x)
    assert recon.shape == x.shape and set(terms) >= {"recon", "commitment"}
    assert m.encode(x).shape == (4, 49)


def test_shared_tokenizer_one_vocabulary_three_modalities():
    torch.manual_seed(0)
    tok = SharedTokenizer(num_codes=32, dim=16, key_dim=8, decoder=False)
    img, aud, txt = torch.rand(3, 1, 28, 28), torch.randn(3, 64, 32), encode_text(["seven", "one", "7"])
    shapes = {}
    for m, x in (("image", img), ("audio", aud), ("text", txt)):
        t = tok.tokenize(m, x)
        assert t.codes.max() < 32 and t.codes.min() >= 0
        shapes[m] = tuple(t.codes.shape)
        k = tok.key(t.codes, t.mask)
        assert k.shape == (3, 8) and torch.allclose(k.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert shapes == {"image": (3, 49), "audio": (3, 8), "text": (3, 16)}
    assert tok.tokenize("text", txt).mask[2].sum() == 1  # "7" is one real character
    terms = tok.loss({"image": (img, torch.tensor([7, 1, 7])), "text": (txt, torch.tensor([7, 1, 7]))})
    sum(terms.values()).backward()
    assert tok.encoders["text"].embed.weight.grad.abs().sum() > 0  # gradient reaches encoders through the codes


def test_supcon_prefers_aligned_keys():
    labels = torch.tensor([0, 0, 1, 1])
    aligned = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 0.1], [0, 1], [0.1, 1]]), dim=-1)
    crossed = aligned[[0, 2, 1, 3]]
    assert supcon_loss(aligned, labels) < supcon_loss(crossed, labels)
