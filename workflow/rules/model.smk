rule prepare_model:
    """Materialise the base model as a Hugging Face folder (offline conversion or hub download)."""
    output:
        model_dir=directory(at("model_dir")),
    log:
        logfile("prepare_model", "{model}", root=M),
    benchmark:
        benchfile("prepare_model", "{model}", root=M)
    conda:
        "../envs/ctsft.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        step="prepare_model",
        overrides=overrides_model,
    script:
        "../scripts/run_step.py"
