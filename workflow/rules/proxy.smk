rule finetune:
    """Competence tuning: full fine-tuning of the base model on the proxy language (theta_1)."""
    input:
        model_dir=rules.prepare_model.output.model_dir,
    output:
        checkpoint=directory(at("proxy_checkpoint")),
    log:
        logfile("finetune", PROXY),
    benchmark:
        benchfile("finetune", PROXY)
    conda:
        "../envs/ctsft.yaml"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        gpu=GPUS_PER_JOB,
        runtime=240,
    params:
        step="finetune",
        overrides=overrides_finetune,
    script:
        "../scripts/run_step.py"


rule evaluate_proxy:
    """theta_1 on the proxy test set: the 'before' of the forgetting measure."""
    input:
        checkpoint=rules.finetune.output.checkpoint,
    output:
        metrics=at("proxy_metrics"),
    log:
        logfile("evaluate_proxy", PROXY),
    benchmark:
        benchfile("evaluate_proxy", PROXY)
    conda:
        "../envs/ctsft.yaml"
    threads: config["threads"]
    resources:
        mem_mb=6000,
        gpu=GPUS_PER_JOB,
        runtime=60,
    params:
        step="evaluate",
        overrides=overrides_proxy_eval,
    script:
        "../scripts/run_step.py"
