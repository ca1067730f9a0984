rule report:
    input:
        fid=expand(f"{RUNS}/{{setting}}/samplers/{{sampler}}/fid_is.json", setting=SETTINGS, sampler=SAMPLER_POINTS),
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
        tables=multiext(f"{RESULTS}/tables/{NAME}", ".csv", ".md", ".tex"),
        paper=multiext(f"{RESULTS}/tables/{NAME}-paper", ".csv", ".md", ".tex"),
        rate_distortion=multiext(f"{RESULTS}/tables/{NAME}-rate-distortion", ".csv", ".md", ".tex"),
        # Every table as an HTML page for the report, numbered so that the report lists the main table first (it
        # sorts a category's files by name); the order is ddpm.report.TABLE_KINDS'.
        main_html=report(f"{RESULTS}/tables/html/1-{NAME}.html", category="Tables", caption="../report/main_table.rst"),
        paper_html=report(f"{RESULTS}/tables/html/2-{NAME}-paper.html", category="Tables",
                          caption="../report/paper_table.rst"),
        samplers_html=report(f"{RESULTS}/tables/html/3-{NAME}-samplers.html", category="Tables",
                             caption="../report/samplers.rst"),
        fid_curve_html=report(f"{RESULTS}/tables/html/4-{NAME}-fid-over-training.html", category="Tables",
                              caption="../report/fid_over_training.rst"),
        rate_distortion_html=report(f"{RESULTS}/tables/html/5-{NAME}-rate-distortion.html", category="Tables",
                                    caption="../report/rate_distortion.rst"),
        reconstruction_html=report(f"{RESULTS}/tables/html/6-{NAME}-reconstruction.html", category="Tables",
                                   caption="../report/reconstruction.rst"),
        reconstruction=multiext(f"{RESULTS}/tables/{NAME}-reconstruction", ".csv", ".md", ".tex"),
        loss=report(f"{RESULTS}/figures/{NAME}-loss.png", category="Training", caption="../report/loss.rst"),
        rate_distortion_figure=report(f"{RESULTS}/figures/{NAME}-rate-distortion.png", category="Paper figures",
                                      caption="../report/rate_distortion.rst"),
        schedules_figure=report(f"{RESULTS}/figures/{NAME}-schedules.png", category="Paper figures",
                                caption="../report/schedules.rst"),
        fid_curve=multiext(f"{RESULTS}/tables/{NAME}-fid-over-training", ".csv", ".md", ".tex"),
        fid_curve_figure=report(f"{RESULTS}/figures/{NAME}-fid-over-training.png", category="Paper figures",
                                caption="../report/fid_over_training.rst"),
        samplers=multiext(f"{RESULTS}/tables/{NAME}-samplers", ".csv", ".md", ".tex"),
        samplers_figure=report(f"{RESULTS}/figures/{NAME}-samplers.png", category="Paper figures",
                               caption="../report/samplers.rst"),
    params:
        stem=lambda wildcards, output: Path(output.tables[0]).with_suffix(""),
        runs=[f"{RUNS}/{s}" for s in SETTINGS],
        # The sweep's resolved config, stored with its MLflow parent run: every change of the config reruns this
        # (quick) job only, never a training.
        config=json.dumps(config, sort_keys=True),
        paper_sweep=config["paper_sweep"],
        scaled="--scaled-down" if config["scale"] == "tiny" else "",
        rescale=str(config["train"]["schedule_rescale"]).lower(),
        snapshot_steps=" ".join(map(str, SNAPSHOT_STEPS)),
        nll_train="--nll-train" if NLL_TRAIN_IMAGES else "",
        samplers=" ".join(SAMPLER_POINTS),
        reconstruction_steps=" ".join(map(str, RECONSTRUCTION_STEPS)),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCHMARKS}/report.tsv"
    conda:
        ENV
    shell:
        "ddpm report --runs {params.runs:q} --gaussian {input.gaussian:q} --test-split {input.test_split:q}"
        " --out-stem {params.stem:q} --loss-figure {output.loss:q} --published {input.published:q}"
        " --rate-distortion-figure {output.rate_distortion_figure:q} --schedules-figure {output.schedules_figure:q}"
        " --schedule-rescale {params.rescale} --fid-over-training-figure {output.fid_curve_figure:q}"
        " --snapshot-steps {params.snapshot_steps} {params.nll_train} --paper-sweep {params.paper_sweep}"
        " --samplers {params.samplers} --samplers-figure {output.samplers_figure:q}"
        " --html-tables {output.main_html:q} {output.paper_html:q} {output.samplers_html:q} {output.fid_curve_html:q}"
        " {output.rate_distortion_html:q} {output.reconstruction_html:q}"
        " --reconstruction-steps {params.reconstruction_steps}"
        " {params.scaled} --tracking {input.tracking:q} --config-json {params.config:q} > {log:q} 2>&1"
