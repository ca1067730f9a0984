# DDIM Table 2 (§5.4): the test images encoded to x_T by DDIM's deterministic process (η = 0) and decoded back on S
# steps each way; one job per setting and S of reconstruction.steps (none when it is empty), read by the report.
rule reconstruction:
    input:
        checkpoint=CHECKPOINT,
        manifest=rules.prepare_data.output.manifest,
        run_id=RUN_ID,
        tracking=ancient(TRACKING),
    output:
        f"{RUNS}/{{setting}}/reconstruction/S{{S}}.json",
    wildcard_constraints:
        S=r"\d+",
    params:
        data=lambda wildcards, input: Path(input.manifest).parent,
        skip=RECONSTRUCTION["skip"],
        images=RECONSTRUCTION_IMAGES,
        batch=RECONSTRUCTION["batch_size"],
        speed=SPEED,
    threads: 1
    resources:
        gpu=1,
    log:
        f"{LOGS}/reconstruction/{{setting}}-S{{S}}.log",
    benchmark:
        f"{BENCHMARKS}/reconstruction/{{setting}}-S{{S}}.tsv"
    conda:
        ENV
    shell:
        "ddpm claim-gpus {resources.gpu} --"
        " ddpm evaluate reconstruction --checkpoint {input.checkpoint:q} --data {params.data:q}"
        " --setting {wildcards.setting:q} --steps {wildcards.S} --skip {params.skip} --count {params.images}"
        " --batch-size {params.batch} --speed {params.speed} --out {output:q} --tracking {input.tracking:q}"
        " --run-id-file {input.run_id:q} --device auto --threads {threads} > {log:q} 2>&1"
