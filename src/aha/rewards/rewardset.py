"""RewardSet: the configured rewards, scored together, every component reported separately.

The total of a completion is the weighted sum of its components (weights per routing kind); every
component comes back on its own so the trainer can log it. Reward models score their rows in one
batched call; cheap rewards run inline; verifiers (`heavy`) run under the per-completion time limit, in worker processes when `workers > 0`. Failures
never raise: a timeout, a bad gold answer or a crashing reward scores 0, is counted in `stats`, and is
logged (a bad gold once per gold).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

from aha.config import check
from aha.data.example import Example
from aha.errors import AhaError
from aha.rewards.base import RewardSpec
from aha.rewards.config import RewardsConfig
from aha.rewards.guard import ERROR, GOLD, OK, TIMEOUT, call_batch_guarded, call_guarded
from aha.rewards.registry import REGISTRY, build
from aha.rollout.base import Completion

log = logging.getLogger("aha.rewards")

_PREPARED: set[tuple[object, str]] = set()  # (prepare fn, key) done in this process
_MAX_ERROR_WARNINGS = 20


class RewardSet:
    """The rewards of a RewardsConfig. `score()` returns (totals, parts); `stats` counts outcomes."""

    def __init__(self, config: RewardsConfig | None = None, registry: dict | None = None,
                 grace_s: float = 2.0):
        self.config = config if config is not None else RewardsConfig()
        check(self.config, "rewards.")
        self.registry = REGISTRY if registry is None else registry
        for where, names in (("rewards.reward_models", self.config.reward_models), ("rewards.custom", self.config.custom)):
            for name in names:
                if name in self.registry:
                    raise AhaError(f"{where}.{name}: '{name}' is a built-in reward; pick another name")
        self.grace_s = grace_s
        names: list[str] = []
        sources = [("rewards.weights", self.config.weights)]
        sources += [(f"rewards.by_kind.{k}", w) for k, w in self.config.by_kind.items()]
        for where, weights in sources:
            if not isinstance(weights, dict):
                raise AhaError(f"{where} must map reward names to weights")
            for name, weight in weights.items():
                if name not in self.registry:
                    build(name, self.config, self.registry, where)  # raises with the closest name
                if not isinstance(weight, (int, float)) or not math.isfinite(weight):
                    raise AhaError(f"{where}.{name}: weight must be a number, got {weight!r}")
                if name not in names:
                    names.append(name)
        if not names:
            raise AhaError("rewards.weights is empty: no reward to train on")
        self.names = names
        """Every component a score() can return, in config order."""
        self.specs: dict[str, RewardSpec] = {n: build(n, self.config, self.registry) for n in names}
        self.stats: dict[str, int] = {"scored": 0, "timeouts": 0, "errors": 0, "gold_failures": 0}
        """Cumulative counts: completions scored, and component results that were timeouts, errors
        (a reward raised) and gold failures (the example's gold is unusable)."""
        self.bad_golds: set[str] = set()
        """Distinct gold answers (task: gold) that could not be used; each was warned about once."""
        self.last_status: dict[str, list[str]] = {}
        """Per component, the status of each row of the last score(): ok, timeout, error, gold, or n/a."""
        self.last_seconds = 0.0
        """Wall time of the last score()."""
        self._errors_warned: set[str] = set()
        self._pool = None
        self._pool_failed = False

    # -- public ----------------------------------------------------------------------------------
    def weights_for(self, kind: str) -> dict[str, float]:
        """The weights that apply to examples of routing kind `kind`."""
        return self.config.by_kind.get(kind, self.config.weights)

    def score(self, completions: Sequence[Completion], examples: Sequence[Example],
              step: int = 0) -> tuple[list[float], dict[str, list[float]]]:
        """(totals, parts): per completion the weighted total, and per component its values. A component
        that does not apply to a row's kind (by_kind) is not computed: 0.0 in `parts`, "n/a" in
        `last_status` (0.0 rather than NaN so the values stay valid JSON and tensors)."""
        start = time.perf_counter()
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions for {len(examples)} examples")
        n = len(completions)
        weights = [self.weights_for(ex.kind) for ex in examples]
        jobs = [(name, i) for name in self.names for i in range(n) if name in weights[i]]
        values = self._run(jobs, completions, examples, step)
        parts = {name: [0.0] * n for name in self.names}
        for (name, i), v in zip(jobs, values, strict=True):
            parts[name][i] = v
        totals = [sum(w * parts[name][i] for name, w in weights[i].items()) for i in range(n)]
        self.stats["scored"] += n
        self.last_seconds = time.perf_counter() - start
        return totals, parts

    def component(self, name: str, completions: Sequence[Completion], examples: Sequence[Example],
                  step: int = 0, probe: bool = False) -> list[float]:
        """One reward (any registry name, configured or not) for every row, through the same guarded
        path as score(). Used by the selftest. `probe`: the examples' answers are not golds but texts under
        comparison (cons@k's majority vote asks whether two sampled answers agree): an answer the verifier
        cannot read as a gold scores 0 without a warning or a count among the gold failures."""
        if name not in self.specs:
            self.specs[name] = build(name, self.config, self.registry)
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions for {len(examples)} examples")
        return self._run([(name, i) for i in range(len(completions))], completions, examples, step, probe)

    def prepare(self, examples: Sequence[Example]) -> None:
        """Import and build every verifier these examples need, now (AhaError for an unknown task or a
        refused reasoning-gym dataset), instead of at the first score()."""
        jobs = [(name, i) for i, ex in enumerate(examples) for name in self.names if name in self.weights_for(ex.kind)]
        preps = self._preps(jobs, examples)
        if self.config.workers > 0 and preps and not self._pool_failed:
            from aha.rewards.pool import PoolBroken

            try:
                self._get_pool().run(preps, [])
                return
            except PoolBroken as e:
                log.warning("reward workers unavailable (%s); scoring in this process from now on", e)
                self._pool_failed = True
                self.close()
        self._prepare_inline(preps)

    def close(self) -> None:
        """Stop the worker processes, if any."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> RewardSet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- internals -------------------------------------------------------------------------------
    def _get_pool(self):
        if self._pool is None:
            from aha.rewards.pool import WorkerPool

            self._pool = WorkerPool(self.config.workers, grace_s=self.grace_s)
        return self._pool

    def _preps(self, jobs, examples) -> list[tuple[object, str]]:
        preps: dict[tuple[object, str], None] = {}
        for name, i in jobs:
            spec = self.specs[name]
            if self._is_heavy(spec, examples[i]) and spec.prepare is not None and spec.prepare_key is not None:
                preps[(spec.prepare, spec.prepare_key(examples[i]))] = None
        return list(preps)

    @staticmethod
    def _prepare_inline(preps) -> None:
        for fn, key in preps:
            if (fn, key) not in _PREPARED:
                fn(key)
                _PREPARED.add((fn, key))

    @staticmethod
    def _is_heavy(spec: RewardSpec, example: Example) -> bool:
        return spec.heavy and (spec.heavy_for is None or spec.heavy_for(example))

    def _timeout(self, spec: RewardSpec, example: Example) -> float:
        base = self.config.timeout_s
        return spec.timeout_for(example, base) if spec.timeout_for is not None else base

    def _run(self, jobs, completions, examples, step: int, probe: bool = False) -> list[float]:
        results: list[tuple[float, str, str]] = [(0.0, ERROR, "not run")] * len(jobs)
        batched: dict[str, list[int]] = {}  # reward name -> job indices, for rewards scored in batches
        for k, (name, _) in enumerate(jobs):
            if self.specs[name].batch_fn is not None:
                batched.setdefault(name, []).append(k)
        for name, ks in batched.items():
            spec, rows = self.specs[name], [jobs[k][1] for k in ks]
            out = call_batch_guarded(spec.batch_fn, [completions[i] for i in rows], [examples[i] for i in rows],
                                     step, spec.low, spec.high)
            for k, r in zip(ks, out, strict=True):
                results[k] = r
        done = {k for ks in batched.values() for k in ks}
        heavy = [k for k, (name, i) in enumerate(jobs) if k not in done and self._is_heavy(self.specs[name], examples[i])]
        done |= set(heavy)
        for k, (name, i) in enumerate(jobs):
            if k not in done:
                spec = self.specs[name]
                # Cheap rewards are linear-time by construction: no timer, but still guarded.
                results[k] = call_guarded(spec.fn, completions[i], examples[i], step, None, spec.low, spec.high)
        if heavy:
            preps = self._preps([jobs[k] for k in heavy], examples)
            tasks = []
            for k in heavy:
                name, i = jobs[k]
                spec = self.specs[name]
                tasks.append((spec.fn, completions[i], examples[i], step, self._timeout(spec, examples[i]),
                              spec.low, spec.high))
            out = None
            if self.config.workers > 0 and not self._pool_failed:
                from aha.rewards.pool import PoolBroken

                try:
                    out = self._get_pool().run(preps, tasks)
                except PoolBroken as e:
                    log.warning("reward workers unavailable (%s); scoring in this process from now on", e)
                    self._pool_failed = True
                    self.close()
            if out is None:
                self._prepare_inline(preps)
                out = [call_guarded(*t) for t in tasks]
            for k, r in zip(heavy, out, strict=True):
                results[k] = r
        self._account(jobs, results, examples, len(completions), probe)
        return [v for v, _, _ in results]

    def _account(self, jobs, results, examples, n: int, probe: bool = False) -> None:
        status: dict[str, list[str]] = {}
        timeouts = 0
        for (name, i), (_, st, info) in zip(jobs, results, strict=True):
            status.setdefault(name, ["n/a"] * n)[i] = st
            if st == OK:
                continue
            if st == TIMEOUT:
                timeouts += 1
                self.stats["timeouts"] += 1
            elif st == GOLD:
                if probe:
                    continue
                self.stats["gold_failures"] += 1
                ex = examples[i]
                key = f"{ex.task}: {ex.answer!r:.200}"
                if key not in self.bad_golds:
                    self.bad_golds.add(key)
                    log.warning("unusable gold for example %r (task %s): %s; it scores 0", ex.id, ex.task, info)
            else:
                self.stats["errors"] += 1
                msg = f"{name}: {info}"
                if msg not in self._errors_warned and len(self._errors_warned) < _MAX_ERROR_WARNINGS:
                    self._errors_warned.add(msg)
                    log.warning("reward %s raised on example %r and scored 0: %s", name, examples[i].id, info)
        if timeouts:
            log.warning("%d reward computation(s) hit the time limit (%.1f s) and scored 0", timeouts,
                        self.config.timeout_s)
        self.last_status = status
