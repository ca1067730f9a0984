# Each setting's model: trained here, or (pretrained.source) imported from published weights; the jobs after it read
# the same files either way.
if not IMPORTED:

    rule train:
        input:
            manifest=rules.prepare_data.output.manifest,
            tracking=ancient(TRACKING),
        output:
            checkpoint=CHECKPOINT,
            run_id=RUN_ID,
            metrics=f"{RUNS}/{{setting}}/metrics.jsonl",
            setting=f"{RUNS}/{{setting}}/setting.json",
            snapshots=expand(f"{RUNS}/{{{{setting}}}}/snapshots/step-{{step}}.pt", step=SNAPSHOT_STEPS),
        params:
            out=lambda wildcards, output: Path(output.checkpoint).parent,
            data=lambda wildcards, input: Path(input.manifest).parent,
            args=lambda wildcards: train_flags(config, SWEEP[wildcards.setting]),
            # A function of the job's output: Snakemake then leaves it out of the params whose change reruns the job
            # (its "derived" params); how often a training logs and saves changes none of its weights.
            cadence=lambda wildcards, output: train_flags(config, SWEEP[wildcards.setting], cadence=True),
            on_divergence=config["train"]["on_divergence"],
            snapshot_steps=" ".join(map(str, SNAPSHOT_STEPS)),
            speed=SPEED,
            launcher=train_launcher(config["train"]),
            tries_log=lambda wildcards: f"{LOGS}/train/{wildcards.setting}.tries.log",
        threads: config["train"]["threads"]
        # A killed or preempted job (exit 75 after SIGTERM / SIGUSR1) resumes from resume.pt when run again. Snakemake
        # deletes a job's log before each try: every try's output is also appended to <setting>.tries.log, which is
        # not a declared file, so the errors of earlier tries are kept (pipefail keeps ddpm's exit status). tee ignores
        # SIGTERM and SIGUSR1: a preemption signals every process of the job, and a tee that died first would break the
        # pipe under the training while it saves its state.
        retries: config["train"]["retries"]
        resources:
            **train_resources(config["train"]),
        log:
            f"{LOGS}/train/{{setting}}.log",
        benchmark:
            f"{BENCHMARKS}/train/{{setting}}.tsv"
        conda:
            ENV
        shell:
            "{params.launcher} train --out {params.out:q} --data {params.data:q} --tracking {input.tracking:q}"
            " --run-name {wildcards.setting:q} --on-divergence {params.on_divergence}"
            " --snapshot-steps {params.snapshot_steps} --speed {params.speed} --device auto --threads {threads}"
            " {params.args} {params.cadence} 2>&1 | (trap '' TERM USR1; exec tee -a {params.tries_log:q}) > {log:q}"

else:

    rule import_pretrained:
        input:
            manifest=rules.prepare_data.output.manifest,
            tracking=ancient(TRACKING),
        output:
            checkpoint=CHECKPOINT,
            run_id=RUN_ID,
            metrics=f"{RUNS}/{{setting}}/metrics.jsonl",
            setting=f"{RUNS}/{{setting}}/setting.json",
        params:
            source=import_source,
            data=lambda wildcards, input: Path(input.manifest).parent,
            options=import_arguments,
        log:
            f"{LOGS}/import/{{setting}}.log",
        benchmark:
            f"{BENCHMARKS}/import/{{setting}}.tsv"
        conda:
            ENV
        shell:
            "ddpm import {params.source:q} --out {output.checkpoint:q} --data {params.data:q}"
            " --tracking {input.tracking:q} --run-name {wildcards.setting:q} {params.options} > {log:q} 2>&1"
