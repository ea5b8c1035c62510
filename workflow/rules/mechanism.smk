# "Do mechanisms transfer?": every head scored again on the target language, by theta_1 and by
# the CT-SFT model, against the proxy's scores and circuit (ctsft.steps.mechanism). One job per
# pair, seed and variant that trains the circuit's own heads; none when no such variant exists.
include: "mechanism_common.smk"


rule mechanism:
    """theta_1 and the CT-SFT model score every head on the target language, against the proxy."""
    input:
        proxy_checkpoint=rules.finetune.output.checkpoint,
        mu=rules.mean_baseline.output.mu,
        scores=rules.score_heads.output.scores,
        circuit=mechanism_circuit,
        checkpoint=rules.transfer.output.checkpoint,
    output:
        mechanism=at("mechanism"),
        mechanism_scores=at("mechanism_scores"),
    log:
        logfile("mechanism", RUN),
    benchmark:
        benchfile("mechanism", RUN)
    wildcard_constraints:
        variant=_alternatives(MECHANISM_VARIANTS) or "(?!)",  # (?!): no CT-SFT variant, no job
        seed=_alternatives(SEEDS),
    conda:
        "../envs/ctsft.yaml"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        gpu=GPUS_PER_JOB,
        runtime=240,
    params:
        step="mechanism",
        overrides=overrides_mechanism,
    script:
        "../scripts/run_step.py"
