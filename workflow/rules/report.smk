rule report:
    input:
        fid=expand(POINT_SCORES, setting=SETTINGS, sampler=SAMPLER_POINTS),
        nll=expand(f"{RUNS}/{{setting}}/nll.json", setting=SETTINGS),
        metrics=expand(f"{RUNS}/{{setting}}/metrics.jsonl", setting=SETTINGS),
        settings=expand(f"{RUNS}/{{setting}}/setting.json", setting=SETTINGS),  # the axes the tables show
        nll_train=expand(f"{RUNS}/{{setting}}/nll-train.json", setting=SETTINGS if NLL_TRAIN_IMAGES else []),
        snapshots=expand(f"{RUNS}/{{setting}}/snapshots/step-{{step}}/fid_is.json", setting=SETTINGS, step=SNAPSHOT_STEPS),
        reconstruction=expand(f"{RUNS}/{{setting}}/reconstruction/S{{S}}.json", setting=SETTINGS, S=RECONSTRUCTION_STEPS),
        gaussian=f"{RESULTS}/baselines/{NAME}/gaussian.json",
        test_split=f"{RESULTS}/baselines/{NAME}/test_split.json",
        tracking=ancient(TRACKING),
        published=PUBLISHED,
    output:
        # Every table (CSV, Markdown, LaTeX and an HTML page for the report) and figure of ddpm.report.OUTPUTS.
        **report_outputs(),
    params:
        # where ddpm report writes: the main table's stem and the figures' folder, read off the outputs
        stem=lambda wildcards, output: Path(output.table_main[0]).with_suffix(""),
        figures=lambda wildcards, output: Path(output.figure_loss).parent,
        runs=[f"{RUNS}/{s}" for s in SETTINGS],
        # The sweep's resolved config: what the report reads of it (sampler points, snapshot and reconstruction steps,
        # paper_sweep, scale…), also stored with its MLflow parent run: every change of the config reruns this
        # (quick) job only, never a training.
        config=json.dumps(config, sort_keys=True),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCHMARKS}/report.tsv"
    conda:
        ENV
    shell:
        "ddpm report --runs {params.runs:q} --gaussian {input.gaussian:q} --test-split {input.test_split:q}"
        " --out-stem {params.stem:q} --figures {params.figures:q} --published {input.published:q}"
        " --tracking {input.tracking:q} --config-json {params.config:q} > {log:q} 2>&1"
