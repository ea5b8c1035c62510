rule transfer:
    """Phase 2 on the target language: full_ft, CT-SFT (circuit heads + norms), NearZero, random heads, LoRA."""
    input:
        unpack(transfer_inputs),
    output:
        checkpoint=directory(at("checkpoint")),
    log:
        logfile("transfer", RUN),
    benchmark:
        benchfile("transfer", RUN)
    wildcard_constraints:
        variant=_alternatives(KEPT_VARIANTS) or "(?!)",
    conda:
        "../envs/ctsft.yaml"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        gpu=GPUS_PER_JOB,
        runtime=240,
    params:
        step="transfer",
        overrides=overrides_transfer,
    script:
        "../scripts/run_step.py"


use rule transfer as transfer_temp with:
    output:
        checkpoint=temp(directory(at("checkpoint"))),
    wildcard_constraints:
        variant=_alternatives(TEMP_VARIANTS) or "(?!)",
