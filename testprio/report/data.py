"""What the report app (``report_app/``) and the report stage (``testprio.report``) show,
shaped from a run folder: the one face of the modules beside it, which hold the code.

- ``paths``: paths under the root; every file of a run is read through ``run_file``.
- ``run``: one run's JSON records (``RunDetails``, ``load_run``) and class names.
- ``runs``: the runs under a root, the runs table and the run kinds.
- ``figures``: one run's figures (model and pool facts, stages timeline, score figures).
- ``label_views``: what the labels show (per-class accuracy, fault-detection curve).
- ``ranking``: the ranking, a page at a time, filtered.
- ``samples``: sample tensors, galleries, thumbnails, one sample's drill-down.
- ``images``: a sample as a picture (display image, enlargement, PNG).
- ``compare``: two runs side by side.
- ``downloads``: ranking CSV and Parquet, export.zip, top-k rows and images.
- ``evaluation``: evaluation runs and the prioritizer comparisons of a ranking.
- ``text``: values as display text (literal Markdown, sizes, durations).

The modules import each other directly, never this face; it only re-exports.
"""

from testprio.report.compare import (
    POOL_HASH_KEYS,
    compare_runs,
    fault_curves_rows,
    pool_identity,
    run_figures,
)
from testprio.report.downloads import (
    FORMULA_STARTS,
    csv_cell,
    export_zip_file,
    ranking_csv,
    ranking_parquet,
    rows_to_csv,
    top_k_images_zip,
    top_k_rows,
    write_ranking_csv,
)
from testprio.report.evaluation import (
    attribution_rows,
    best_by_apfd,
    evaluation_view,
    load_evaluation,
    prioritizer_apfd_rows,
    ranking_attribution_view,
)
from testprio.report.figures import (
    STATS_ROWS_WITHOUT_REPORT,
    TIMELINE_MAX_SHARDS,
    class_score_heatmap,
    dataset_stats,
    dataset_summary,
    model_summary,
    per_class_means,
    preprocessing_text,
    quarantine_reasons,
    score_histogram,
    stage_timeline,
)
from testprio.report.images import (
    GALLERY_MAX_SIDE,
    GALLERY_MIN_SIDE,
    THUMBNAIL_SIDE,
    display_image,
    encode_png,
    upscale,
)
from testprio.report.label_views import (
    FAULT_CURVE_POINTS,
    fault_curve,
    fault_curve_rows,
    label_figures,
    per_class_accuracy,
    run_fault_curve,
)
from testprio.report.paths import (
    resolve_run,
    resolve_under_root,
    run_file,
    shard_file,
)
from testprio.report.ranking import (
    RANKING_VIEW_COLUMNS,
    RankingFilter,
    RankingPage,
    ranking_page,
    ranking_rows,
)
from testprio.report.run import (
    RunDetails,
    class_label,
    class_names,
    load_run,
)
from testprio.report.runs import (
    EVALUATION_KIND,
    FIGURES_BY_KIND,
    RANKING_KIND,
    RUN_COLUMNS,
    RUN_FIGURE_COLUMNS,
    figures_of_evaluation,
    figures_of_summary,
    filter_runs,
    list_runs,
    run_kind,
    run_row,
)
from testprio.report.samples import (
    SCORE_METRICS,
    THUMBNAIL_ROWS,
    ScoreColumns,
    gallery,
    probability_rows,
    random_samples,
    ranks_of,
    read_probabilities,
    read_samples,
    sample_detail,
    score_columns,
    thumbnails,
    with_sources,
)
from testprio.report.text import (
    WORD_JOINER,
    format_bytes,
    format_seconds,
    md_escape,
)

__all__ = [
    "EVALUATION_KIND",
    "FAULT_CURVE_POINTS",
    "FIGURES_BY_KIND",
    "FORMULA_STARTS",
    "GALLERY_MAX_SIDE",
    "GALLERY_MIN_SIDE",
    "POOL_HASH_KEYS",
    "RANKING_KIND",
    "RANKING_VIEW_COLUMNS",
    "RUN_COLUMNS",
    "RUN_FIGURE_COLUMNS",
    "RankingFilter",
    "RankingPage",
    "RunDetails",
    "SCORE_METRICS",
    "STATS_ROWS_WITHOUT_REPORT",
    "ScoreColumns",
    "THUMBNAIL_ROWS",
    "THUMBNAIL_SIDE",
    "TIMELINE_MAX_SHARDS",
    "WORD_JOINER",
    "attribution_rows",
    "best_by_apfd",
    "class_label",
    "class_names",
    "class_score_heatmap",
    "compare_runs",
    "csv_cell",
    "dataset_stats",
    "dataset_summary",
    "display_image",
    "encode_png",
    "evaluation_view",
    "export_zip_file",
    "fault_curve",
    "fault_curve_rows",
    "fault_curves_rows",
    "figures_of_evaluation",
    "figures_of_summary",
    "filter_runs",
    "format_bytes",
    "format_seconds",
    "gallery",
    "label_figures",
    "list_runs",
    "load_evaluation",
    "load_run",
    "md_escape",
    "model_summary",
    "per_class_accuracy",
    "per_class_means",
    "pool_identity",
    "preprocessing_text",
    "prioritizer_apfd_rows",
    "probability_rows",
    "quarantine_reasons",
    "random_samples",
    "ranking_attribution_view",
    "ranking_csv",
    "ranking_page",
    "ranking_parquet",
    "ranking_rows",
    "ranks_of",
    "read_probabilities",
    "read_samples",
    "resolve_run",
    "resolve_under_root",
    "rows_to_csv",
    "run_fault_curve",
    "run_figures",
    "run_file",
    "run_kind",
    "run_row",
    "sample_detail",
    "score_columns",
    "score_histogram",
    "shard_file",
    "stage_timeline",
    "thumbnails",
    "top_k_images_zip",
    "top_k_rows",
    "upscale",
    "with_sources",
    "write_ranking_csv",
]
