"""The names that a config, a checkpoint and the command line share, each defined once (torch-free).

The modules that implement them import them from here (``ddpm.diffusion``, ``ddpm.timestep_samplers``, ``ddpm.metrics``,
``ddpm.train``); the command line offers them as choices; ``tests/test_vocabulary.py`` checks that the workflow's
JSON schema (``workflow/schemas/config.schema.yaml``) lists exactly these. Names that live with a table of their own
are not repeated here: the noise schedules (``ddpm.schedules.SCHEDULES``), the network presets
(``ddpm.presets.PRESETS``) and the datasets (``ddpm.datasets.DATASETS``, with their native image sizes).
"""

#: What the network predicts (the rows of DDPM Table 2): ε (Eq. 11), x₀, or the posterior mean μ̃ ("xprev").
MEAN_TYPES = ("eps", "xstart", "xprev")
#: Reverse-process variance: σ² = β_t ("fixedlarge"), σ² = β̃_t ("fixedsmall", Eq. 7), a learned diagonal
#: log-variance ("learned", Table 2), or IDDPM's interpolation between log β_t and log β̃_t (IDDPM Eq. 15).
VAR_TYPES = ("fixedlarge", "fixedsmall", "learned", "learned_range")
#: L_simple (Eq. 14), the true variational bound L (Eq. 5), or IDDPM's L_hybrid = L_simple + λ L_vlb (Eq. 16).
LOSS_TYPES = ("mse", "kl", "hybrid")
#: How training draws t: uniformly (Algorithm 1), or by importance sampling on the loss's second moment (IDDPM
#: Eq. 18). Unset: importance sampling for ``kl``, uniform otherwise (``ddpm.timestep_samplers.default_timestep_sampler``).
TIMESTEP_SAMPLERS = ("uniform", "loss-second-moment")
#: A NaN / Inf loss: fail the job, or record the divergence in checkpoint.pt so that the sweep goes on.
ON_DIVERGENCE = ("fail", "record")
#: The feature extractor of FID / IS / KID / precision-recall: torch-fidelity's Inception (its TF-compatible port of
#: the 2015-12-05 weights), or the small classifier trained on the data set's train split.
EXTRACTORS = ("inception-v3-compat", "classifier")
#: The decoder likelihood p_θ(x_0 | x_1) of L_0 (Eq. 13): ``exact``, this project's (the exact normal CDF; the middle
#: bins floored at 1e-12, the edge bins' tails exact), or ``official``, the papers' code's (diffusion_tf, as
#: improved-diffusion: the tanh approximation of the CDF, every bin floored at 1e-12), for parity with published NLLs.
DECODERS = ("exact", "official")
#: ``scale``: the config as written, or the same sweep on digits at CPU size (``ddpm.settings.TINY_SCALE``).
SCALES = ("full", "tiny")
#: The sampler families and their skips are not listed here: each family declares itself (``ddpm.samplers.registry``).
#: The variance of an ancestral sampler: the model's own, or an override at sampling time: σ² = β of the (respaced)
#: process (``fixedlarge``; DDIM Table 1's σ̂ row on a subsequence) or σ² = β̃ (``fixedsmall``, Eq. 7).
SAMPLE_VARIANCES = ("model", "fixedlarge", "fixedsmall")
#: What a set of samples cost, as the sample files, their scores and MLflow name it: network evaluations per image and
#: images per second of sampling.
SAMPLING_COST = ("network_evaluations", "sampling_images_per_s")
#: DDIM Table 2's error, as a reconstruction file (``ddpm evaluate reconstruction``), MLflow (logged at step S),
#: ``config/published.csv`` and the report name it: the per-dimension MSE on [0, 1] of test images encoded and
#: decoded on S steps (its standard error: ``reconstruction_mse_stderr``).
RECONSTRUCTION_METRIC = "reconstruction_mse"
#: Where a result records the γ of KID's kernel (``ddpm.metrics.kid_kernel_gamma``); KID on another extractor than
#: Inception scored before γ was chosen so (no such key) is not shown (:mod:`ddpm.report.tables`).
KID_GAMMA = "kid_kernel_gamma"
#: What a set of samples was drawn with, as the sample files and their scores name it: the model's weights (``ema``, or
#: ``raw``: the training weights without averaging), the seed and the per-sample noise's scheme (``ddpm.noise.SCHEME``).
SAMPLE_RECORD = ("model_weights", "sample_seed", "sample_noise")
#: Where published weights come from (``ddpm import``, config ``pretrained.format``): a diffusers model folder (the
#: conversions of DDPM's releases, ``google/ddpm-*``), pytorch-ddpm's ``ckpt.pt`` (its ``net_model`` / ``ema_model``),
#: pesser/pytorch_diffusion's conversions of DDPM's TF checkpoints, ermongroup/ddim's ``ckpt.pth``, or
#: openai/improved-diffusion's released ``.pt`` files (:mod:`ddpm.pretrained`).
IMPORT_FORMATS = ("diffusers", "pytorch-ddpm", "pytorch-diffusion", "ddim", "improved-diffusion")
#: What a Hugging Face model id looks like (``owner/name``): a source that is no local path and matches it is fetched
#: with huggingface_hub (``re.fullmatch``).
HUB_MODEL_ID = r"[\w.-]+/[\w.-]+"
#: Rounds of the bootstrap behind FID's, IS's and KID's standard errors (``ddpm.metrics.bootstrap_errors``): the
#: command line's default; the schema's ``evaluate.bootstrap_rounds`` repeats it (tests/test_vocabulary.py).
BOOTSTRAP_ROUNDS = 50
