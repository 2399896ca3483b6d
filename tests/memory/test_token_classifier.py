"""The NCS token classifier: shapes, codebook-initialised embeddings, the shift augmentation, and that it learns."""

import torch

from agentlab.memory.token_classifier import TokenClassifier, shift_images, train_on_codes


def test_shapes_and_codebook_initialisation():
    book = torch.randn(16, 8)
    m = TokenClassifier(num_codes=16, dim=8, width=8, codebook=book)
    assert m(torch.randint(0, 16, (5, 49))).shape == (5, 10)
    scaled = m.embed.weight.detach()
    assert torch.allclose(scaled * book.std(), book, atol=1e-5)  # same vectors, unit scale
    try:
        TokenClassifier(num_codes=16, dim=8, codebook=torch.randn(16, 4))
    except ValueError as e:
        assert "codebook" in str(e)
    else:
        raise AssertionError("a codebook of the wrong shape was accepted")


def test_shift_images_moves_each_image_by_at_most_max_shift_with_zero_fill():
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0
    g = torch.Generator().manual_seed(0)
    out = shift_images(x, 2, g)
    assert out.shape == x.shape and torch.equal(out.sum((1, 2, 3)), x.sum((1, 2, 3)))  # nothing cut off, nothing added
    moves = set()
    for im in out[:, 0]:
        r, c = torch.nonzero(im).min(0).values.tolist()
        assert abs(r - 10) <= 2 and abs(c - 12) <= 2
        moves.add((r - 10, c - 12))
    assert len(moves) > 5  # images move independently
    assert torch.equal(shift_images(x, 0, g), x)


def test_learns_a_token_rule():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (256, 49), generator=g)
    y = (codes[:, 24] % 4 == 0).long()  # label = the centre token's class
    torch.manual_seed(0)
    m = TokenClassifier(num_codes=16, dim=8, width=8, classes=2)
    train_on_codes(m, [codes], y, epochs=10, g=g, lr=1e-2, batch_size=64)
    m.eval()
    with torch.no_grad():
        acc = (m(codes).argmax(-1) == y).float().mean()
    assert acc > 0.95
