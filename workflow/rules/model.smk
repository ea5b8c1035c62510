rule prepare_model:
    """Materialise the base model as a Hugging Face folder (offline conversion or hub download)."""
    output:
        model_dir=directory(models("{model}")),
    log:
        models("logs/prepare_model/{model}.log"),
    benchmark:
        models("benchmarks/prepare_model/{model}.tsv")
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
