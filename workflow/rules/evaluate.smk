rule fid_is:
    input:
        samples=rules.gather_samples.output.samples,
        sampler=rules.gather_samples.output.sampler,
        grid=ancient(rules.sample_grid.output[0]),  # logged with the scores; a grid drawn again is no reason to score again
        manifest=rules.prepare_data.output.manifest,
        weights=extractor_weights(),
        ref_stats=REF_STATS,
        run_id=RUN_ID,
        tracking=ancient(TRACKING),
    output:
        POINT_SCORES,
    params:
        data=lambda wildcards, input: Path(input.manifest).parent,
        extractor=extractor_args(),
        ref_stats=ref_stats_args(),
        test="--test-reference" if config["evaluate"]["fid_test"] else "",
        bootstrap=BOOTSTRAP_ARGS,
        step="" if IMPORTED else f"--training-step {config['train']['steps']}",  # imported: no training
        # the point's own MLflow run (its scores and grid), and the setting's for the first point
        runs=lambda wildcards, input: f"--sampler-file {shlex.quote(input.sampler)} --grid {shlex.quote(input.grid)}"
        + (" --primary" if wildcards.sampler == PRIMARY else ""),
    threads: 1
    resources:
        gpu=1,
    log:
        f"{LOGS}/fid_is/{{setting}}-{{sampler}}.log",
    benchmark:
        f"{BENCHMARKS}/fid_is/{{setting}}-{{sampler}}.tsv"
    conda:
        ENV
    shell:
        "ddpm claim-gpus {resources.gpu} --"
        " ddpm evaluate fid --samples {input.samples:q} --data {params.data:q} --setting {wildcards.setting:q}"
        " {params.extractor} {params.ref_stats} {params.test} {params.bootstrap} {params.step} --out {output:q} --tracking {input.tracking:q}"
        " --run-id-file {input.run_id:q} {params.runs} --device auto --threads {threads} > {log:q} 2>&1"


use rule fid_is as fid_snapshot with:
    input:
        samples=rules.gather_snapshot_samples.output,
        manifest=rules.prepare_data.output.manifest,
        weights=extractor_weights(),
        ref_stats=REF_STATS,
        run_id=RUN_ID,
        tracking=ancient(TRACKING),
    output:
        f"{RUNS}/{{setting}}/snapshots/step-{{step}}/fid_is.json",
    params:
        step=lambda wildcards: f"--training-step {wildcards.step} --snapshot",
        runs="",  # the curve's points go to the setting's run
    log:
        f"{LOGS}/fid_snapshot/{{setting}}-{{step}}.log",
    benchmark:
        f"{BENCHMARKS}/fid_snapshot/{{setting}}-{{step}}.tsv"


rule nll:
    input:
        checkpoint=CHECKPOINT,
        manifest=rules.prepare_data.output.manifest,
    output:
        f"{RUNS}/{{setting}}/nll/shard-{{shard}}.npz",
    params:
        data=lambda wildcards, input: Path(input.manifest).parent,
        range=lambda wildcards: "--start {} --count {}".format(
            *shard_range(wildcards.shard, NLL_IMAGES, config["evaluate"]["nll_shard_size"])
        ),
        batch=config["evaluate"]["nll_batch_size"],
        per_pass=config["evaluate"]["nll_timesteps_per_pass"],
        seed=config["evaluate"]["seed"],
        decoder=config["evaluate"]["decoder"],
        split="test",
        speed=SPEED,
    threads: 1
    resources:
        gpu=1,
    log:
        f"{LOGS}/nll/{{setting}}-{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/nll/{{setting}}-{{shard}}.tsv"
    conda:
        ENV
    shell:
        "ddpm claim-gpus {resources.gpu} --"
        " ddpm evaluate nll --checkpoint {input.checkpoint:q} --data {params.data:q} --setting {wildcards.setting:q}"
        " {params.range} --batch-size {params.batch} --timesteps-per-pass {params.per_pass} --seed {params.seed}"
        " --decoder {params.decoder} --split {params.split}"
        " --speed {params.speed} --out {output:q} --device auto --threads {threads} > {log:q} 2>&1"


rule gather_nll:
    input:
        shards=expand(f"{RUNS}/{{{{setting}}}}/nll/shard-{{shard}}.npz", shard=NLL_SHARDS),
        run_id=RUN_ID,
        tracking=ancient(TRACKING),
    output:
        f"{RUNS}/{{setting}}/nll.json",
    params:
        split="test",
    log:
        f"{LOGS}/gather_nll/{{setting}}.log",
    benchmark:
        f"{BENCHMARKS}/gather_nll/{{setting}}.tsv"
    conda:
        ENV
    shell:
        "ddpm evaluate nll-gather --shards {input.shards:q} --setting {wildcards.setting:q} --split {params.split}"
        " --out {output:q} --tracking {input.tracking:q} --run-id-file {input.run_id:q} > {log:q} 2>&1"


# DDPM Table 1 also gives the bound on the train set: the same jobs on the first evaluate.nll_train_images images.
use rule nll as nll_train with:
    output:
        f"{RUNS}/{{setting}}/nll-train/shard-{{shard}}.npz",
    params:
        range=lambda wildcards: "--start {} --count {}".format(
            *shard_range(wildcards.shard, NLL_TRAIN_IMAGES, config["evaluate"]["nll_shard_size"])
        ),
        split="train",
    log:
        f"{LOGS}/nll_train/{{setting}}-{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/nll_train/{{setting}}-{{shard}}.tsv"


use rule gather_nll as gather_nll_train with:
    input:
        shards=expand(f"{RUNS}/{{{{setting}}}}/nll-train/shard-{{shard}}.npz", shard=NLL_TRAIN_SHARDS),
        run_id=RUN_ID,
        tracking=ancient(TRACKING),
    output:
        f"{RUNS}/{{setting}}/nll-train.json",
    params:
        split="train",
    log:
        f"{LOGS}/gather_nll_train/{{setting}}.log",
    benchmark:
        f"{BENCHMARKS}/gather_nll_train/{{setting}}.tsv"


# The reference rows every setting is measured against, scored by the same code and extractor: held-out real
# images (the test split), and samples from a Gaussian fitted to the training pixels (mean, full covariance).
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
        bootstrap=BOOTSTRAP_ARGS,
        reference=REF_IMAGES_ARGS,
        n=NUM_SAMPLES,
        seed=config["sample"]["seed"],
    threads: 1
    log:
        f"{LOGS}/baseline/{{kind}}.log",
    benchmark:
        f"{BENCHMARKS}/baseline/{{kind}}.tsv"
    conda:
        ENV
    shell:
        "ddpm evaluate baseline --kind {wildcards.kind} --data {params.data:q} {params.extractor}"
        " --num-samples {params.n} --seed {params.seed} {params.reference} {params.bootstrap} --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"
