rule evaluate:
    """Target accuracy / macro-F1, proxy accuracy after transfer (forgetting), % parameters updated."""
    input:
        checkpoint=evaluated_checkpoint,
        baseline_metrics=rules.evaluate_proxy.output.metrics,
    output:
        metrics=at("metrics"),
    log:
        logfile("evaluate", RUN),
    benchmark:
        benchfile("evaluate", RUN)
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
