# Datasets: fetch (or copy from the mirror), verify, convert to RecBole atomic files; stats table.


rule prepare_dataset:
    output:
        inter=f"{DATA_DIR}/{{dataset}}/{{dataset}}.inter",
        stats=f"{DATA_DIR}/{{dataset}}/{{dataset}}.stats.json",
    log:
        "results/logs/data/{dataset}.log",
    params:
        data_dir=lambda wildcards, output: Path(output.inter).parent.parent,
        mirror=f"--mirror {MIRROR}" if MIRROR else "",
    conda:
        "../../envs/blossom.yaml"
    shell:
        "python -m blossom.cli data prepare {wildcards.dataset} --data-dir {params.data_dir} {params.mirror} 2>&1 | tee {log}"


rule dataset_table:
    input:
        [f"{DATA_DIR}/{d}/{d}.stats.json" for d in plan.datasets(config)],
    output:
        md="results/tables/datasets.md",
        csv="results/tables/datasets.csv",
    log:
        "results/logs/report/datasets.log",
    params:
        data_dir=lambda wildcards: DATA_DIR,
        # missing datasets are listed too: the table marks them "missing (not prepared)"
        datasets=" ".join(plan.configured_datasets(config)),
        paper=PAPER_STATS,
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m blossom.cli data stats --data-dir {params.data_dir} --datasets {params.datasets} --paper {params.paper}"
        " --out {output.md} > {log} 2>&1"
