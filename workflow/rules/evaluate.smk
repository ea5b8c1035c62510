rule evaluate_as_is:
    """A variant without transfer (zero-shot): theta_1 itself on the target and proxy test rows."""
    input:
        checkpoint=proxy_checkpoint,
        baseline_metrics=rules.evaluate_proxy.output.metrics,
    output:
        metrics=at("metrics"),
    log:
        logfile("evaluate_as_is", RUN),
    benchmark:
        benchfile("evaluate_as_is", RUN)
    wildcard_constraints:
        variant=_alternatives(AS_IS_VARIANTS) or "(?!)",
    conda:
        "../envs/ctsft.yaml"
    threads: config["threads"]
    resources:
        mem_mb=6000,
        gpu=GPUS_PER_JOB,
        runtime=60,
    params:
        step="evaluate",
        overrides=overrides_evaluate,
    script:
        "../scripts/run_step.py"


# One job per pair and seed scores every transferred variant (target accuracy / macro-F1, proxy
# accuracy after transfer: forgetting, % parameters updated), one metrics.json each, in one process:
# the start-up, theta_1 and the tokenizer are paid once, not once per method. Changing one
# variant's settings re-evaluates the others of its pair and seed too (seconds each).
if TRANSFER_VARIANTS:

    rule evaluate:
        """Every transferred method of one pair and seed: one metrics.json per variant."""
        input:
            checkpoints=seed_checkpoints,
            baseline_metrics=rules.evaluate_proxy.output.metrics,
        output:
            metrics=seed_metrics(),
        log:
            logfile("evaluate", SEED),
        benchmark:
            benchfile("evaluate", SEED)
        conda:
            "../envs/ctsft.yaml"
        threads: config["threads"]
        resources:
            mem_mb=6000,
            gpu=GPUS_PER_JOB,
            runtime=60,
        params:
            step="evaluate",
            overrides=[],
            runs=evaluation_runs,
        script:
            "../scripts/run_step.py"
