rule tables:
    """Table 1 (NusaX), Table 2 (XNLI), Table 3 (forgetting): mean +- std over seeds; CSV, Markdown, LaTeX."""
    input:
        metrics=metrics_files(),
    output:
        tables=[
            report(
                path,
                caption="../report/tables.rst",
                category="Tables",
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
    script:
        "../scripts/tables.py"


rule figures:
    """Accuracy vs. % parameters updated, forgetting bars, editing-vs-preserving trade-off."""
    input:
        metrics=metrics_files(),
    output:
        accuracy_vs_params=report(
            results("figures/accuracy_vs_params.png"),
            caption="../report/accuracy_vs_params.rst",
            category="Figures",
            labels={"figure": "accuracy vs. parameters updated"},
        ),
        forgetting=report(
            results("figures/forgetting.png"),
            caption="../report/forgetting.rst",
            category="Figures",
            labels={"figure": "forgetting"},
        ),
        tradeoff=report(
            results("figures/tradeoff.png"),
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
    script:
        "../scripts/figures.py"
