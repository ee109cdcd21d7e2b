"""The fewest layers to keep in FP16 so a w8a8 graph meets ``[accuracy.budget]``.

Greedy by sensitivity: the layer whose fallback recovers the most goes first, and the graph quantize
would write with the layers kept so far is scored after each step; the loop stops at the first
graph within the budget. Greedy steps can leave a layer that a later one made unnecessary, so each
kept layer is then tried without, least sensitive first, and dropped if the budget still holds.
"""

from __future__ import annotations

import time

import onnx

from pipeline.config import Budget
from pipeline.console import info
from pipeline.errors import PipelineError
from pipeline.evaluate.metrics import TaskMetric
from pipeline.evaluate.sensitivity import Sensitivity, Target, measure
from pipeline.evaluate.variants import HeldOut, Score, VariantRunner
from pipeline.results import BudgetResult, KeptLayer


def meets(score: Score, budget: Budget, reference_metric: float | None, task: TaskMetric | None) -> bool:
    """Within the budget and within the graph's accuracy gate (when the score was asked for it): a
    graph the budget accepts must not then fail quantize's gate on agreement, error or metric."""
    if score.gate_failures:
        return False
    if budget.min_cosine is not None and score.centered_cosine < budget.min_cosine:
        return False
    if budget.max_metric_drop is not None and score.metric is not None and reference_metric is not None and task:
        return task.drop(score.metric, reference_metric) <= budget.max_metric_drop
    return True


def describe(score: Score, reference_metric: float | None, task: TaskMetric | None) -> str:
    text = f"centered cosine {score.centered_cosine:.5f}, relative error {score.rel_error:.4g}"
    if score.metric is not None and reference_metric is not None and task is not None:
        text += f", {task.describe(score.metric, reference_metric)}"
    if score.gate_failures:
        text += f", misses its gate: {'; '.join(score.gate_failures)}"
    return text


def _closeness(score: Score, reference_metric: float | None, task: TaskMetric | None) -> tuple[float, float, float]:
    """Larger is closer to the budget: fewer gate failures, then the metric's negated drop (0 without
    labels), then centered cosine."""
    known = score.metric is not None and reference_metric is not None and task is not None
    drop = task.drop(score.metric, reference_metric) if known else 0.0
    return -len(score.gate_failures or ()), -drop, score.centered_cosine


def fit(
    target: Target,
    budget: Budget,
    heldout: HeldOut,
    weighted: int,
    where: str,
    table: Sensitivity | None = None,
    settle_for_closest: bool = False,
) -> tuple[BudgetResult, onnx.ModelProto, Sensitivity | None]:
    """The graph with the fewest layers in FP16 within ``budget``, what it cost, and the sensitivity
    table when one was needed (the fully quantized graph may meet the budget already); ``table``, when
    given, is used instead of measuring one. ``where`` names the config in the error when the budget
    cannot be met within the cap; ``settle_for_closest`` (quantize --force) returns the closest graph
    scored instead, whose gate then fails as any forced graph's does."""
    start = time.perf_counter()
    full = target.with_fp16(frozenset())
    gate = heldout.cfg.accuracy.gate(target.graph)  # what quantize then checks, searched for too
    runner = VariantRunner(full, heldout, delta=False, gate=gate)  # the graphs' figures as written, exactly
    ref_metric = heldout.reference_metric()
    task = heldout.task
    before = runner.scores([full])[0]
    cap = budget.cap(len(target.layers))

    def result(after: Score, kept: tuple[KeptLayer, ...], evaluations: int, missed: str | None = None) -> BudgetResult:
        seconds = time.perf_counter() - start
        return BudgetResult(
            target.graph,
            weighted,
            len(target.layers),
            cap,
            before,
            after,
            ref_metric,
            kept,
            evaluations,
            seconds,
            missed,
        )

    if meets(before, budget, ref_metric, task):
        return result(before, (), 1), full, None
    table = table or measure(target, heldout)
    info(
        f"  {target.graph}: sensitivity of {len(target.layers)} layers in {table.seconds:.1f} s; "
        f"all INT8: {describe(before, ref_metric, task)}"
    )
    scored: dict[frozenset[str], Score] = {frozenset(): before}

    def score(kept: frozenset[str]) -> Score:
        if kept not in scored:
            scored[kept] = runner.scores([target.with_fp16(kept)])[0]
            info(f"  {target.graph}: {len(kept)} layer(s) in FP16: {describe(scored[kept], ref_metric, task)}")
        return scored[kept]

    def ok(kept: list[str]) -> bool:
        return meets(score(frozenset(kept)), budget, ref_metric, task)

    ranked = table.ranked()
    kept = _shortest_prefix([s.node for s in ranked], ok, cap)
    if not ok(kept):
        best = max(scored, key=lambda k: _closeness(scored[k], ref_metric, task))
        why = (
            f"{where}: {target.graph} cannot meet [accuracy.budget] ({_spell(budget)}) with at most {cap} of "
            f"{len(target.layers)} layers in FP16; closest: {describe(scored[best], ref_metric, task)} with "
            f"{len(best)} in FP16"
        )
        if not settle_for_closest:
            raise PipelineError(f"{why}; raise max_fp16_share/max_fp16_layers or relax the budget")
        info(f"WARNING: {why}; --force: that graph is the one written")
        kept, missed = [s.node for s in ranked if s.node in best], why
    else:
        kept, missed = _pruned(kept, ok), None
    by_node = {s.node: s for s in ranked}
    kept_layers = tuple(
        KeptLayer(n, by_node[n].op_type, *reversed(table.gain(by_node[n])), by_node[n].alone.centered_cosine)
        for n in kept
    )
    after = score(frozenset(kept))
    return result(after, kept_layers, len(scored), missed), target.with_fp16(frozenset(kept)), table


def _shortest_prefix(ranked: list[str], ok, cap: int) -> list[str]:
    """The shortest prefix of ``ranked`` (at most ``cap`` long) that ``ok`` holds for, found by doubling
    its length, then halving the last gap: about 2 log2(cap) graphs scored instead of one per layer kept
    (a net that needs 40 layers in FP16 costs 11, not 40). Keeping more layers in FP16 almost always
    helps; where it does not, the prefix found may be longer than needed, and pruning drops the rest.
    The longest prefix tried when none holds."""
    cap = min(cap, len(ranked))
    if cap == 0:
        return []
    failed, length = 0, 1
    while length < cap and not ok(ranked[:length]):
        failed, length = length, min(2 * length, cap)
    if not ok(ranked[:length]):
        return ranked[:length]
    while length - failed > 1:
        middle = (failed + length) // 2
        failed, length = (failed, middle) if ok(ranked[:middle]) else (middle, length)
    return ranked[:length]


def _pruned(kept: list[str], ok) -> list[str]:
    """``kept`` less each layer ``ok`` holds without, least sensitive (last added) first."""
    kept = list(kept)
    for node in kept[::-1]:
        trial = [k for k in kept if k != node]
        if ok(trial):
            kept = trial
    return kept


def _spell(budget: Budget) -> str:
    parts = []
    if budget.min_cosine is not None:
        parts.append(f"min_cosine = {budget.min_cosine}")
    if budget.max_metric_drop is not None:
        parts.append(f"max_metric_drop = {budget.max_metric_drop}")
    return ", ".join(parts)
