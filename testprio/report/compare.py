"""Two runs side by side: whether they ranked the same pool, their figures, their
fault-detection curves, and how their rankings agree (rank correlation, top-k overlap,
the samples that moved most).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from testprio import storage
from testprio.errors import TestprioError
from testprio.report.paths import basename, run_file
from testprio.report.run import RunDetails

# Keys a data manifest may carry for a digest of the pool's content, most specific first.
POOL_HASH_KEYS = ("content_sha256", "sha256", "content_hash")


def pool_identity(a: RunDetails, b: RunDetails) -> dict:
    """Whether two runs ranked the same pool, and by what that was decided.

    With a content digest in both data manifests (``POOL_HASH_KEYS``): the digest and the
    sample count. Without one: the recorded data URI (``--data``), the pool's name and its
    sample count. Returns ``same``, ``compared`` (words for the screen), ``a``, ``b`` (each
    run's values).
    """
    manifest_a, manifest_b = a.manifest or {}, b.manifest or {}
    key = next((k for k in POOL_HASH_KEYS if manifest_a.get(k) and manifest_b.get(k)), None)
    if key is not None:
        fields = {key: "content hash", "samples": "sample count"}
        compared = "the content hash and sample count of the data manifests"
    else:
        fields = {"data": "data URI", "source": "pool name", "samples": "sample count"}
        compared = (
            "the data URI, pool name and sample count (the data manifests carry no content hash)"
        )

    def values(details: RunDetails, manifest: dict) -> dict:
        return {
            name: details.parameters.get("data") if name == "data" else manifest.get(name)
            for name in fields
        }

    first, second = values(a, manifest_a), values(b, manifest_b)
    return {"same": first == second, "compared": compared, "a": first, "b": second}


def _pool_words(values: dict) -> str:
    parts = [str(value) for name, value in values.items() if name != "samples"]
    return f"{', '.join(parts)}, {values.get('samples')} samples"


def run_figures(details: RunDetails) -> dict:
    """Accuracy and APFD (raw, normalized) of one run, for side-by-side comparison."""
    labels = (details.summary or {}).get("labels") or {}
    apfd = labels.get("apfd") or {}
    return {
        "run": details.run_id,
        "metric": details.metric,
        "samples": (details.summary or {}).get("counts", {}).get("ranked"),
        "accuracy": labels.get("accuracy"),
        "misclassified": labels.get("misclassified"),
        "apfd": apfd.get("raw"),
        "apfd_normalized": apfd.get("normalized"),
    }


def fault_curves_rows(curves: dict[str, dict | None]) -> list[dict]:
    """Long-form rows (``inspected``, ``found``, ``run``) of each run's ranking curve
    (``fault_curve``), one line per run; runs without a curve are left out."""
    return [
        {"inspected": x, "found": curve["ranking"][i], "run": run_id}
        for run_id, curve in curves.items()
        if curve
        for i, x in enumerate(curve["inspected"])
    ]


def _ranked_ids(details: RunDetails) -> np.ndarray:
    """Sample ids in ranking order (the ranking is stored sorted by rank)."""
    return (
        storage.read_table(run_file(details.layout, details.layout.ranking), columns=["sample_id"])
        .column("sample_id")
        .to_numpy()
    )


def compare_runs(
    a: RunDetails,
    b: RunDetails,
    *,
    top_ks: Iterable[int] = (10, 100, 1000, 10_000),
    moved: int = 25,
    scatter_points: int = 2000,
) -> dict:
    """Rank correlation, top-k overlap and the samples that moved most between two runs.

    Compares the samples both runs ranked. Spearman's rho over their ranks (re-ranked
    within the shared samples); top-k overlap = shared ids among both top-k / k.
    """
    for details in (a, b):
        if not details.has_ranking:
            raise TestprioError(f"run {details.run_id} has no ranking to compare.")
    warnings = []
    pool = pool_identity(a, b)
    if not pool["same"]:
        # The same sample id in two different pools is a different input: pairing them
        # would show agreement or disagreement that means nothing.
        raise TestprioError(
            f"runs {a.run_id} and {b.run_id} ranked different pools ({_pool_words(pool['a'])}"
            f" vs {_pool_words(pool['b'])}; compared: {pool['compared']}), so their samples "
            "cannot be paired; compare two runs of the same pool."
        )
    same_data = True
    ids_a, ids_b = _ranked_ids(a), _ranked_ids(b)
    rank_b_of = np.full(max(ids_a.max(initial=-1), ids_b.max(initial=-1)) + 1, -1, np.int64)
    rank_b_of[ids_b] = np.arange(1, len(ids_b) + 1)
    in_b = rank_b_of[ids_a] > 0
    shared_ids = ids_a[in_b]
    rank_a = np.arange(1, len(ids_a) + 1)[in_b]
    rank_b = rank_b_of[shared_ids]
    n = len(shared_ids)
    if n != len(ids_a) or n != len(ids_b):
        warnings.append(
            f"{len(ids_a) - n:,} samples only in {a.run_id}, {len(ids_b) - n:,} only in {b.run_id}."
        )
    # Re-rank within the shared samples so both orders are permutations of 1..n.
    position_a = np.arange(1, n + 1, dtype=np.float64)
    position_b = np.empty(n, dtype=np.float64)
    position_b[np.argsort(rank_b, kind="stable")] = np.arange(1, n + 1)
    spearman = (
        1.0 - 6.0 * float(np.sum((position_a - position_b) ** 2)) / (n * (n * n - 1.0))
        if n > 1
        else None
    )
    shared_b_order = shared_ids[np.argsort(rank_b, kind="stable")]
    sizes = {int(k) for k in top_ks if 0 < int(k) <= n}
    if n:
        sizes.add(max(1, n // 100))  # the top 1 %
    overlaps = []
    for k in sorted(sizes):
        common = np.intersect1d(shared_ids[:k], shared_b_order[:k], assume_unique=True)
        overlaps.append({"k": k, "shared": len(common), "overlap": round(len(common) / k, 6)})
    change = position_b - position_a
    order = np.lexsort((shared_ids, -np.abs(change)))[:moved]
    movers = [
        {
            "sample_id": int(shared_ids[i]),
            f"rank in {a.run_id}": int(rank_a[i]),
            f"rank in {b.run_id}": int(rank_b[i]),
            "moved": int(rank_b[i] - rank_a[i]),
        }
        for i in order
    ]
    step = max(1, n // scatter_points) if n else 1
    scatter = [
        {"sample_id": int(shared_ids[i]), "rank_a": int(rank_a[i]), "rank_b": int(rank_b[i])}
        for i in range(0, n, step)
    ]
    return {
        "a": a.run_id,
        "b": b.run_id,
        "metrics": (a.metric, b.metric),
        "models": (basename(a.parameters.get("model")), basename(b.parameters.get("model"))),
        "same_data": same_data,
        "pool_compared": pool["compared"],
        "shared": n,
        "spearman": None if spearman is None else round(spearman, 6),
        "overlaps": overlaps,
        "moved": movers,
        "scatter": scatter,
        "warnings": warnings,
    }
