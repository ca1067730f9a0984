# Created once, before any training job: parallel first writers to a fresh SQLite file fail. Every job that logs to
# MLflow takes this file as an ancient() input: it says where to log, and rewriting it (it never changes for a sweep)
# must not rerun a finished setting. Run again, it finds the sweep's parent run and reuses it. For the default store it
# names the results folder relative to itself, not the store's absolute path: a copied or moved project logs to its own
# store and artifacts (ddpm.tracking.write_tracking); a store the config or MLFLOW_TRACKING_URI gives is kept as given.
rule mlflow_init:
    output:
        TRACKING,
    params:
        name=NAME,
        results=lambda wildcards, output: Path(output[0]).parent.parent,
        uri=f"--tracking-uri {shlex.quote(config['mlflow']['tracking_uri'])}" if config["mlflow"]["tracking_uri"] else "",
    log:
        f"{LOGS}/mlflow_init.log",
    benchmark:
        f"{BENCHMARKS}/mlflow_init.tsv"
    conda:
        ENV
    shell:
        "ddpm track init --experiment {params.name} --results {params.results:q} {params.uri} --out {output:q} > {log:q} 2>&1"
