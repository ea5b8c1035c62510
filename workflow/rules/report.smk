rule tables:
    """Table 1 (NusaX), Table 2 (XNLI), Table 3 (forgetting), and the comparisons, summary and
    claims tables of the config's compare and claims; CSV, Markdown, LaTeX."""
    input:
        metrics=metrics_files(),
    output:
        tables=[
            report(
                path,
                caption=table_caption(path),
                category=table_category(path),
                labels={"table": Path(path).stem, "format": Path(path).suffix[1:]},
            )
            for path in table_files()
        ],
    log:
        logfile("tables", "tables"),
    benchmark:
        benchfile("tables", "tables")
    conda:
        "../envs/ctsft.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        tasks=TASKS_RUN,
        compare=config["compare"],
        claims=config["claims"],
    script:
        "../scripts/tables.py"


rule figures:
    """Accuracy vs. % parameters updated, forgetting bars, editing-vs-preserving trade-off."""
    input:
        metrics=metrics_files(),
    output:
        accuracy_vs_params=report(
            at("figure", figure="accuracy_vs_params"),
            caption="../report/accuracy_vs_params.rst",
            category="Figures",
            labels={"figure": "accuracy vs. parameters updated"},
        ),
        forgetting=report(
            at("figure", figure="forgetting"),
            caption="../report/forgetting.rst",
            category="Figures",
            labels={"figure": "forgetting"},
        ),
        tradeoff=report(
            at("figure", figure="tradeoff"),
            caption="../report/tradeoff.rst",
            category="Figures",
            labels={"figure": "editing vs. preserving"},
        ),
    log:
        logfile("figures", "figures"),
    benchmark:
        benchfile("figures", "figures")
    conda:
        "../envs/ctsft.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        claims=config["claims"],
    script:
        "../scripts/figures.py"


rule mechanism_report:
    """Do mechanisms transfer? The table and figure of every mechanism record (CT-SFT variants)."""
    input:
        records=mechanism_files("mechanism"),
        scores=mechanism_files("mechanism_scores"),
    output:
        tables=[
            report(
                path,
                caption="../report/mechanism_transfer.rst",
                category="Mechanism transfer",
                labels={"table": Path(path).stem, "format": Path(path).suffix[1:]},
            )
            for path in mechanism_table_files()
        ],
        figure=report(
            at("figure", figure=FIGURE_MECHANISM),
            caption="../report/mechanism_transfer.rst",
            category="Mechanism transfer",
            labels={"figure": "proxy vs target head scores"},
        ),
    log:
        logfile("mechanism_report", "mechanism_report"),
    benchmark:
        benchfile("mechanism_report", "mechanism_report")
    conda:
        "../envs/ctsft.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    script:
        "../scripts/mechanism_report.py"
