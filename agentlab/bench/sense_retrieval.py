"""`sense-retrieval`: cross-modal retrieval through the SENSE shared tokenizer and a mini-RAG store.

The tokenizer is trained on MNIST training images, FSDD training recordings
(indices 5-49) and digit words. Evaluation stores tokenized episodes of one
modality and queries with another: spoken digits of the FSDD test split (indices
0-4, 300 clips) against MNIST test images, MNIST test images against the 300 test
clips, and the ten digit words against the images. Latency: single-query exact
top-1 over a store of 10^5 episodes.
"""

from __future__ import annotations

import time

import torch

from agentlab.bench import BenchArgs, BenchResult, register_bench
from agentlab.datasets import data_root
from agentlab.registry import BuildEnv


@register_bench("sense-retrieval")
def bench_sense_retrieval(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """Spoken digit <-> image, word -> image retrieval; latency at 1e5 stored episodes."""
    from agentlab.memory.encoders import encode_text
    from agentlab.memory.sense import (
        WORDS,
        SenseData,
        fill_store,
        tokenize_all,
        top1,
        train_sense,
    )
    from agentlab.memory.store import EpisodeStore
    from agentlab.memory.tokenizer import SharedTokenizer
    from agentlab.scenarios.fsdd import load_fsdd
    from agentlab.scenarios.vision_data import load_tensors

    torch.manual_seed(args.seed)
    root = data_root(args.data_root or env.data_root)
    x, y = load_tensors("mnist", root, train=True)
    x = x.float() / 255
    xt, yt = load_tensors("mnist", root, train=False)
    xt = xt.float() / 255
    a, ay, _ = load_fsdd(root, "train")
    at, aty, _ = load_fsdd(root, "test")
    steps, n_img_test, n_fill = (150, 1000, 5000) if args.quick else (600, len(xt), 20_000)
    xt, yt = xt[:n_img_test], yt[:n_img_test]

    tok = SharedTokenizer(num_codes=256, dim=64, key_dim=64)
    fit = train_sense(tok, SenseData(x, y, a, ay), steps=steps, seed=args.seed)

    results = {}
    images = EpisodeStore(capacity=len(xt), key_dim=64, max_tokens=64)
    fill_store(images, tok, "image", xt, yt)
    audio = EpisodeStore(capacity=len(at), key_dim=64, max_tokens=64)
    fill_store(audio, tok, "audio", at, aty)
    _, _, k_audio = tokenize_all(tok, "audio", at)
    _, _, k_img = tokenize_all(tok, "image", xt)
    _, _, k_txt = tokenize_all(tok, "text", encode_text(list(WORDS)))
    results["audio_to_image_top1"] = top1(images, k_audio, aty)
    results["image_to_audio_top1"] = top1(audio, k_img, yt)
    results["text_to_image_top1"] = top1(images, k_txt, torch.arange(10))

    # latency at 10^5 episodes: real image keys (train + test) with small noise to fill the store
    big = EpisodeStore(capacity=100_000, key_dim=64, max_tokens=49)
    codes, _, keys = tokenize_all(tok, "image", x[:n_fill])
    reps = -(-100_000 // len(keys))
    noisy = (keys.repeat(reps, 1)[:100_000] + 0.01 * torch.randn(100_000, 64))
    big.write(noisy, codes.repeat(reps, 1)[:100_000], y[:n_fill].repeat(reps)[:100_000])
    q = k_audio[:100]
    for row in q[:5]:  # warm-up
        big.retrieve(row[None], k=1, touch=False)
    t0 = time.perf_counter()
    for row in q:
        big.retrieve(row[None], k=1)
    latency_ms = 1000 * (time.perf_counter() - t0) / len(q)
    t0 = time.perf_counter()
    big.retrieve(q, k=5)
    batched_ms = 1000 * (time.perf_counter() - t0) / len(q)
    # the same 1e5 keys behind a FAISS IVF index (agentlab.memory.ann): latency and agreement with exact top-1
    ivf = EpisodeStore(capacity=100_000, key_dim=64, max_tokens=49, index="ivf", ann_min_size=1000)
    ivf.write(noisy, codes.repeat(reps, 1)[:100_000], y[:n_fill].repeat(reps)[:100_000])
    ivf.retrieve(q[:1], k=1)  # builds the index
    exact_slots = big.retrieve(q, k=1, touch=False).slots
    t0 = time.perf_counter()
    for row in q:
        ivf.retrieve(row[None], k=1)
    results["latency_ms_1e5_ivf"] = 1000 * (time.perf_counter() - t0) / len(q)
    results["ivf_top1_agreement"] = float((ivf.retrieve(q, k=1, touch=False).slots == exact_slots).float().mean())
    results["latency_ms_1e5"] = latency_ms
    results["latency_ms_1e5_batched100"] = batched_ms
    results["audio_to_image_at_1e5_top1"] = top1(big, k_audio, aty)
    results["codebook_usage"] = fit["usage"]
    results["tokenizer_train_s"] = fit["train_s"]

    goals = {
        "spoken digit -> image top-1 >= 90%": results["audio_to_image_top1"],
        "image -> spoken digit top-1 >= 90%": results["image_to_audio_top1"],
        "word -> image top-1 >= 99%": results["text_to_image_top1"],
    }
    thresholds = [0.90, 0.90, 0.99]
    goals_s = {g: ("met" if v >= t else f"NOT met ({100 * v:.1f}%)") for (g, v), t in zip(goals.items(), thresholds)}
    rows = [{"query": "spoken digit", "store": f"{len(xt)} images", "top1": results["audio_to_image_top1"]},
            {"query": "image", "store": f"{len(at)} spoken digits", "top1": results["image_to_audio_top1"]},
            {"query": "digit word", "store": f"{len(xt)} images", "top1": results["text_to_image_top1"]},
            {"query": "spoken digit", "store": "1e5 episodes", "top1": results["audio_to_image_at_1e5_top1"]}]
    notes = (f"tokenizer: {steps} steps of 64 images + 64 clips + 32 words, 256 shared codes, usage {fit['usage']:.2f}, "
             f"{fit['train_s']:.0f} s; latency_ms_1e5 = mean of 100 single-query exact top-1 searches over 1e5 keys (latency_ms_1e5_ivf: FAISS IVF, nprobe 8) (1 CPU thread, shared machine)")
    return BenchResult(results, rows, goals_s, notes)
