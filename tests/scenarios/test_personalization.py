"""The personalization stream, its evaluator and learner, the recipe and the benchmark's keys."""

from __future__ import annotations

import dataclasses
import json

import torch

from agentlab.agent import Agent
from agentlab.backbones.trace_encoder import TraceEncoder
from agentlab.context import FitContext
from agentlab.evaluate import evaluate
from agentlab.learners.personalize import Personalize, PersonalizeConfig
from agentlab.plasticity.lora import LoRA, LoRAConfig
from agentlab.scenarios.personalization import PersonalizationConfig, personalization_stream
from agentlab.scenarios.traces.format import write_jsonl
from agentlab.scenarios.traces.simulator import draw_traits, simulate_person

TINY = dict(n_population=6, population_traces=4, n_people=3, train_traces=4, eval_traces=3)


def test_stream_has_a_population_task_then_people_and_is_deterministic() -> None:
    s = personalization_stream(PersonalizationConfig(**TINY))
    assert len(s) == 4 and s.scenario == "personalization"
    assert s[0].meta["population"] and len(s[0].train) == 6 * 2 and len(s[0].eval) == 6 * 2
    t = s[2]
    assert t.kind == "personalization" and len(t.train) == 4 and len(t.eval) == 3
    assert t.meta["traits"] == draw_traits(0, 1, "n")
    assert torch.equal(t.train.x, personalization_stream(PersonalizationConfig(**TINY))[2].train.x)


def test_a_trace_file_goes_through_the_same_path(tmp_path) -> None:
    cfg = PersonalizationConfig(**{**TINY, "n_population": 0})
    sim = personalization_stream(cfg)
    traces = [tr for j in range(3) for tr in simulate_person(draw_traits(0, j, "n"), 7, 0)]
    path = tmp_path / "people.jsonl"
    write_jsonl(path, traces)
    real = personalization_stream(dataclasses.replace(cfg, trace_file=str(path)))
    assert len(real) == len(sim) == 3
    for i in range(3):
        assert real[i].meta["person"] == sim[i].meta["person"]
        assert torch.equal(real[i].train.x, sim[i].train.x) and torch.equal(real[i].eval.y, sim[i].eval.y)


def _tiny_agent() -> Agent:
    torch.manual_seed(0)
    return Agent(TraceEncoder(d_model=16, n_heads=2), plasticity=[LoRA(LoRAConfig(rank=2))],
                 learner=Personalize(PersonalizeConfig(population_epochs=1, steps=5, population_batch_size=8)))


def test_learner_pretrains_then_personalizes_and_evaluator_reports_three_heads() -> None:
    s = personalization_stream(PersonalizationConfig(**TINY))
    agent = _tiny_agent()
    ctx = FitContext(generator=torch.Generator().manual_seed(0), task_index=0, n_tasks=len(s))
    before = {k: v.clone() for k, v in agent.backbone.state_dict().items()}
    agent.start_task(s[0])
    agent.learner.fit(agent, s[0], ctx)
    agent.end_task(s[0])
    assert any(not torch.equal(v, before[k]) for k, v in agent.backbone.state_dict().items())
    pretrained = {k: v.clone() for k, v in agent.backbone.state_dict().items()}
    steps = ctx.global_step
    agent.start_task(s[1])
    agent.learner.fit(agent, s[1], ctx)
    agent.end_task(s[1])
    assert ctx.global_step == steps + 5
    assert all(torch.equal(v, pretrained[k]) for k, v in agent.backbone.state_dict().items())
    res = evaluate(agent, s[1])
    assert 0 <= res.acc <= 1 and res.n > 0
    assert res.extra["time_mae_s"] > 0 and "error_auc" in res.extra
    hidden = dataclasses.replace(s[1], task_label_at_test=False)
    res2 = evaluate(agent, hidden)
    assert res2.extra["task_inference_acc"] == 1.0  # only one person known: every trace is theirs


def test_recipe_runs_through_the_cli(tmp_path) -> None:
    from agentlab.cli import main

    sets = ["stream.n_population=6", "stream.population_traces=4", "stream.n_people=2", "stream.train_traces=3",
            "stream.eval_traces=2", "learner.population_epochs=1", "learner.steps=2", "backbone.d_model=16",
            "backbone.n_heads=2"]
    argv = ["run", "personalize-lora", "--out", str(tmp_path), "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    agent = summary["agents"]["personalize-lora"]
    assert agent["status"] == "completed"
    assert len(agent["accuracy_matrix"]) == 3
    assert agent["metrics"]["forgetting"] == 0.0


def test_bench_keys(monkeypatch) -> None:
    import agentlab.bench.personalize as B
    from agentlab.bench import BenchArgs
    from agentlab.registry import BuildEnv

    monkeypatch.setattr(B, "_sizes", lambda quick: {"n_population": 6, "n_people": 3, "epochs": 1, "steps": 2})
    res = B.bench_personalize(BenchArgs(quick=True), BuildEnv())
    assert list(res.metrics) == ["population_acc", "lora_acc", "lora_gain_points", "compact_gain_ratio",
                                 "compact_bytes_per_person", "lora_bytes_per_person", "fingerprint_top1",
                                 "fingerprint_oracle_top1", "personalize_s", "time_mae_s", "error_auc"]
    assert {r["model"] for r in res.rows} == {"population", "lora", "nola", "pranc", "mcnc", "time profile alone",
                                                "oracle (true traits)"}
    lora = next(r for r in res.rows if r["model"] == "lora")
    assert 0 <= lora["fingerprint_top1"] <= 1 and 0 <= lora["fingerprint_top1_adapter"] <= 1
    assert 0 < res.metrics["fingerprint_oracle_top1"] <= 1 and all(set(r) == set(res.rows[0]) for r in res.rows)
    assert res.metrics["compact_bytes_per_person"] <= 1024
