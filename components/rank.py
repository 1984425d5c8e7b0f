from typing import List

from kfp import dsl

from components.images import RUNTIME


@dsl.component(base_image=RUNTIME, install_kfp_package=False)
def rank(run_uri: str, scores: List[str], metric: str, top_k: int) -> str:
    """Merge every shard's scores into ranking.parquet and summary.json; finish the run."""
    from testprio.stages import rank_scores

    return rank_scores(run_uri, scores, metric, top_k)
