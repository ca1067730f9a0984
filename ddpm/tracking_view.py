"""The saved view of the MLflow UI that an experiment of this project opens on: its runs table (the sampler points'
runs grouped by sampler, sorted by FID; the point, the scores and the setting's axes as columns) and its charts (FID and
IS against S, one line per sampler), kept in experiment tags with the experiment's kind and a description that links
the view.

This module says what the tags are (:func:`view_tags`) and where the view is (:func:`view_url`);
:func:`ddpm.tracking.set_experiment_view` stores them when a sweep starts (:func:`ddpm.tracking.init_sweep`).
"""

from __future__ import annotations

import json
import time

#: The experiment's kind for MLflow 3's UI: model training, not a GenAI app. MLflow 3.17.2's UI reads it only when its
#: GenAI / "Model training" switch is off; with the switch (the default) the browser's choice decides (:func:`view_url`).
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")
#: The key of the experiment's saved view (MLflow's saved / shared views of the runs page, kept as the experiment tag
#: ``mlflow.sharedViewState.<key>``, listed under the experiment's "Views" by :data:`VIEW_NAME` and opened by
#: ``#/experiments/<id>/runs?viewStateShareKey=<key>``).
VIEW_KEY = "ddpm-metrics"
VIEW_NAME = "FID against S, by sampler"
#: The metrics the view shows as columns, in order, and the one it sorts by (ascending: lower is better).
VIEW_METRICS = ("fid", "fid_se", "is_mean", "kid_mean", "bpd", "fid_test", "bpd_train", "network_evaluations",
                "sampling_images_per_s")
#: A sampler point's params the view shows as columns (:func:`ddpm.tracking.sampler_params`), before the setting's axes.
VIEW_POINT_PARAMS = ("sampler", "S", "eta", "variance", "skip", "clip")
#: The param the view groups the sampler points' runs by: one group, and one line of FID against S, per sampler.
VIEW_GROUP_PARAM = "sampler_curve"
#: The runs table's run-name column (MLflow's column id) and its width in pixels: wide enough for a point's name and
#: the start of its setting's (the UI's own 190 px cuts them to the same prefix).
RUN_NAME_COLUMN = "attributes.`Run Name`"
RUN_NAME_WIDTH = 360


def view_url(experiment_id: str) -> str:
    """The address of the experiment's metrics view, after the UI's own (``http://127.0.0.1:5000/``): MLflow 3's
    "Model training" side of the UI (its ``workflowType``; the UI opens on its GenAI side otherwise, a choice each
    browser keeps), the experiment's runs, the shared view :data:`VIEW_KEY`."""
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"


def experiment_view() -> dict:
    """The runs view an experiment of this project opens on (MLflow's shared view state, the JSON its UI writes when
    a view is shared; the keys MLflow 3.17.2's UI reads, ``EXPERIMENT_PAGE_UI_STATE_FIELDS`` and the search facets).

    The table: the sampler points' runs grouped by sampler (:data:`VIEW_GROUP_PARAM`; a group shows its runs'
    average), the sweep's and settings' runs below them ("Additional runs", unfolded: bits/dim is theirs); the
    columns the point (sampler, S, η, variance, skip, clip), FID (± its bootstrap error), IS, KID, bits/dim and what
    sampling cost, then the setting's axes; sorted by FID; a run-name column wide enough to tell the runs apart. The
    charts: FID and IS against S, one line per sampler (a point's scores are logged at step S, and a group's line
    joins its runs' averages at each S). With runs grouped, the UI charts groups only: bits/dim per setting is in the
    table."""
    from .settings import SWEEP_AXES

    section = "ddpm-fid-against-S"
    columns = ([f"params.`{p}`" for p in VIEW_POINT_PARAMS] + [f"metrics.`{m}`" for m in VIEW_METRICS]
               + [f"params.`{a}`" for a in SWEEP_AXES])

    def chart(uuid: str, kind: str, **config) -> dict:
        return {"uuid": uuid, "type": kind, "runsCountToCompare": 100, "metricSectionId": section, "deleted": False,
                "isGenerated": False, **config}

    def against_S(metric: str) -> dict:
        return chart(f"ddpm-{metric}-S", "LINE", metricKey=metric, selectedMetricKeys=[metric], xAxisKey="step",
                     useGlobalXaxisKey=False, lineSmoothness=0, useGlobalLineSmoothing=False, displayPoints=True,
                     scaleType="linear", xAxisScaleType="linear")

    return {
        "orderByKey": "metrics.`fid`", "orderByAsc": True,
        "selectedColumns": columns,
        "columnOrder": [RUN_NAME_COLUMN, *columns],  # the point's params first, before MLflow's metrics-then-params
        "columnWidths": {RUN_NAME_COLUMN: RUN_NAME_WIDTH},
        "groupBy": {"aggregateFunction": "average",
                    "groupByKeys": [{"mode": "param", "groupByData": VIEW_GROUP_PARAM}]},
        "groupsExpanded": {f"param.{VIEW_GROUP_PARAM}": True},  # the runs without the param: the UI folds them
        "useGroupedValuesInCharts": True,  # a line per group
        "compareRunCharts": [against_S("fid"), against_S("is_mean")],
        "compareRunSections": [{"uuid": section, "name": "FID and IS against S, one line per sampler",
                                "display": True, "isReordered": False, "deleted": False, "isGenerated": False}],
        "isAccordionReordered": True,
        "runsHiddenMode": "SHOW_ALL",  # MLflow hides all but the first 10 runs from the charts otherwise
    }


def view_tags(experiment_id: str, existing: dict) -> dict[str, str]:
    """The experiment tags to set, given the experiment's ``existing`` ones: the view :func:`experiment_view` under
    :data:`VIEW_KEY` (replacing this project's earlier one), and, where the experiment has none yet, its kind
    (:data:`EXPERIMENT_KIND_TAG`) and a description that links the view (a description or kind a user set is kept)."""
    now = int(time.time() * 1000)
    # MLflow 3's saved-view envelope: the view's name, its times and the state as a JSON string; its "Views" tab lists
    # it by name, and the share link opens it.
    view = {"name": VIEW_NAME, "createdAt": now, "updatedAt": now,
            "state": json.dumps(experiment_view(), separators=(",", ":"))}
    tags = {EXPERIMENT_KIND_TAG[0]: EXPERIMENT_KIND_TAG[1],
            f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(view, separators=(",", ":")),
            "mlflow.note.content": (
                "Runs of this project's sweeps: one parent run per sweep, one child run per setting, one run per "
                "sampler point under it. A score lives on one run: a setting's run holds its training curves, "
                "bits/dim, FID over training and the reconstruction error; a sampler point's run its FID, IS, KID "
                "and what sampling cost (at step S), with the setting's axes and the point (sampler, S, η, skip, "
                "variance, clip) as params. [The metrics view](" + view_url(experiment_id) + "): the points grouped "
                "by sampler, sorted by FID, and FID against S, one line per sampler, in its charts.")}
    return {key: value for key, value in tags.items()
            if key.startswith("mlflow.sharedViewState.") or key not in existing}
