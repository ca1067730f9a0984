rule prepare_data:
    output:
        manifest=f"{DATA}/manifest.json",
        arrays=multiext(f"{DATA}/", "train_images.npy", "test_images.npy", "train_labels.npy", "test_labels.npy"),
    params:
        data=lambda wildcards, output: Path(output.manifest).parent,
        args=" ".join(
            [f"--dataset {DATASET}", f"--test-fraction {config['dataset']['test_fraction']}"]
            + ([f"--path {shlex.quote(config['dataset']['path'])}"] if config["dataset"]["path"] else [])
            + ([f"--image-size {config['dataset']['image_size']}"] if config["dataset"]["image_size"] else [])
            + (["--download"] if config["dataset"]["download"] else [])
            + ([f"--preprocess {config['dataset']['preprocess']}"] if DATASET == "imagefolder" else [])
        ),
    # An image folder is decoded by this many processes (Snakemake gives at most --cores). A killed preparation
    # resumes from prepare-partial/ beside the outputs, which Snakemake does not delete.
    threads: 8
    log:
        f"{DATA_LOGS}/prepare_data.log",
    benchmark:
        f"{DATA_BENCHMARKS}/prepare_data.tsv"
    conda:
        ENV
    shell:
        "ddpm prepare --out {params.data:q} {params.args} --workers {threads} > {log:q} 2>&1"


rule train_classifier:
    input:
        manifest=rules.prepare_data.output.manifest,
    output:
        f"{DATA}/classifier.pt",
    params:
        data=lambda wildcards, input: Path(input.manifest).parent,
        steps=config["evaluate"]["classifier_steps"],
    threads: 1
    log:
        f"{DATA_LOGS}/train_classifier.log",
    benchmark:
        f"{DATA_BENCHMARKS}/train_classifier.tsv"
    conda:
        ENV
    shell:
        "ddpm classifier --data {params.data:q} --out {output:q} --steps {params.steps} --threads {threads} > {log:q} 2>&1"


rule ref_stats:
    input:
        manifest=rules.prepare_data.output.manifest,
        weights=extractor_weights(),
    output:
        stats=f"{DATA}/ref-stats/{{extractor}}-train{REF_STATS_SUFFIX}.npz",
        record=f"{DATA}/ref-stats/{{extractor}}-train{REF_STATS_SUFFIX}.json",
    params:
        data=lambda wildcards, input: Path(input.manifest).parent,
        extractor=extractor_args(),
        first="" if REF_IMAGES is None else f"--num-images {REF_IMAGES}",
    threads: 1
    resources:
        gpu=1,
    log:
        f"{DATA_LOGS}/ref_stats/{{extractor}}-train{REF_STATS_SUFFIX}.log",
    benchmark:
        f"{DATA_BENCHMARKS}/ref_stats/{{extractor}}-train{REF_STATS_SUFFIX}.tsv"
    conda:
        ENV
    shell:
        "ddpm claim-gpus {resources.gpu} -- ddpm evaluate ref-stats --data {params.data:q} --split train"
        " {params.extractor} {params.first} --out {output.stats:q} --device auto --threads {threads} > {log:q} 2>&1"
