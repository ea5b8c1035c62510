rule mean_baseline:
    """Label-balanced mean of every head's output on the proxy discovery set (mu)."""
    input:
        proxy_checkpoint=rules.finetune.output.checkpoint,
    output:
        mu=at("mu"),
    log:
        logfile("mean_baseline", PROXY),
    benchmark:
        benchfile("mean_baseline", PROXY)
    conda:
        "../envs/ctsft.yaml"
    threads: config["threads"]
    resources:
        mem_mb=6000,
        gpu=GPUS_PER_JOB,
        runtime=60,
    params:
        step="mean_baseline",
        overrides=overrides_mean_baseline,
    script:
        "../scripts/run_step.py"


rule score_heads:
    """CD-T decomposition from every head to the logits; signed gold-label relevance per head."""
    input:
        proxy_checkpoint=rules.finetune.output.checkpoint,
        mu=rules.mean_baseline.output.mu,
    output:
        scores=at("scores"),
        heatmap=report(
            at("heatmap"),
            caption="../report/heatmap.rst",
            category="Head scores",
            subcategory="{task} {proxy}",
            labels={"task": "{task}", "model": "{model}", "proxy": "{proxy}"},
        ),
    log:
        logfile("score_heads", PROXY),
    benchmark:
        benchfile("score_heads", PROXY)
    conda:
        "../envs/ctsft.yaml"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        gpu=GPUS_PER_JOB,
        runtime=240,
    params:
        step="score_heads",
        overrides=overrides_score_heads,
    script:
        "../scripts/run_step.py"


rule select_circuit:
    """Top-k heads by score (the circuit), the k smallest |score| (NearZero) and a random set."""
    input:
        scores=rules.score_heads.output.scores,
    output:
        circuit=at("circuit"),
    log:
        logfile("select_circuit", CIRCUIT_JOB),
    benchmark:
        benchfile("select_circuit", CIRCUIT_JOB)
    conda:
        "../envs/ctsft.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        step="select_circuit",
        overrides=overrides_select_circuit,
    script:
        "../scripts/run_step.py"


rule faithfulness:
    """How much of the proxy model's behaviour the circuit carries, against random head sets."""
    input:
        proxy_checkpoint=rules.finetune.output.checkpoint,
        mu=rules.mean_baseline.output.mu,
        circuit=rules.select_circuit.output.circuit,
        scores=rules.score_heads.output.scores,
    output:
        faithfulness=at("faithfulness"),
    log:
        logfile("faithfulness", CIRCUIT_JOB),
    benchmark:
        benchfile("faithfulness", CIRCUIT_JOB)
    conda:
        "../envs/ctsft.yaml"
    threads: config["threads"]
    resources:
        mem_mb=6000,
        gpu=GPUS_PER_JOB,
        runtime=120,
    params:
        step="faithfulness",
        overrides=overrides_faithfulness,
    script:
        "../scripts/run_step.py"
