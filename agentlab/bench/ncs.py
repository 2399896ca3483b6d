"""`ncs`: the VQ tokenizer on MNIST (NCS neural compression): compression ratio, PSNR, a classifier on tokens.

A VQ-VAE with 128 codes maps each 28x28 image to a 7x7 grid of 7-bit tokens:
6,272 raw bits over 343 token bits = 18.3:1. A small classifier
(`agentlab.memory.token_classifier`: codebook-initialised token embeddings, a 3-layer CNN
on the 7x7 grid) is trained on the token grids alone (never the pixels), with
shifted-and-re-encoded copies of the training images as augmentation, and compared
with the 1.2M-parameter CNN on raw pixels that NCS uses as its reference (two 3x3
convolutions, max-pool, a 128-unit dense layer: the Keras MNIST example; Adam, 1 epoch).

Quick: 8,000 training / 2,000 test images, 300 VQ steps, 4 classifier epochs.
Full: 60,000 / 10,000 images, 3,000 VQ steps, 8 classifier epochs over the
original codes and 2 shifted copies (cycled per epoch). Honours `--device`.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agentlab.bench import BenchArgs, BenchResult, n_params, register_bench
from agentlab.datasets import data_root
from agentlab.optim import fast_kernels
from agentlab.registry import BuildEnv


def raw_cnn() -> nn.Module:
    """The Keras MNIST CNN (1.2M parameters), NCS's raw-pixel reference."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10),
    )


def train_classifier(model: nn.Module, x: Tensor, y: Tensor, *, epochs: int, g: torch.Generator, lr: float = 1e-3,
                     batch_size: int = 128) -> float:
    """Adam on cross-entropy; returns the training time in seconds."""
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=lr, **fast_kernels(params, fused=True))
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return float(sum((model(x[i : i + 1000]).argmax(-1) == y[i : i + 1000]).sum() for i in range(0, len(x), 1000)) / len(x))


@register_bench("ncs", device=True)
def bench_ncs(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """VQ-VAE compression of MNIST and classification on its tokens (NCS)."""
    from agentlab.memory.token_classifier import (
        TokenClassifier,
        encode_all,
        shifted_codes,
        train_on_codes,
    )
    from agentlab.memory.vqvae import ImageVQVAE, psnr_db
    from agentlab.scenarios.vision_data import load_tensors

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    root = data_root(args.data_root or env.data_root)
    x, y = load_tensors("mnist", root, train=True)
    dev = args.device
    x = x.float().to(dev) / 255
    xt, yt = load_tensors("mnist", root, train=False)
    xt = xt.float().to(dev) / 255
    y, yt = y.to(dev), yt.to(dev)
    n_train, n_test = (8000, 2000) if args.quick else (len(x), len(xt))
    vq_steps, clf_epochs, shifted, cnn_epochs = (300, 4, 1, 1) if args.quick else (3000, 8, 2, 1)
    x, y, xt, yt = x[:n_train], y[:n_train], xt[:n_test], yt[:n_test]

    vqvae = ImageVQVAE(num_codes=128, dim=32).to(dev)
    t0 = time.perf_counter()
    fit = vqvae.fit(x, epochs=-(-vq_steps * 64 // len(x)), batch_size=64, generator=g, max_steps=vq_steps)
    vq_s = time.perf_counter() - t0
    codes, codes_t = encode_all(vqvae, x), encode_all(vqvae, xt)
    recon = torch.cat([vqvae.decode(codes_t[i : i + 1000]) for i in range(0, len(xt), 1000)])
    psnr = psnr_db(recon, xt)
    vqvae.vq.reset_usage()
    vqvae.vq.hits += torch.bincount(codes_t.reshape(-1), minlength=128).float()
    usage = vqvae.vq.usage()

    t0 = time.perf_counter()
    code_sets = [codes] + [shifted_codes(vqvae, x, 2, g) for _ in range(shifted)]  # augmentation: moved, re-encoded
    aug_s = time.perf_counter() - t0
    clf = TokenClassifier(num_codes=128, dim=32, codebook=vqvae.vq.embed.detach().cpu()).to(dev)
    clf_s = train_on_codes(clf, code_sets, y, epochs=clf_epochs, g=g)
    clf_acc = accuracy(clf, codes_t, yt)
    cnn = raw_cnn().to(dev)
    cnn_s = train_classifier(cnn, x, y, epochs=cnn_epochs, g=g)
    cnn_acc = accuracy(cnn, xt, yt)

    ratio = vqvae.compression_ratio()
    metrics = {"compression_ratio": ratio, "psnr_db": psnr, "token_clf_acc": clf_acc, "token_clf_params": float(n_params(clf)),
               "token_clf_train_s": clf_s, "raw_cnn_acc": cnn_acc, "raw_cnn_params": float(n_params(cnn)),
               "raw_cnn_train_s": cnn_s, "codebook_usage": usage, "vqvae_train_s": vq_s, "augment_encode_s": aug_s}
    rows = [
        {"model": "token classifier", "input": "7x7 tokens", "params": n_params(clf), "epochs": clf_epochs, "train_s": clf_s, "test_acc": clf_acc},
        {"model": "raw CNN", "input": "28x28 pixels", "params": n_params(cnn), "epochs": cnn_epochs, "train_s": cnn_s, "test_acc": cnn_acc},
    ]
    goals = {
        "compression ratio >= 18:1": "met" if ratio >= 18 else f"NOT met ({ratio:.2f})",
        "token classifier >= 97%": "met" if clf_acc >= 0.97 else f"NOT met ({100 * clf_acc:.2f}%)",
    }
    notes = (f"VQ-VAE: {n_train} training images, {vq_steps} steps of 64, last recon MSE {fit['recon']:.4f}, "
             f"codebook usage on test tokens {usage:.2f}; token classifier: {clf_epochs} epochs over the codes and "
             f"{shifted} shifted re-encoded copies ({aug_s:.0f} s to encode them, not in train_s); test on {n_test} images; "
             f"device {dev}")
    return BenchResult(metrics, rows, goals, notes)
