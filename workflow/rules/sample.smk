# Every setting is sampled at every point of the sampling axis (SAMPLING), each point in its own folder.
POINT = f"{RUNS}/{{setting}}/samplers/{{sampler}}"
POINT_SCORES = f"{POINT}/fid_is.json"  # written by rule fid_is; the grid's job looks for it


rule sample:
    input:
        checkpoint=CHECKPOINT,
        manifest=rules.prepare_data.output.manifest,
    output:
        f"{POINT}/samples/shard-{{shard}}.npz",
    params:
        data=lambda wildcards, input: Path(input.manifest).parent,
        range=lambda wildcards: "--start {} --count {}".format(
            *shard_range(wildcards.shard, NUM_SAMPLES, config["sample"]["shard_size"])
        ),
        sampler=lambda wildcards: sampler_args(wildcards.get("sampler", PRIMARY)),
        batch=config["sample"]["batch_size"],
        seed=config["sample"]["seed"],
        speed=SPEED,
    threads: 1
    resources:
        gpu=1,
    log:
        f"{LOGS}/sample/{{setting}}-{{sampler}}-{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/sample/{{setting}}-{{sampler}}-{{shard}}.tsv"
    conda:
        ENV
    shell:
        "ddpm claim-gpus {resources.gpu} --"
        " ddpm sample --checkpoint {input.checkpoint:q} --data {params.data:q} --setting {wildcards.setting:q}"
        " --out {output:q} {params.range} --batch-size {params.batch} --seed {params.seed} {params.sampler}"
        " --speed {params.speed} --device auto --threads {threads} > {log:q} 2>&1"


rule gather_samples:
    input:
        shards=expand(f"{RUNS}/{{{{setting}}}}/samplers/{{{{sampler}}}}/samples/shard-{{shard}}.npz", shard=SAMPLE_SHARDS),
    output:
        samples=f"{POINT}/samples.npz",
        sampler=f"{POINT}/sampler.json",
    params:
        sampler=lambda wildcards: sampler_args(wildcards.sampler),
    log:
        f"{LOGS}/gather_samples/{{setting}}-{{sampler}}.log",
    benchmark:
        f"{BENCHMARKS}/gather_samples/{{setting}}-{{sampler}}.tsv"
    conda:
        ENV
    shell:
        "ddpm gather-samples --shards {input.shards:q} --setting {wildcards.setting:q} --out {output.samples:q}"
        " --sampler-out {output.sampler:q} {params.sampler} > {log:q} 2>&1"


# The grid is a job of its own: a change of sample.grid_size redraws it, and scores nothing again.
# Where the point's MLflow run exists (its FID job made it), the new grid replaces the one it holds.
rule sample_grid:
    input:
        samples=rules.gather_samples.output.samples,
        sampler=rules.gather_samples.output.sampler,
        run_id=RUN_ID,
        tracking=ancient(TRACKING),
    output:
        report(f"{POINT}/samples.png", category="Samples", subcategory="{sampler}", caption="../report/samples.rst"),
    params:
        grid_size=config["sample"]["grid_size"],
        # not an input (the FID job comes after the grid): until it exists, MLflow is not opened
        scores=lambda wildcards: POINT_SCORES.format(setting=wildcards.setting, sampler=wildcards.sampler),
    log:
        f"{LOGS}/sample_grid/{{setting}}-{{sampler}}.log",
    benchmark:
        f"{BENCHMARKS}/sample_grid/{{setting}}-{{sampler}}.tsv"
    conda:
        ENV
    shell:
        "ddpm grid --samples {input.samples:q} --out {output:q} --grid-size {params.grid_size}"
        " --sampler-file {input.sampler:q} --scores {params.scores:q} --tracking {input.tracking:q}"
        " --run-id-file {input.run_id:q} > {log:q} 2>&1"


# FID over training: the same sampling, from the EMA weights kept at each of fid_over_training.steps.
# (`use rule … with:` replaces input and output whole, but keeps the params it does not name.)
use rule sample as sample_snapshot with:
    input:
        checkpoint=f"{RUNS}/{{setting}}/snapshots/step-{{step}}.pt",
        manifest=rules.prepare_data.output.manifest,
    output:
        f"{RUNS}/{{setting}}/snapshots/step-{{step}}/samples/shard-{{shard}}.npz",
    params:
        range=lambda wildcards: "--start {} --count {}".format(
            *shard_range(wildcards.shard, SNAPSHOT_SAMPLES, config["sample"]["shard_size"])
        ),
    log:
        f"{LOGS}/sample_snapshot/{{setting}}-{{step}}-{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/sample_snapshot/{{setting}}-{{step}}-{{shard}}.tsv"


rule gather_snapshot_samples:
    input:
        expand(f"{RUNS}/{{{{setting}}}}/snapshots/step-{{{{step}}}}/samples/shard-{{shard}}.npz", shard=SNAPSHOT_SHARDS),
    output:
        f"{RUNS}/{{setting}}/snapshots/step-{{step}}/samples.npz",
    log:
        f"{LOGS}/gather_snapshot_samples/{{setting}}-{{step}}.log",
    benchmark:
        f"{BENCHMARKS}/gather_snapshot_samples/{{setting}}-{{step}}.tsv"
    conda:
        ENV
    shell:
        "ddpm gather-samples --shards {input:q} --setting {wildcards.setting:q} --out {output:q} > {log:q} 2>&1"


# DDPM Figure 6: what the model predicts for x_0 along the reverse process, for the first samples of the set.
rule progressive:
    input:
        checkpoint=CHECKPOINT,
        manifest=rules.prepare_data.output.manifest,
    output:
        report(f"{RUNS}/{{setting}}/progressive.png", category="Paper figures", subcategory="Progressive generation",
               caption="../report/progressive.rst"),
    params:
        data=lambda wildcards, input: Path(input.manifest).parent,
        sampler=sampler_args(PRIMARY),
        seed=config["sample"]["seed"],
    threads: 1
    resources:
        gpu=1,
    log:
        f"{LOGS}/progressive/{{setting}}.log",
    benchmark:
        f"{BENCHMARKS}/progressive/{{setting}}.tsv"
    conda:
        ENV
    shell:
        "ddpm claim-gpus {resources.gpu} --"
        " ddpm progressive --checkpoint {input.checkpoint:q} --data {params.data:q} --setting {wildcards.setting:q}"
        " --out {output:q} --seed {params.seed} {params.sampler} --device auto --threads {threads} > {log:q} 2>&1"


# DDPM Figure 8: two test images encoded to x_t (t = T/2), interpolated, and decoded by the reverse process.
rule interpolate:
    input:
        checkpoint=CHECKPOINT,
        manifest=rules.prepare_data.output.manifest,
    output:
        report(f"{RUNS}/{{setting}}/interpolation.png", category="Paper figures", subcategory="Interpolation",
               caption="../report/interpolation.rst"),
    params:
        data=lambda wildcards, input: Path(input.manifest).parent,
        sampler=sampler_args(PRIMARY),
        seed=config["sample"]["seed"],
    threads: 1
    resources:
        gpu=1,
    log:
        f"{LOGS}/interpolate/{{setting}}.log",
    benchmark:
        f"{BENCHMARKS}/interpolate/{{setting}}.tsv"
    conda:
        ENV
    shell:
        "ddpm claim-gpus {resources.gpu} --"
        " ddpm interpolate --checkpoint {input.checkpoint:q} --data {params.data:q} --setting {wildcards.setting:q}"
        " --out {output:q} --seed {params.seed} {params.sampler} --device auto --threads {threads} > {log:q} 2>&1"
