# Reports: tables (md + csv + tex), plots (png + svg), comparison with paper_tables/, index.

PLOT_EXPERIMENT = {"memory": "efficiency", "time": "efficiency", "accuracy": "main"}


rule table:
    input:
        lambda wildcards: plan.records(config, TABLE_EXPERIMENTS[wildcards.table]),
    output:
        md="results/tables/{table}.md",
        csv="results/tables/{table}.csv",
        tex="results/tables/{table}.tex",
    log:
        "results/logs/report/{table}.log",
    wildcard_constraints:
        table="accuracy|efficiency|ablation",
    params:
        baseline=config["report"]["baseline"],
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m blossom.cli report table {wildcards.table} --runs {input} --baseline {params.baseline}"
        " --reference BlossomRec --out {output.md} > {log} 2>&1"


rule plot:
    input:
        lambda wildcards: plan.records(config, PLOT_EXPERIMENT[wildcards.plot]),
    output:
        png="results/plots/{plot}_vs_length.png",
        svg="results/plots/{plot}_vs_length.svg",
    log:
        "results/logs/report/{plot}_plot.log",
    wildcard_constraints:
        plot="memory|time|accuracy",
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m blossom.cli report plot {wildcards.plot} --runs {input} --out {output.png} > {log} 2>&1"


rule comparison:
    input:
        runs=lambda wildcards: sorted(set(plan.records(config, "main") + plan.records(config, "efficiency"))),
        paper=config["report"]["paper"],
    output:
        md="results/tables/comparison.md",
        csv="results/tables/comparison.csv",
    log:
        "results/logs/report/comparison.log",
    params:
        tolerance=config["report"]["tolerance"],
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m blossom.cli report compare --runs {input.runs} --paper {input.paper}"
        " --tolerance {params.tolerance} --out {output.md} > {log} 2>&1"


rule index:
    input:
        tables=expand("results/tables/{table}.md", table=TABLES + ["comparison", "datasets"])
        + [rules.bench_targets.output.md],
        plots=expand("results/plots/{plot}_vs_length.png", plot=PLOTS),
        bench=rules.bench_attention.output.csv,
        runs=lambda wildcards: plan.records(config, "main"),
    output:
        "results/index.md",
    log:
        "results/logs/report/index.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m blossom.cli report index --out {output} --tables {input.tables} --plots {input.plots} --bench {input.bench}"
        " --runs {input.runs} > {log} 2>&1"
