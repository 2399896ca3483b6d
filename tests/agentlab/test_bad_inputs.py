"""A table of named bad inputs to `agentlab run`: command-line flags, --set values, recipe files and damaged run
directories. Every one exits with code 2 (1 for a run that starts and fails) and a message naming the key or the
path; none ends in a traceback. The commands run in this process (`agentlab.cli.main`), so a case that raised
would fail here with its exception."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from tests_helpers import QUICK, cli

NO_GPU_DEVICE = "cuda" if not torch.cuda.is_available() else "cuda:99"


@dataclass
class Case:
    id: str
    args: list[str]
    expect: list[str]
    rc: int = 2
    files: dict[str, str | bytes] = field(default_factory=dict)  # name -> content ("DIR" makes a folder)
    damage: Callable[[Path], None] | None = None  # applied to a copy of an interrupted run at {run}


def run_args(*extra: str, agent: str = "finetune") -> list[str]:
    quick = [agent if a == "finetune" else a for a in QUICK]
    return ["run", "--out", "{tmp}/runs", *quick, *extra]


def set_case(value: str, *expect: str, id: str | None = None, extra: tuple[str, ...] = (), agent: str = "finetune") -> Case:
    return Case(id or f"--set {value}", run_args("--set", value, *extra, agent=agent), list(expect) or [value.split("=")[0]])


PLASTIC = """[stream]
name = "digits-split"
[backbone]
name = "mlp"
hidden = [8]
bias = false
[learner]
name = "finetune"
max_steps = 1
[[plasticity]]
name = "supsup"
"""


def plastic_case(value: str, *expect: str) -> Case:
    """--set on a one-agent recipe with a plasticity module (its table is `plasticity`, a list)."""
    return Case(f"--set {value} (a recipe with a plasticity module)",
                ["run", "{tmp}/p.toml", "--out", "{tmp}/runs", "--no-progress", "--set", value], list(expect),
                files={"p.toml": PLASTIC})


def recipe_case(id: str, text: str | bytes, *expect: str, name: str = "r.toml") -> Case:
    return Case(id, ["run", "{tmp}/" + name, "--out", "{tmp}/runs", "--no-progress"], list(expect), files={name: text})


def resume_case(id: str, damage: Callable[[Path], None] | None, *expect: str, extra: tuple[str, ...] = (), rc: int = 2) -> Case:
    return Case(id, ["run", "--resume", "{run}", "--no-progress", *extra], list(expect), rc=rc, damage=damage)


AGENT = 'backbone = { name = "mlp", hidden = [8] }\nlearner = { name = "finetune", epochs = 1, max_steps = 1 }\n'
STREAM = '[stream]\nname = "digits-split"\n'


def labelled(label: str) -> str:
    return f"{STREAM}[agents.{label}]\n{AGENT}"


def edit_config(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        record = json.loads((run / "config.json").read_text())
        out = change(record)
        (run / "config.json").write_text(json.dumps(record if out is None else out))
    return damage


def corrupt_all_checkpoints(run: Path) -> None:
    for ckpt in (run / "finetune" / "checkpoints").iterdir():
        (ckpt / "tensors.safetensors").write_bytes(b"\x00" * 8)


def link_agent_outside(run: Path) -> None:
    outside = run.parent / "outside"
    (run / "finetune").rename(outside)
    (run / "finetune").symlink_to(outside)


def summary_is_a_folder(run: Path) -> None:
    (run / "finetune" / "summary.json").unlink()
    (run / "finetune" / "summary.json").mkdir()


CASES = [
    # ---- command-line flags
    Case("--seed abc", run_args("--seed", "abc"), ["--seed"]),
    Case("--seed 1.5", run_args("--seed", "1.5"), ["--seed"]),
    Case("--seed 2**70", run_args("--seed", str(2**70)), ["seed=1180591620717411303424"]),
    Case("--seed -1", run_args("--seed", "-1"), ["seed=-1"]),
    Case("--threads 0", run_args("--threads", "0"), ["--threads"]),
    Case("--threads -3", run_args("--threads", "-3"), ["--threads"]),
    Case("--threads many", run_args("--threads", "many"), ["--threads"]),
    Case("unknown flag", run_args("--bogus"), ["--bogus"]),
    Case("--set without a value", run_args("--set"), ["--set"]),
    Case("--agent without a value", run_args("--agent"), ["--agent"]),
    Case("--out without a value", ["run", "--out"], ["--out"]),
    Case("--resume without a value", ["run", "--resume"], ["--resume"]),
    Case("--agent nosuch", run_args("--agent", "nosuch"), ["'nosuch'"]),
    Case("--agent empty", run_args("--agent", ""), ["--agent ''"]),
    Case("--device banana", run_args("--device", "banana"), ["'banana'"]),
    Case("--device cuda (none there)", run_args("--device", NO_GPU_DEVICE), [f"'{NO_GPU_DEVICE}'"]),
    Case("--device empty", run_args("--device", ""), ["loop.device=''"]),
    Case("--device meta", run_args("--device", "meta"), ["'meta'"]),
    Case("--device cpu:x", run_args("--device", "cpu:x"), ["'cpu:x'"]),
    Case("--restart without --resume", run_args("--restart"), ["--restart"]),
    Case("--resume a missing folder", ["run", "--resume", "{tmp}/nope"], ["nope"]),
    Case("--resume a file", ["run", "--resume", "{tmp}/afile"], ["afile"], files={"afile": "x"}),
    Case("--resume a folder without config.json", ["run", "--resume", "{tmp}/adir"], ["config.json"], files={"adir": "DIR"}),
    resume_case("--resume with a recipe", None, "--resume", extra=("digits-split",)),
    resume_case("--resume with --seed", None, "--seed", extra=("--seed", "3")),
    resume_case("--resume with --deterministic", None, "--deterministic", extra=("--deterministic",)),
    Case("--out naming a file", ["run", "--out", "{tmp}/afile", *QUICK], ["afile", "is a file"], files={"afile": "x"}),
    Case("--out under a file", ["run", "--out", "{tmp}/afile/runs", *QUICK], ["afile", "is a file"], files={"afile": "x"}),
    Case("recipe: unknown name", ["run", "nosuch-recipe", "--out", "{tmp}/runs"], ["'nosuch-recipe'"]),
    Case("recipe: close name", ["run", "digits-splt", "--out", "{tmp}/runs"], ["'digits-splt'", "did you mean"]),
    Case("recipe: missing file", ["run", "{tmp}/missing.toml", "--out", "{tmp}/runs"], ["missing.toml"]),
    Case("recipe: a folder", ["run", "{tmp}/adir.toml", "--out", "{tmp}/runs"], ["adir.toml"], files={"adir.toml": "DIR"}),
    # ---- --set keys and values
    set_case("noequals", "'noequals'", id="--set without ="),
    set_case("=5", "unknown key ''", id="--set with an empty key"),
    set_case("bogus=1", "'bogus'"),
    set_case("lerner.lr=1", "'lerner'", "did you mean"),
    set_case("stream=5", "stream=5"),
    set_case("stream.name=5", "stream.name=5"),
    set_case('stream.name="nosuch"', "'nosuch'"),
    set_case('stream.scenario="bogus"', "stream.scenario"),
    set_case("stream.bogus=1", "'bogus'"),
    set_case("stream.classes_per_task=0", "classes_per_task"),
    set_case("loop=5", "loop=5"),
    set_case('loop.device="banana"', "loop.device='banana'"),
    set_case(f'loop.device="{NO_GPU_DEVICE}"', f"loop.device='{NO_GPU_DEVICE}'", id="--set loop.device=cuda (none there)"),
    set_case("loop.device=5", "loop.device"),
    set_case("loop.eval_batch_size=0", "eval_batch_size"),
    set_case("loop.log_every=-1", "log_every"),
    set_case("loop.keep_checkpoints=-1", "keep_checkpoints"),
    set_case('loop.eval_seen="x"', "loop.eval_seen"),
    set_case("loop.bogus=1", "'bogus'"),
    set_case("loop.stop_after_tasks=-1", "stop_after_tasks"),
    set_case('loop.checkpoint="yes"', "loop.checkpoint"),
    set_case('seed="x"', "seed='x'"),
    set_case("seed=-1", "seed=-1"),
    set_case("seed=1.5", "seed=1.5"),
    set_case("seed=true", "seed=True"),
    set_case("deterministic=5", "deterministic=5"),
    set_case("description=5", "description=5"),
    set_case("agents=5", "agents"),
    set_case("agents.finetune=5", "agents.finetune"),
    set_case("agents.finetune.backbone=5", "agents.finetune.backbone"),
    set_case("agents.finetune.backbone.name=5", "agents.finetune.backbone.name"),
    set_case("agents.finetune.bogus=1", "'bogus'"),
    set_case("agents.nosuch.learner.lr=1", "agents.nosuch"),
    set_case('backbone.name="nosuch"', "'nosuch'"),
    set_case("backbone.hidden=[1e9]", "hidden"),
    set_case("backbone.hidden=[1000000000]", "agents.finetune.backbone", "hidden=[1000000000]"),
    set_case('backbone.hidden="wide"', "hidden"),
    set_case("backbone.hidden=[0]", "hidden"),
    set_case("backbone.hidden=[-5]", "hidden"),
    set_case("backbone.bogus=1", "'bogus'"),
    set_case("learner=5", "learner"),
    set_case('learner.name="nosuch"', "'nosuch'"),
    set_case("learner.lr=0", "lr"),
    set_case("learner.lr=-1", "lr"),
    set_case("learner.lr=nan", "lr"),
    set_case("learner.lr=inf", "lr", "finite"),
    set_case("learner.lr=1e400", "lr", "finite"),
    set_case('learner.lr="fast"', "lr"),
    set_case("learner.epochs=0", "epochs"),
    set_case("learner.epochs=1e20", "epochs"),
    set_case("learner.epochs=1000000000000000000", "epochs", "max_steps", extra=("--set", "learner.max_steps=0"),
             id="--set learner.epochs=10**18 with no step cap"),
    set_case("learner.batch_size=0", "batch_size"),
    set_case('learner.optimizer="x"', "optimizer"),
    set_case("learner.momentum=1", "momentum"),
    set_case("learner.max_steps=-1", "max_steps"),
    set_case("learner.weight_decay=-1", "weight_decay"),
    set_case("learner.grad_clip=-1", "grad_clip"),
    set_case('learner.lr_schedule="warm"', "lr_schedule"),
    set_case('learner.keep_optimizer="yes"', "keep_optimizer"),
    set_case("agents.replay.learner.buffer_size=1e12", "buffer_size", agent="replay"),
    set_case("agents.replay.learner.buffer_size=1000000000000", "agents.replay.learner", "buffer_size=1000000000000",
             agent="replay"),
    set_case("agents.replay.learner.buffer_size=0", "buffer_size", agent="replay"),
    set_case('agents.replay.learner.policy="x"', "policy", agent="replay"),
    set_case("plasticity=5", "plasticity"),
    set_case("plasticity=[5]", "plasticity.0"),
    plastic_case('plasticity.0.name="nosuch"', "'nosuch'"),
    plastic_case("plasticity.5.x=1", "plasticity.5"),
    plastic_case("plasticity.0.bogus=1", "'bogus'"),
    plastic_case("plasticity.0.density=2", "density"),
    set_case("memory=5", "memory"),
    set_case('memory=[{name="nosuch"}]', "'nosuch'"),
    set_case('memory=[{name="mini_rag", capacity=0}]', "capacity"),
    set_case("learner..lr=1", "agents.finetune.learner", id="--set with an empty key part"),
    set_case("seed.x=1", "seed"),
    set_case("learner.lr=" + "[" * 40 + "]" * 40, "--set learner.lr", "deep", id="--set with a value nested 40 deep"),
    # ---- recipe files
    recipe_case("recipe: not UTF-8", b'description = "\xff\xfe"\n' + STREAM.encode(), "r.toml", "UTF-8"),
    recipe_case("recipe: not TOML", "this is = = not toml", "r.toml", "TOML"),
    recipe_case("recipe: UTF-8 byte-order mark", "\ufeff" + STREAM, "r.toml"),
    recipe_case("recipe: empty", "", "stream"),
    recipe_case("recipe: no stream", f"[agents.a]\n{AGENT}", "stream"),
    recipe_case("recipe: stream not a table", f"stream = 5\n[agents.a]\n{AGENT}", "stream=5"),
    recipe_case("recipe: stream without a name", f"[stream]\nscenario = 'class'\n[agents.a]\n{AGENT}", "stream"),
    recipe_case("recipe: stream name not a string", f"[stream]\nname = 5\n[agents.a]\n{AGENT}", "stream.name=5"),
    recipe_case("recipe: empty label", labelled('""'), "agent label ''"),
    recipe_case("recipe: label ../x", labelled('"../x"'), "agent label '../x'"),
    recipe_case("recipe: absolute label", labelled('"/tmp/agentlab-x"'), "agent label '/tmp/agentlab-x'"),
    recipe_case("recipe: label .", labelled('"."'), "agent label '.'"),
    recipe_case("recipe: label ..", labelled('".."'), "agent label '..'"),
    recipe_case("recipe: label with a space", labelled('"a b"'), "agent label 'a b'"),
    recipe_case("recipe: label config.json", labelled('"config.json"'), "agent label 'config.json'"),
    recipe_case("recipe: label .lock", labelled('".lock"'), "agent label '.lock'"),
    recipe_case("recipe: label 150 long", labelled("x" * 150), "agent label 'xxxx"),
    recipe_case("recipe: label not ASCII", labelled('"café"'), "agent label 'café'"),
    recipe_case("recipe: both agent forms", f"{STREAM}[backbone]\nname='mlp'\n[agents.a]\n{AGENT}", "both"),
    recipe_case("recipe: no agent", f"{STREAM}[agents]\n", "no agent"),
    recipe_case("recipe: agent not a table", f"{STREAM}[agents]\na = 5\n", "agents.a"),
    recipe_case("recipe: agent without learner", f"{STREAM}[agents.a]\nbackbone = {{ name = 'mlp' }}\n",
                "agents.a needs a learner"),
    recipe_case("recipe: agent without backbone", f"{STREAM}[agents.a]\nlearner = {{ name = 'finetune' }}\n",
                "agents.a needs a backbone"),
    recipe_case("recipe: unknown agent key", f"{STREAM}[agents.a]\n{AGENT}bogus = 1\n", "agents.a.'bogus'"),
    recipe_case("recipe: unknown top key", f"bogus = 1\n{STREAM}[agents.a]\n{AGENT}", "'bogus'"),
    recipe_case("recipe: negative seed", f"seed = -5\n{STREAM}[agents.a]\n{AGENT}", "seed=-5"),
    recipe_case("recipe: description not text", f"description = 5\n{STREAM}[agents.a]\n{AGENT}", "description=5"),
    recipe_case("recipe: backbone a string", f"{STREAM}[agents.a]\nbackbone = 'mlp'\nlearner = {{ name = 'finetune' }}\n",
                "agents.a.backbone='mlp'"),
    recipe_case("recipe: learner name a number", f"{STREAM}[agents.a]\nbackbone = {{ name = 'mlp' }}\nlearner = {{ name = 5 }}\n",
                "agents.a.learner.name=5"),
    recipe_case("recipe: plasticity not a list", f"{STREAM}[agents.a]\n{AGENT}plasticity = 5\n", "agents.a.plasticity=5"),
    recipe_case("recipe: memory a list of numbers", f"{STREAM}[agents.a]\n{AGENT}memory = [1, 2]\n", "agents.a.memory.0=1"),
    recipe_case("recipe: missing ticket file",
                f"{STREAM}[agents.a]\n{AGENT}plasticity = [ {{ name = 'lottery', ticket = '/nonexistent/t.pt' }} ]\n",
                "ticket='/nonexistent/t.pt'"),
    Case("recipe: a ticket file that is not one", ["run", "{tmp}/r.toml", "--out", "{tmp}/runs", "--no-progress"],
         ["garbage.pt"], files={"garbage.pt": b"\x80\x04not a pickle at all",
                                "r.toml": f"{STREAM}[agents.a]\n{AGENT}"
                                          "plasticity = [ { name = 'lottery', ticket = '{tmp}/garbage.pt' } ]\n"}),
    recipe_case("recipe: file name with a space (its agent's label)",
                f"{STREAM}[backbone]\nname = 'mlp'\n[learner]\nname = 'finetune'\n",
                "recipe name 'my recipe'", name="my recipe.toml"),
    recipe_case("recipe: nested 40 deep", f"{STREAM}[agents.a]\n{AGENT}" + "x = " + "[" * 40 + "]" * 40 + "\n", "r.toml", "deep"),
    recipe_case("recipe: nested 100000 deep", "x = " + "[" * 100000, "r.toml"),
    # ---- damaged run directories (--resume)
    resume_case("config.json truncated", lambda r: (r / "config.json").write_text('{"recipe": "digits-sp'), "config.json"),
    resume_case("config.json a list", lambda r: (r / "config.json").write_text("[1, 2]"), "config.json"),
    resume_case("config.json not UTF-8", lambda r: (r / "config.json").write_bytes(b"\xff\xfe\x00"), "config.json"),
    resume_case("config.json empty", lambda r: (r / "config.json").write_text(""), "config.json"),
    resume_case("config.json recipe not a name", edit_config(lambda c: c.update(recipe=5)), "config.json"),
    resume_case("config.json data_root a number", edit_config(lambda c: c.update(data_root=5)), "data_root=5"),
    resume_case("config.json agents not labels", edit_config(lambda c: c.update(agents=5)), "agents=5"),
    resume_case("config.json label ../x", edit_config(lambda c: c["table"]["agents"].update({"../x": {}})), "agent label '../x'"),
    resume_case("config.json stream a number", edit_config(lambda c: c["table"].update(stream=5)), "stream=5"),
    resume_case("config.json nested 100000 deep", lambda r: (r / "config.json").write_text("[" * 100000), "config.json"),
    resume_case("every checkpoint corrupt", corrupt_all_checkpoints, "no usable checkpoint", "ckpt_0000", "--restart"),
    resume_case("checkpoints deleted", lambda r: shutil.rmtree(r / "finetune" / "checkpoints"), "last_checkpoint.json"),
    resume_case("--resume --set backbone.hidden", None, "backbone.hidden", "allowed on resume",
                extra=("--set", "backbone.hidden=[4]")),
    resume_case("--resume --set stream.scenario", None, "stream.scenario", extra=("--set", 'stream.scenario="task"')),
    resume_case("--resume --set seed", None, "seed", extra=("--set", "seed=4")),
    resume_case("--resume --set a bad learning rate", None, "lr", extra=("--set", "learner.lr=-1")),
    resume_case("--resume --agent nosuch", None, "'nosuch'", extra=("--agent", "nosuch")),
    resume_case("agent folder linked outside", link_agent_outside, "agents.finetune", "outside the run directory"),
    # ---- runs that start and fail (exit code 1)
    Case("learning rate 1e30 (non-finite loss)", run_args("--set", "learner.lr=1e30"), ["agent finetune: failed", "non-finite"],
         rc=1),
    resume_case("agent summary.json a folder", summary_is_a_folder, "agent finetune: failed", "summary.json", rc=1,
                extra=("--set", "loop.stop_after_tasks=0")),
]


def test_the_table_is_big_and_named_uniquely():
    ids = [c.id for c in CASES]
    assert len(ids) >= 100 and len(set(ids)) == len(ids), [i for i in ids if ids.count(i) > 1]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupted")
    rc, _, err = cli("run", "--out", root, *QUICK, "--set", "loop.stop_after_tasks=1")
    assert rc == 1, err
    (run_dir,) = list(root.iterdir())
    return run_dir


def _fill(text: str, tmp: Path, run: Path | None) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{run}", str(run))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_with_a_message_and_no_traceback(case, tmp_path, interrupted):
    run = None
    if case.damage is not None or any("{run}" in a for a in case.args):
        run = tmp_path / "work" / interrupted.name
        shutil.copytree(interrupted, run)
        if case.damage is not None:
            case.damage(run)
    for name, content in case.files.items():
        path = tmp_path / name
        if content == "DIR":
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(_fill(content, tmp_path, run), encoding="utf-8")
    rc, out, err = cli(*[_fill(a, tmp_path, run) for a in case.args])
    assert "Traceback" not in out + err
    assert rc == case.rc, err
    for word in case.expect:
        assert word in err, (word, err)
    if case.rc == 2 and case.damage is None and run is None:
        runs = tmp_path / "runs"
        assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())  # nothing left behind
