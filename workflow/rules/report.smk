rule report:
    input:
        fid=expand(f"{RUNS}/{{setting}}/fid_is.json", setting=SETTINGS),
        nll=expand(f"{RUNS}/{{setting}}/nll.json", setting=SETTINGS),
        metrics=expand(f"{RUNS}/{{setting}}/metrics.jsonl", setting=SETTINGS),
        baselines=expand(f"{RESULTS}/baselines/{NAME}/{{kind}}.json", kind=["gaussian", "test_split"]),
        tracking=rules.mlflow_init.output,
        published=PUBLISHED,
    output:
        tables=multiext(f"{RESULTS}/tables/{NAME}", ".csv", ".md", ".tex"),
        paper=report(f"{RESULTS}/tables/{NAME}-paper.csv", category="Tables", caption="../report/paper_table.rst"),
        paper_text=multiext(f"{RESULTS}/tables/{NAME}-paper", ".md", ".tex"),
        rate_distortion=report(f"{RESULTS}/tables/{NAME}-rate-distortion.csv", category="Tables",
                               caption="../report/rate_distortion.rst"),
        rate_distortion_text=multiext(f"{RESULTS}/tables/{NAME}-rate-distortion", ".md", ".tex"),
        loss=report(f"{RESULTS}/figures/{NAME}-loss.png", category="Training", caption="../report/loss.rst"),
        rate_distortion_figure=report(f"{RESULTS}/figures/{NAME}-rate-distortion.png", category="Paper figures",
                                      caption="../report/rate_distortion.rst"),
        schedules_figure=report(f"{RESULTS}/figures/{NAME}-schedules.png", category="Paper figures",
                                caption="../report/schedules.rst"),
    params:
        stem=lambda wildcards, output: Path(output.tables[0]).with_suffix(""),
        runs=" ".join(f"{RUNS}/{s}" for s in SETTINGS),
        paper_sweep=config["paper_sweep"],
        scaled="--scaled-down" if config["scale"] == "tiny" else "",
        rescale=str(config["train"]["schedule_rescale"]).lower(),
    log:
        f"{RESULTS}/logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report.tsv"
    conda:
        ENV
    shell:
        "ddpm report --runs {params.runs} --gaussian {input.baselines[0]} --test-split {input.baselines[1]}"
        " --out-stem {params.stem} --loss-figure {output.loss} --published {input.published}"
        " --rate-distortion-figure {output.rate_distortion_figure} --schedules-figure {output.schedules_figure}"
        " --schedule-rescale {params.rescale}"
        " --paper-sweep {params.paper_sweep} {params.scaled} --tracking {input.tracking} > {log} 2>&1"
