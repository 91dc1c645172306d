"""Seconds per PPO update and peak memory: SpanPPOTrainer (span and scalar mode) vs TRL 1.12's PPOTrainer.

Every configuration runs in a fresh subprocess (so peak RSS is per run), one after the other, on the same machine
with the same thread count: TRL 1.12 in its own venv (``scripts/make_trl112_venv.sh``) through
``bench/trl112/run_trl112_ppo.py``, ours through ``python bench/ppo_step.py --worker``. Default workload: SmolLM2-135M
policy (+ frozen reference copy), a SmolLM2-135M sequence-classification value model and reward model (score heads
seeded and saved once so both sides load the same weights), batch 8, 48 new tokens (no stop token, so every
response has the same length on both sides), 4 PPO epochs of 1 mini-batch, fp32 on CPU, real sampling.

Rows:
  trl112            trl 1.12 PPOTrainer (reward: sequence classifier, separate value model)
  ours-scalar       SpanPPOTrainer(reward_mode="scalar"), same reward and value models as trl 1.12
  ours-span         SpanPPOTrainer(reward_mode="span"), a span reward function (no reward-model forward), separate
                    value model and reference copy: full fine-tuning like trl 1.12, less the reward-model forward
  ours-span-vhead   same as ours-span with value_model=None (value head on the policy: one model less)
  ours-span-lora    the recommended configuration: LoRA r=16 on every linear layer, reference = adapters disabled,
                    value head on the policy
  ours-span-lora-merged  ours-span-lora with merge_adapters_for_generation=True (adapters folded into the weights
                    while sampling, base restored bit for bit)
  ours-span-qlora   ours-span-lora on a 4-bit nf4 base (bitsandbytes; skipped with the reason where it has no backend)
  ours-span-lora-bf16  ours-span-lora on a bfloat16 base (the recipes' ``dtype: bfloat16``): the frozen base weights
                    in bf16, the LoRA adapters, value head and optimizer state in fp32
  trl112-bf16       trl112 with its four models loaded in bfloat16 (full fine-tuning of bf16 weights): the
                    like-for-like reference for ours-span-lora-bf16
  ours-span-compiled, ours-span-lora-compiled, ours-span-lora-merged-compiled, ours-span-lora-bf16-compiled
                    those rows with compile_generation=True (static KV cache, torch.compile'd decoding step); the
                    compilation falls in the first update, which the s/update column leaves out (see "1st update")
  ours-span-unpacked, ours-span-lora-unpacked, ours-span-lora-merged-unpacked, ours-span-lora-bf16-unpacked
                    those rows with pack_weights_for_generation=False: sampling through PyTorch's default float32
                    linear path instead of oneDNN pre-packed weights (the rows without the suffix pack, the default;
                    ours-span-lora-merged-unpacked is the merge that packing replaces)

``--profile`` also prints, for our rows, the seconds per update spent in each phase (generation, rollout forwards,
reward, advantages, loss forwards, backward, optimizer step).

Usage::

    .venv/bin/python bench/ppo_step.py                       # the table (several minutes on 2 CPU cores)
    .venv/bin/python bench/ppo_step.py --num-updates 3 --response-length 32 --rows trl112,ours-scalar

``tests/trl112_support.py`` has its own copy of ``run_span_ppo()`` (without timings) for the parity test: tests never
import ``bench/``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "trl112"))
import tiny_setup  # noqa: E402

TRL112_VENV = Path(os.environ.get("TRL112_VENV", Path.home() / ".cache" / "trl_text2grad" / "trl112-venv"))
ROWS = (
    "trl112",
    "ours-scalar",
    "ours-span",
    "ours-span-vhead",
    "ours-span-lora",
    "ours-span-lora-merged",
    "ours-span-qlora",
    "ours-span-lora-bf16",
    "trl112-bf16",
    "ours-span-compiled",
    "ours-span-lora-compiled",
    "ours-span-lora-merged-compiled",
    "ours-span-lora-bf16-compiled",
    "ours-span-unpacked",
    "ours-span-lora-unpacked",
    "ours-span-lora-merged-unpacked",
    "ours-span-lora-bf16-unpacked",
)
PHASES = ("generation", "rollout_forwards", "reward", "advantages", "loss_forward", "backward", "optimizer")


def bitsandbytes_problem() -> str | None:
    """Why the QLoRA row cannot run here (``None`` when bitsandbytes quantizes and dequantizes nf4 on the CPU)."""
    try:
        import bitsandbytes.functional as bnbf
    except Exception as error:  # ImportError, or a broken install raising at import
        return f"bitsandbytes is not importable ({type(error).__name__}: {error})"
    try:
        weight = torch.randn(64, 64)
        packed, state = bnbf.quantize_4bit(weight, quant_type="nf4")
        restored = bnbf.dequantize_4bit(packed, state)
    except Exception as error:  # no CPU backend in this build
        return f"bitsandbytes has no nf4 backend on this machine ({type(error).__name__}: {error})"
    if not torch.isfinite(restored).all():
        return "bitsandbytes' nf4 round trip gave non-finite values"
    return None


def bench_span_reward(prompts, responses, **context):
    """A cheap deterministic span critic: first third of each response good, last third poor."""
    out = []
    for text in responses:
        n = len(text)
        spans = []
        if n >= 3:
            spans = [(0, n // 3, 1.0), (2 * n // 3, n, -1.0)]
        out.append(spans)
    return out


class _PhaseTimer:
    """Seconds per phase of a PPO update, by wrapping the trainer's stage methods (``--profile``).

    Phases: ``generation`` (:meth:`generate`), ``rollout_forwards`` (the rest of :meth:`rollout`: old log-probs,
    values and reference log-probs; when the rollout is one micro-batch this includes the first PPO epoch's loss
    forward, which the rollout shares), ``reward`` (:meth:`score`), ``advantages`` (:meth:`compute_advantages`),
    ``loss_forward`` (the rest of :meth:`compute_loss`), ``backward`` (``accelerator.backward``) and ``optimizer``
    (from the ``Trainer``'s pre-optimizer-step callback to its optimizer-step callback). Each phase is timed in
    wall-clock seconds and in CPU seconds of the process (``time.process_time``: with one torch thread, robust to
    other jobs sharing the machine); nested phases are subtracted from the enclosing one. ``peak_rss_phase`` is the
    phase at whose end the process's peak RSS was last seen to grow (the phase that set the peak).
    """

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.snapshots: list[dict[str, float]] = []  # totals at the start of training and after every update
        self._optimizer_start: tuple[float, float] | None = None
        self.peak_rss_mb = 0.0
        self.peak_rss_phase = ""

    def per_update(self) -> list[dict[str, float]]:
        """Seconds per phase of each update (differences of consecutive snapshots)."""
        out = []
        for before, after in zip(self.snapshots, self.snapshots[1:]):
            out.append({k: after.get(k, 0.0) - before.get(k, 0.0) for k in after})
        return out

    def add(self, phase: str, wall: float, cpu: float) -> None:
        self.totals[phase] = self.totals.get(phase, 0.0) + wall
        self.totals[phase + "_cpu"] = self.totals.get(phase + "_cpu", 0.0) + cpu

    def wrap(self, obj, name: str, phase: str, exclude: tuple[str, ...] = ()) -> None:
        original = getattr(obj, name)
        timer = self

        def timed(*args, **kwargs):
            keys = [p for p in exclude] + [p + "_cpu" for p in exclude]
            before = {k: timer.totals.get(k, 0.0) for k in keys}
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                nested_wall = sum(timer.totals.get(p, 0.0) - before[p] for p in exclude)
                nested_cpu = sum(timer.totals.get(p + "_cpu", 0.0) - before[p + "_cpu"] for p in exclude)
                timer.add(phase, time.perf_counter() - wall - nested_wall, time.process_time() - cpu - nested_cpu)
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                if rss > timer.peak_rss_mb:  # the phase during which the process's peak memory grew last
                    timer.peak_rss_mb, timer.peak_rss_phase = rss, phase

        setattr(obj, name, timed)

    def install(self, trainer) -> None:
        from transformers import TrainerCallback

        timer = self
        self.wrap(trainer, "generate", "generation")
        self.wrap(trainer, "rollout", "rollout_forwards", exclude=("generation",))
        self.wrap(trainer, "score", "reward")
        self.wrap(trainer, "compute_advantages", "advantages")
        rollout_phases = ("generation", "rollout_forwards", "reward", "advantages")
        self.wrap(trainer, "compute_loss", "loss_forward", exclude=rollout_phases)
        self.wrap(trainer.accelerator, "backward", "backward")

        class _OptimizerCB(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                timer._optimizer_start = (time.perf_counter(), time.process_time())

            def on_optimizer_step(self, args, state, control, **kwargs):
                if timer._optimizer_start is not None:
                    wall, cpu = timer._optimizer_start
                    timer.add("optimizer", time.perf_counter() - wall, time.process_time() - cpu)
                    timer._optimizer_start = None

        trainer.add_callback(_OptimizerCB())


class _Recorder:
    def __init__(self, steps_per_update: int, phases: _PhaseTimer | None = None):
        from transformers import TrainerCallback

        recorder = self
        self.phases = phases
        self.marks: list[float] = []
        self.cpu_marks: list[float] = []  # CPU time of all threads: robust to other jobs on a shared machine

        class _CB(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                recorder.marks.append(time.perf_counter())
                recorder.cpu_marks.append(time.process_time())
                if recorder.phases is not None:
                    recorder.phases.snapshots.append(dict(recorder.phases.totals))

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step % steps_per_update == 0:
                    recorder.marks.append(time.perf_counter())
                    recorder.cpu_marks.append(time.process_time())
                    if recorder.phases is not None:
                        recorder.phases.snapshots.append(dict(recorder.phases.totals))

        self.callback = _CB()


def run_span_ppo(
    policy,
    value,
    reward,
    tokenizer,
    output_dir,
    reward_mode: str = "scalar",
    value_head: bool = False,
    lora: bool = False,
    argmax_sampling: bool = False,
    dump_tokens: bool = False,
    num_prompts: int = 8,
    num_updates: int = 3,
    batch_size: int = 8,
    gradient_accumulation_steps: int = 1,
    num_mini_batches: int = 1,
    num_ppo_epochs: int = 2,
    response_length: int = 12,
    temperature: float = 0.7,
    learning_rate: float = 3e-4,
    kl_coef: float = 0.05,
    seed: int = 42,
    threads: int = 0,
    profile: bool = False,
    qlora: bool = False,
    merge_generation: bool = False,
    bf16_base: bool = False,
    compile_generation: bool = False,
    pack_generation: bool = True,
    **extra_config,
) -> dict:
    """Train ``SpanPPOTrainer`` with TRL 1.12-equivalent settings; return metrics in the harness's JSON layout.

    The settings that TRL 1.12 hard-wires are set explicitly here: fp32 (its own ``Accelerator`` ignores ``bf16``),
    no gradient clipping (it never clips), no gradient checkpointing (its wrapper never enables it) and a constant
    learning rate (it steps its scheduler once per update, the ``Trainer`` once per optimizer step).
    """
    if threads:
        torch.set_num_threads(threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed

    from trl_text2grad.ppo.parity import Trl112ParityConfig
    from trl_text2grad.ppo.span_ppo_config import SpanPPOConfig
    from trl_text2grad.ppo.span_ppo_trainer import SpanPPOTrainer

    t_load = time.perf_counter()
    tok = tiny_setup.load_tokenizer(str(tokenizer))
    set_seed(seed)
    if qlora:  # QLoRA: frozen nf4 base (bitsandbytes), fp32 compute, LoRA adapters on top
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
        policy_model = AutoModelForCausalLM.from_pretrained(
            str(policy), dtype=torch.float32, quantization_config=quantization, device_map={"": "cpu"}
        )
        lora = True
    elif bf16_base:  # LoRA on a bf16 base: the frozen weights in bf16; PEFT keeps the adapters in fp32
        policy_model = AutoModelForCausalLM.from_pretrained(str(policy), dtype=torch.bfloat16)
        lora = True
    else:
        policy_model = AutoModelForCausalLM.from_pretrained(str(policy), dtype=torch.float32)
    # LoRA (the recommended configuration): the reference is the policy with its adapters disabled, no copy
    ref_model = None if lora else AutoModelForCausalLM.from_pretrained(str(policy), dtype=torch.float32)
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    value_model = None
    if not value_head:
        value_model = AutoModelForSequenceClassification.from_pretrained(str(value), num_labels=1, dtype=torch.float32)
    if reward_mode == "scalar":
        reward_model = AutoModelForSequenceClassification.from_pretrained(
            str(reward), num_labels=1, dtype=torch.float32
        )
    else:
        reward_model = bench_span_reward
    load_s = time.perf_counter() - t_load

    prompts = tiny_setup.make_prompts(num_prompts)
    dataset = Dataset.from_dict({"input_ids": [tok(p)["input_ids"] for p in prompts]})
    steps_per_update = num_ppo_epochs * num_mini_batches
    config_kwargs = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_mini_batches=num_mini_batches,
        num_ppo_epochs=num_ppo_epochs,
        total_episodes=num_updates * batch_size * gradient_accumulation_steps,
        response_length=response_length,
        temperature=temperature,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        kl_coef=kl_coef,
        reward_mode=reward_mode,
        seed=seed,
        report_to=[],
        logging_steps=steps_per_update,
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        max_grad_norm=0.0,
        gradient_checkpointing=False,
        num_sample_generations=0,
    )
    if merge_generation:
        config_kwargs["merge_adapters_for_generation"] = True
    if compile_generation:
        config_kwargs["compile_generation"] = True
    if not pack_generation:
        config_kwargs["pack_weights_for_generation"] = False
    config_kwargs.update(extra_config)
    # TRL 1.12 reproduction switches (trl112_*) live in the parity config, not in the documented SpanPPOConfig
    config_class = Trl112ParityConfig if any(k.startswith("trl112_") for k in config_kwargs) else SpanPPOConfig
    config = config_class(**config_kwargs)
    phases = _PhaseTimer() if profile else None
    recorder = _Recorder(steps_per_update, phases)
    trainer = SpanPPOTrainer(
        args=config,
        processing_class=tok,
        model=policy_model,
        ref_model=ref_model,
        reward_model=reward_model,
        train_dataset=dataset,
        value_model=value_model,
        callbacks=[recorder.callback],
        peft_config=peft_config,
    )

    rollouts: list[dict] = []
    original_rollout = trainer.rollout

    def recording_rollout(rows):
        out = original_rollout(rows)
        if dump_tokens:
            rollouts.append({"queries": out["prompt_ids"].tolist(), "responses": out["responses"].tolist()})
        return out

    trainer.rollout = recording_rollout
    if phases is not None:
        phases.install(trainer)
    original_multinomial = torch.multinomial
    if argmax_sampling:

        def argmax_multinomial(probs, num_samples, *a, **kw):
            if num_samples != 1:
                raise RuntimeError("argmax sampling only supports num_samples=1")
            return probs.argmax(dim=-1, keepdim=True)

        torch.multinomial = argmax_multinomial
    try:
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
    finally:
        torch.multinomial = original_multinomial

    updates = [log for log in trainer.state.log_history if "loss/policy_avg" in log]
    return {
        "implementation": f"SpanPPOTrainer reward_mode={reward_mode}"
        + (" value_head" if value_head else "")
        + (" qlora" if qlora else " lora bf16-base" if bf16_base else " lora" if lora else "")
        + (" merged-generation" if merge_generation else "")
        + (" compiled-generation" if compile_generation else "")
        + ("" if pack_generation else " unpacked-generation"),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "updates": updates,
        "rollouts": rollouts,
        "seconds_per_update": [b - a for a, b in zip(recorder.marks, recorder.marks[1:])],
        "cpu_seconds_per_update": [b - a for a, b in zip(recorder.cpu_marks, recorder.cpu_marks[1:])],
        "load_seconds": load_s,
        "train_seconds": train_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "phase_seconds_per_update": None if phases is None else phases.per_update(),
        "peak_rss_phase": None if phases is None else phases.peak_rss_phase,
        "trainer": trainer,
    }


# ----------------------------------------------------------------------------------------------------------------
# Benchmark driver
# ----------------------------------------------------------------------------------------------------------------
def prepare_models(cache: Path, seed: int) -> dict[str, str]:
    """SmolLM2-135M policy path plus value/reward sequence classifiers with seeded score heads (saved once)."""
    from trl_text2grad.models import default_model_path

    base = str(default_model_path())
    paths = {"policy": base, "tokenizer": base, "value": str(cache / "value"), "reward": str(cache / "reward")}
    for offset, name in enumerate(("value", "reward"), start=1):
        if not (Path(paths[name]) / "config.json").exists():
            from transformers import AutoModelForSequenceClassification

            torch.manual_seed(seed + offset)
            model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
            model.config.pad_token_id = 2
            model.save_pretrained(paths[name])
    return paths


def worker_main(args) -> int:
    paths = json.loads(args.paths)
    with tempfile.TemporaryDirectory(prefix="ppo_step_") as tmp:
        result = run_span_ppo(
            policy=paths["policy"], value=paths["value"], reward=paths["reward"], tokenizer=paths["tokenizer"],
            output_dir=tmp, reward_mode=args.reward_mode, value_head=args.value_head, lora=args.lora,
            argmax_sampling=False,
            num_prompts=args.batch_size, num_updates=args.num_updates, batch_size=args.batch_size,
            num_ppo_epochs=args.num_ppo_epochs, response_length=args.response_length, temperature=0.7,
            learning_rate=3e-6, seed=args.seed, threads=args.threads, profile=args.profile, qlora=args.qlora,
            merge_generation=args.merge_generation, bf16_base=args.bf16_base,
            compile_generation=args.compile_generation, pack_generation=not args.unpacked_generation,
        )  # fmt: skip
    result.pop("trainer")
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


def _run(cmd: list[str], env=None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")


def bench_main(args) -> int:
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise SystemExit(f"--rows: unknown {unknown}; choose from {', '.join(ROWS)}")
    paths = prepare_models(Path(args.cache), args.seed)
    env = dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1", TOKENIZERS_PARALLELISM="false")
    if "ours-span-qlora" in rows:
        problem = bitsandbytes_problem()
        if problem is not None:
            print(f"skipping row ours-span-qlora: {problem}", flush=True)
            rows.remove("ours-span-qlora")
    results = {}
    profiles: dict[str, list[dict[str, float]]] = {}
    out_dir = Path(tempfile.mkdtemp(prefix="ppo_step_results_"))
    for rep in range(args.repeats):
        for row in rows:
            out = out_dir / f"{row}_{rep}.json"
            common = ["--num-updates", str(args.num_updates), "--batch-size", str(args.batch_size),
                      "--response-length", str(args.response_length), "--seed", str(args.seed),
                      "--threads", str(args.threads), "--num-ppo-epochs", str(args.num_ppo_epochs)]  # fmt: skip
            if row in ("trl112", "trl112-bf16"):
                python = TRL112_VENV / "bin" / "python"
                if not python.exists():
                    _run(["bash", str(REPO / "scripts" / "make_trl112_venv.sh"), str(TRL112_VENV)])
                cmd = [str(python), str(HERE / "trl112" / "run_trl112_ppo.py"), "--out", str(out),
                       "--policy", paths["policy"], "--value", paths["value"], "--reward", paths["reward"],
                       "--tokenizer", paths["tokenizer"], "--num-prompts", str(args.batch_size),
                       "--no-argmax-sampling", "--learning-rate", "3e-6", *common]  # fmt: skip
                if row == "trl112-bf16":
                    cmd += ["--dtype", "bfloat16"]
                _run(cmd, env={**env, "PYTHONPATH": ""})
            else:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--out", str(out),
                       "--paths", json.dumps(paths), "--reward-mode", "scalar" if row == "ours-scalar" else "span",
                       *common]  # fmt: skip
                base_row = row.removesuffix("-unpacked").removesuffix("-compiled")
                if base_row in ("ours-span-vhead", "ours-span-lora", "ours-span-lora-merged", "ours-span-qlora",
                                "ours-span-lora-bf16"):  # fmt: skip
                    cmd.append("--value-head")
                if base_row in ("ours-span-lora", "ours-span-lora-merged"):
                    cmd.append("--lora")
                if base_row == "ours-span-lora-merged":
                    cmd.append("--merge-generation")
                if base_row == "ours-span-qlora":
                    cmd.append("--qlora")
                if base_row == "ours-span-lora-bf16":
                    cmd.append("--bf16-base")
                if row.removesuffix("-unpacked").endswith("-compiled"):
                    cmd.append("--compile-generation")
                if row.endswith("-unpacked"):
                    cmd.append("--unpacked-generation")
                if args.profile:
                    cmd.append("--profile")
                _run(cmd, env=env)
            result = json.loads(out.read_text())
            times = result["seconds_per_update"]
            steady = times[1:] if len(times) > 1 else times
            cpu = result.get("cpu_seconds_per_update") or [float("nan")]
            cpu_steady = cpu[1:] if len(cpu) > 1 else cpu
            results.setdefault(row, []).append(
                {
                    "s_per_update": sum(steady) / len(steady),
                    "cpu_s_per_update": sum(cpu_steady) / len(cpu_steady),
                    "first_update_s": times[0],
                    "peak_rss_mb": result["peak_rss_mb"],
                    "peak_rss_phase": result.get("peak_rss_phase"),
                }
            )
            print(f"[{rep}] {row}: {results[row][-1]}", flush=True)
            per_update = result.get("phase_seconds_per_update")
            if per_update:
                steady_phases = per_update[1:] if len(per_update) > 1 else per_update
                keys = [p + suffix for p in PHASES for suffix in ("", "_cpu")]
                mean = {k: sum(u.get(k, 0.0) for u in steady_phases) / len(steady_phases) for k in keys}
                profiles.setdefault(row, []).append(mean)

    def best(row, key):
        return min(r[key] for r in results[row])

    print()
    print(f"PPO update on CPU ({torch.get_num_threads()} torch threads here, --threads {args.threads}): "
          f"SmolLM2-135M, batch {args.batch_size}, {args.response_length} new tokens, {args.num_ppo_epochs} PPO "
          f"epochs, {args.num_updates} updates (first excluded), best of {args.repeats}")  # fmt: skip
    with_bf16 = "trl112-bf16" in results
    header = (
        f"{'row':<31}{'s/update':>10}{'CPU s/update':>14}{'1st update s':>14}{'peak RSS MB':>13}"
        f"{'time vs trl':>13}{'CPU vs trl':>12}{'RSS vs trl':>12}"
    ) + (f"{'time vs trl-bf16':>18}" if with_bf16 else "")
    print(header)
    print("-" * len(header))
    for row in rows:
        t, c, m = best(row, "s_per_update"), best(row, "cpu_s_per_update"), best(row, "peak_rss_mb")
        rt = rc = rm = ""
        if "trl112" in results:
            rt = f"{t / best('trl112', 's_per_update'):.2f}x"
            rc = f"{c / best('trl112', 'cpu_s_per_update'):.2f}x"
            rm = f"{m / best('trl112', 'peak_rss_mb'):.2f}x"
        rb = f"{t / best('trl112-bf16', 's_per_update'):.2f}x" if with_bf16 else ""
        print(
            f"{row:<31}{t:>10.2f}{c:>14.2f}{best(row, 'first_update_s'):>14.2f}{m:>13.0f}{rt:>13}{rc:>12}{rm:>12}"
            + (f"{rb:>18}" if with_bf16 else "")
        )
    if "trl112" in results and args.repeats > 1:
        print()
        print("time vs trl 1.12 within each repeat (each row against the trl112 run of the same round; the machine's")
        print("speed drifts between rounds, so these paired ratios are steadier than ratios of bests):")
        print(f"{'row':<31}{'median':>10}{'min':>8}{'max':>8}   per repeat")
        for row in rows:
            if row == "trl112":
                continue
            paired = [r["s_per_update"] / t["s_per_update"] for r, t in zip(results[row], results["trl112"])]
            print(
                f"{row:<31}{statistics.median(paired):>9.2f}x{min(paired):>7.2f}x{max(paired):>7.2f}x   "
                + ", ".join(f"{v:.2f}" for v in paired)
            )
    if profiles:
        for suffix, label in (("", "wall-clock"), ("_cpu", "CPU")):
            print()
            print(f"{label} seconds per update by phase (mean over the updates after the first; best repeat):")
            print(f"{'row':<31}" + "".join(f"{p:>17}" for p in PHASES) + f"{'sum':>8}")
            for row, runs in profiles.items():
                mean = min(runs, key=lambda r: sum(r[p + suffix] for p in PHASES))
                values = [mean[p + suffix] for p in PHASES]
                print(f"{row:<31}" + "".join(f"{v:>17.2f}" for v in values) + f"{sum(values):>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "phases": profiles}, indent=1))
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    p.add_argument("--num-updates", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--response-length", type=int, default=48)
    p.add_argument("--num-ppo-epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2, help="torch threads in every run (same for all rows)")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run every row this many times (rows interleaved round by round), report the best and, against "
        "trl112, the median of the per-round ratios",
    )
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "trl_text2grad" / "bench_models"))
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument(
        "--profile", action="store_true", help="also time each phase of our updates (generation, forwards, ...)"
    )
    # internal: one of our runs in a fresh process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--paths", help=argparse.SUPPRESS)
    p.add_argument("--reward-mode", default="span", help=argparse.SUPPRESS)
    p.add_argument("--value-head", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--lora", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--qlora", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bf16-base", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--merge-generation", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--compile-generation", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--unpacked-generation", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    _args = parse_args()
    sys.exit(worker_main(_args) if _args.worker else bench_main(_args))
