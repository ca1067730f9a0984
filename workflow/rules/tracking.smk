# Created once, before any training job: parallel first writers to a fresh SQLite file fail.
rule mlflow_init:
    output:
        f"{RESULTS}/tracking/{NAME}.json",
    params:
        name=NAME,
        results=lambda wildcards, output: Path(output[0]).parent.parent,
        config=shlex.quote(json.dumps(config)),
        uri=f"--tracking-uri {shlex.quote(config['mlflow']['tracking_uri'])}" if config["mlflow"]["tracking_uri"] else "",
    log:
        f"{RESULTS}/logs/mlflow_init.log",
    benchmark:
        f"{RESULTS}/benchmarks/mlflow_init.tsv"
    conda:
        ENV
    shell:
        "ddpm track init --experiment {params.name} --results {params.results} --config-json {params.config} {params.uri}"
        " --out {output} > {log} 2>&1"
