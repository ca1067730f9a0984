rule fid_is:
    input:
        samples=rules.gather_samples.output.samples,
        manifest=rules.prepare_data.output.manifest,
        weights=extractor_weights(),
        run_id=rules.train.output.run_id,
        tracking=rules.mlflow_init.output,
    output:
        f"{RUNS}/{{setting}}/fid_is.json",
    params:
        data=lambda wildcards, input: Path(input.manifest).parent,
        extractor=extractor_args(),
        test="--test-reference" if config["evaluate"]["fid_test"] else "",
    threads: 1
    resources:
        gpu=1,
    log:
        f"{RESULTS}/logs/fid_is/{{setting}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fid_is/{{setting}}.tsv"
    conda:
        ENV
    shell:
        "ddpm evaluate fid --samples {input.samples} --data {params.data} {params.extractor} {params.test} --out {output}"
        " --tracking {input.tracking} --run-id-file {input.run_id} --device auto --threads {threads} > {log} 2>&1"


rule nll:
    input:
        checkpoint=rules.train.output.checkpoint,
        manifest=rules.prepare_data.output.manifest,
    output:
        f"{RUNS}/{{setting}}/nll/shard-{{shard}}.npz",
    params:
        data=lambda wildcards, input: Path(input.manifest).parent,
        range=lambda wildcards: "--start {} --count {}".format(
            *shard_range(wildcards.shard, NLL_IMAGES, config["evaluate"]["nll_shard_size"])
        ),
        batch=config["evaluate"]["nll_batch_size"],
        seed=config["evaluate"]["seed"],
    threads: 1
    resources:
        gpu=1,
    log:
        f"{RESULTS}/logs/nll/{{setting}}-{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/nll/{{setting}}-{{shard}}.tsv"
    conda:
        ENV
    shell:
        "ddpm evaluate nll --checkpoint {input.checkpoint} --data {params.data} {params.range} --batch-size {params.batch}"
        " --seed {params.seed} --out {output} --device auto --threads {threads} > {log} 2>&1"


rule gather_nll:
    input:
        shards=expand(f"{RUNS}/{{{{setting}}}}/nll/shard-{{shard}}.npz", shard=NLL_SHARDS),
        run_id=rules.train.output.run_id,
        tracking=rules.mlflow_init.output,
    output:
        f"{RUNS}/{{setting}}/nll.json",
    log:
        f"{RESULTS}/logs/gather_nll/{{setting}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/gather_nll/{{setting}}.tsv"
    conda:
        ENV
    shell:
        "ddpm evaluate nll-gather --shards {input.shards} --out {output}"
        " --tracking {input.tracking} --run-id-file {input.run_id} > {log} 2>&1"


# The floor and the bar every setting is measured against, scored by the same code and extractor:
# the test split itself, and samples from a Gaussian fitted to the training pixels (mean, full covariance).
rule baseline:
    input:
        manifest=rules.prepare_data.output.manifest,
        weights=extractor_weights(),
    output:
        f"{RESULTS}/baselines/{NAME}/{{kind}}.json",
    wildcard_constraints:
        kind="gaussian|test_split",
    params:
        data=lambda wildcards, input: Path(input.manifest).parent,
        extractor=extractor_args(),
        n=NUM_SAMPLES,
        seed=config["sample"]["seed"],
    threads: 1
    log:
        f"{RESULTS}/logs/baseline/{{kind}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/baseline/{{kind}}.tsv"
    conda:
        ENV
    shell:
        "ddpm evaluate baseline --kind {wildcards.kind} --data {params.data} {params.extractor} --num-samples {params.n}"
        " --seed {params.seed} --out {output} --threads {threads} > {log} 2>&1"
