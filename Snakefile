# ddpm-repro: dataset → training sweep → sharded sampling → FID / IS / bits/dim → report tables.
# Run: snakemake --cores all   (see README.md; config/README.md explains the config keys)
from snakemake.utils import min_version

min_version("9.0")


# The demo runs when no config is given. A config given with --configfile is the whole config (plus the schema's
# defaults): Snakemake would otherwise merge it over this file key by key, and the demo's values would reach it.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/reconstruction.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_outputs(),
    default_target: True


# Quick merges and MLflow bookkeeping run where Snakemake runs (on a cluster: the submit node), not as jobs.
localrules:
    all,
    mlflow_init,
    gather_samples,
    gather_snapshot_samples,
    gather_nll,
    gather_nll_train,
