# Training: one RecBole run per (dataset, model, max_len, seed) -> one run record.


rule train:
    input:
        f"{DATA_DIR}/{{dataset}}/{{dataset}}.inter",
    output:
        "results/runs/{dataset}/{model}/L{max_len}/seed{seed}.json",
    log:
        "results/logs/train/{dataset}/{model}/L{max_len}/seed{seed}.log",
    params:
        data_dir=lambda wildcards, input: Path(input[0]).parent.parent,
        settings=lambda wildcards: plan.model_settings(config, wildcards.model),
        fast_eval="" if config["run"].get("fast_eval", True) else "--no-fast-eval",
        time_evals="--time-both-evals" if config["run"].get("time_both_evals", False) else "",
    threads: config["run"].get("threads", 1)
    resources:
        gpu=GPUS_PER_JOB,
    conda:
        "../../envs/blossom.yaml"
    shell:
        "python -m blossom.cli train --dataset {wildcards.dataset} --model {wildcards.model}"
        " --max-len {wildcards.max_len} --seed {wildcards.seed} --settings {params.settings:q}"
        " --data-dir {params.data_dir} --threads {threads} {params.fast_eval} {params.time_evals} --out {output} 2>&1 | tee {log}"
