"""How a request's pairs are cut into batches: by length, under a token budget sized for the device, spread over
the workers. Serving and the measured choice's probe batch alike, so the probe times what requests run."""

from __future__ import annotations

from collections.abc import Sequence


def batching_for(device: str) -> dict:
    """Batch limits sized for the device: 512 padded tokens a batch on a CPU core, 64k on a GPU. On a CPU a batch
    cannot be interrupted, so its length is how long another request may wait for a worker: 512 tokens halve that
    wait at no cost in throughput (docs/performance.md, "Batch size on a CPU"); a GPU wants large passes."""
    return {"token_budget": 512, "batch_size": 32} if device == "cpu" else {"token_budget": 65_536, "batch_size": 1024}


def plan_batches(lengths: Sequence[int], token_budget: int, max_batch: int = 32) -> list[list[int]]:
    """Group items longest first so each batch's padded size (longest x count) stays within the budget.

    Similar lengths share a batch, so little compute goes to padding; short texts still batch widely.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        if current and len(current) < max_batch and lengths[current[0]] * (len(current) + 1) <= token_budget:
            current.append(i)
        else:
            batches.append([i])
    return batches


def spread_budget(lengths: Sequence[int], token_budget: int, workers: int, max_batch: int = 32) -> int:
    """A batch budget that splits one request into at most one batch per worker where that takes batches of at most
    twice the device's budget (a 50-document request on 16 cores: 16 batches in one round, not 17 in two);
    otherwise the device's budget (batches stay small enough to interleave requests fairly), or an even share of a
    smaller request. Never below an eighth of the budget."""
    if workers <= 1 or not lengths:
        return token_budget
    share = max(token_budget // 8, -(-sum(lengths) // workers), max(lengths))
    for factor in (1.0, 1.1, 1.25, 1.5, 2.0):
        budget = int(share * factor)
        if budget > 2 * token_budget:
            break
        if len(plan_batches(lengths, budget, max_batch)) <= workers:
            return budget
    return min(token_budget, share)


def padding_waste(lengths: Sequence[int], batches: list[list[int]]) -> float:
    """Fraction of the computed token positions that are padding under a batch plan."""
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths) / padded if padded else 0.0
