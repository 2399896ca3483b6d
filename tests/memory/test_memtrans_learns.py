"""The memtrans fixes: MANN's write-then-read order, the sequential label offset, and a tiny model that learns.

The few-shot benchmark once sat at chance (20% on 5-way): these tests pin the
pieces a model needs to learn at all: step t's write is readable at step t, row t
carries the label of step t-1 bound to the image of step t-1 (never its own), and
a small memtrans meta-trained for a few seconds answers 2-way episodes of unseen
classes well above chance.
"""

import torch
import torch.nn.functional as F

from agentlab.agent import Agent
from agentlab.context import FitContext
from agentlab.task import Task
from agentlab.memory.memory_transformer import MemoryTransformer, MemoryTransformerConfig
from agentlab.backbones.memtrans import MemTransNet, MemTransNetConfig
from agentlab.learners.memtrans import MemTransLearner, MemTransLearnerConfig, sequential_rows
from agentlab.scenarios.episodes import ClassPool, EpisodeSampler, EpisodeSet, sequential_episode


def _pool(n_classes: int, per_class: int, seed: int) -> ClassPool:
    """Synthetic characters: each class a random blob pattern, its drawings noisy, shifted copies."""
    g = torch.Generator().manual_seed(seed)
    protos = (F.avg_pool2d(torch.rand(n_classes, 1, 28, 28, generator=g), 5, 1, 2) > 0.55).float()
    x = protos.repeat_interleave(per_class, 0)
    flip = torch.rand(x.shape, generator=g) < 0.05
    x = torch.where(flip, 1 - x, x)
    shifts = torch.randint(-1, 2, (x.shape[0], 2), generator=g)
    x = torch.stack([torch.roll(im, (int(a), int(b)), (-2, -1)) for im, (a, b) in zip(x, shifts)])
    return ClassPool(x, torch.arange(n_classes).repeat_interleave(per_class))


def test_step_t_reads_what_it_wrote_mann_order():
    torch.manual_seed(0)
    m = MemoryTransformer(MemoryTransformerConfig(in_features=4, dim=8, heads=2, layers=1, slots=6, write_gate_init=-30.0))
    m(torch.randn(1, 3, 4), m.initial_state(1))
    read = m.trace["read"][0]  # (T, slots the episode can touch)
    assert torch.allclose(read[0], torch.tensor([1.0, 0, 0]))  # step 0 already sees its own write
    assert read[1, :2].sum() > 0.999 and read[1, 2:].sum() == 0  # step 1: slots 0 and 1 only


def test_sequential_rows_carry_the_previous_label_and_image():
    pool = _pool(6, 4, seed=1)
    ep = sequential_episode(pool, ways=3, per_class=4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = MemTransNet(MemTransNetConfig(ways=3, channels=8, memory=MemoryTransformerConfig(in_features=1, dim=16, heads=2, layers=1, slots=20)))
    net.eval()
    with torch.no_grad():
        rows, write = sequential_rows(net, [ep], "cpu")
    e = 8
    labels = rows[0, :, 2 * e :]
    assert torch.equal(labels[0], torch.zeros(3))  # nothing revealed before the first step
    assert torch.equal(labels[1:], F.one_hot(ep.y[:-1], 3).float())  # label of step t-1 shown at step t
    assert not any(torch.equal(labels[t], F.one_hot(ep.y[t], 3).float()) and ep.y[t] != ep.y[t - 1] for t in range(1, 12))
    assert torch.allclose(rows[0, 1:, e : 2 * e], rows[0, :-1, :e])  # bound to the image it belongs to
    assert write[0].tolist() == [False] + [True] * 11  # row 0 has no binding to write
    # labels are shuffled per episode: the same classes get other labels in another episode
    perms = {tuple(sequential_episode(pool, 3, 4, torch.Generator().manual_seed(s)).classes.tolist()) for s in range(8)}
    assert len(perms) > 1


def test_tiny_memtrans_learns_2way_episodes_of_unseen_classes():
    train, test = _pool(40, 6, seed=0), _pool(20, 6, seed=1)
    torch.manual_seed(0)
    net = MemTransNet(MemTransNetConfig(ways=2, channels=8, memory=MemoryTransformerConfig(in_features=1, dim=32, heads=2, layers=1, slots=16)))
    learner = MemTransLearner(MemTransLearnerConfig(episodes=8 * 40, batch=8, protocol="standard", shots=[1], queries=3, lr=3e-3))
    agent = Agent(net, learner=learner)
    episodes = EpisodeSet(test, 40, seed=5, ways=2, shots=1, queries=3)
    before = learner.evaluate_set(agent, episodes).mean
    ctx = FitContext(generator=torch.Generator().manual_seed(0), task_index=0, n_tasks=1)
    learner.fit(agent, Task(id=0, name="toy", kind="episode", train=EpisodeSampler(train, 2, 1, 3), eval=None), ctx)
    after = learner.evaluate_set(agent, episodes).mean
    print(f"2-way 1-shot on unseen classes: {before:.3f} before, {after:.3f} after {learner.episodes_done} episodes")
    assert after >= 0.85 and after > before + 0.1


def test_active_slots_shortcut_is_exact():
    """Running over only the slots an episode can touch gives the same outputs and state as all 40 slots."""
    torch.manual_seed(0)
    big = MemoryTransformer(MemoryTransformerConfig(in_features=4, dim=8, heads=2, layers=1, slots=40))
    small = MemoryTransformer(MemoryTransformerConfig(in_features=4, dim=8, heads=2, layers=1, slots=12))
    small.load_state_dict(big.state_dict())  # no parameter depends on the slot count
    x = torch.randn(2, 12, 4)
    mask = torch.rand(2, 12) > 0.3
    y_big, st_big = big(x, big.initial_state(2), write_mask=mask)
    y_small, st_small = small(x, small.initial_state(2), write_mask=mask)
    assert torch.allclose(y_big, y_small, atol=1e-6)
    assert st_big.keys.shape == (2, 40, 8) and torch.allclose(st_big.keys[:, :12], st_small.keys, atol=1e-6)
    assert st_big.usage[:, 12:].abs().sum() == 0
    # a second episode carried on the same memory continues after the touched slots
    y2, st2 = big(x, st_big)
    assert st2.written.sum(1).tolist() == [int(n) + 12 for n in st_big.written.sum(1)]
