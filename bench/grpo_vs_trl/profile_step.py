"""Where one aha GRPO step's time goes, on the work of `work.py`: torch's profiler over the training and
reference passes of a step, with its rollouts fixed (collected once, then reused, so that only the passes
run), or over one generation of the step's 8 x 8 completions.

    .venv/bin/python bench/grpo_vs_trl/profile_step.py [train [--shapes]|generate|time] [key=value ...]
    AHA_BENCH_WORK=r1_length .venv/bin/python bench/grpo_vs_trl/profile_step.py generate
    AHA_BENCH_WORK=r1_length .venv/bin/python bench/grpo_vs_trl/profile_step.py time runtime.head_kernel=eager \
        --frozen-fp32

Prints the ops by self CPU time (and, for `generate`, by input shape: the decode steps' matmuls at each row
count). `time`: no profiler and no warm-up step; the first step's rollouts fixed, then 3 steps over them,
each step's reference and training passes timed, and the peak RSS; `--frozen-fp32` keeps LoRA's frozen
weights in fp32 as before `aha.training.lora.for_autocast` (for A/B runs in separate processes). Run it with
the machine otherwise idle.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from aha_worker import make_config  # noqa: E402


def fix_rollouts(trainer, rollouts) -> None:
    """The same completions every step from here on: only the reference and training passes run."""
    trainer.collect = lambda: rollouts
    trainer.engine.sync_weights = lambda *a, **k: None


def main(argv: list[str]) -> None:
    import work
    from torch.profiler import ProfilerActivity, profile

    from aha import runtime
    from aha.training.grpo_loop import GRPOTrainer

    what = argv[0] if argv and "=" not in argv[0] else "train"
    overrides = [*work.AHA_SETTINGS, *(a for a in argv if "=" in a)]  # the work's aha settings, as aha_worker.py
    runtime.apply(runtime.load(None, overrides))
    if "--frozen-fp32" in argv:
        from aha.training import lora

        lora.for_autocast = lambda *a: 0
    trainer = GRPOTrainer(make_config(10, overrides))
    if what == "time":
        import resource

        fix_rollouts(trainer, trainer.collect())
        for i in range(3):
            m = trainer.step()
            print(f"step {i + 1}: reference passes {m['time/logprob_s']:.2f} s, training passes and update "
                  f"{m['time/train_s']:.2f} s, {m['train_tokens']:.0f} tokens", flush=True)
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
        return
    trainer.step()  # warm-up
    if what == "generate":
        prompts = [trainer.encode(trainer.examples[i]) for i in range(trainer.cfg.grpo.prompts_per_step)]
        trainer.engine.generate(prompts, trainer.cfg.grpo.group_size, trainer.sampling)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            t = time.perf_counter()
            groups = trainer.engine.generate(prompts, trainer.cfg.grpo.group_size, trainer.sampling)
            print(f"generation: {time.perf_counter() - t:.2f} s, "
                  f"{sum(len(c.completion_ids) for g in groups for c in g)} tokens")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=40))
        return
    rollouts = trainer.collect()
    shapes = "--shapes" in argv  # ops by input shape too, over the first two groups only (the tables' memory)
    if shapes:
        ro, info = rollouts
        n = 2 * trainer.cfg.grpo.group_size
        rollouts = (type(ro)(ro.examples[:n], ro.completions[:n], ro.rewards[:n],
                             {k: v[:n] for k, v in ro.parts.items()}, ro.advantages[:n]), info)
    fix_rollouts(trainer, rollouts)
    trainer.step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=shapes) as prof:
        m = trainer.step()
    print(f"reference passes {m['time/logprob_s']:.2f} s, training passes and update {m['time/train_s']:.2f} s")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    if shapes:
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=60))


if __name__ == "__main__":
    main(sys.argv[1:])
