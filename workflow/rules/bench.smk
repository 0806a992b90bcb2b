# Attention microbenchmark: one layer per implementation across sequence lengths.

BENCH = config.get("bench", {})
BENCH_OUT = f"attention_{BENCH.get('tag', 'local')}"  # results/bench/<this>.csv and its targets


rule bench_attention:
    output:
        csv=f"results/bench/{BENCH_OUT}.csv",
    log:
        f"results/logs/bench/{BENCH_OUT}.log",
    params:
        seq_lens=" ".join(map(str, BENCH.get("seq_lens", [200, 512, 1024, 2048, 4096, 8192]))),
        impls=" ".join(BENCH.get("impls", ["blossom_triton", "blossom_reference", "naive", "sdpa", "sdpa_flash", "flex"])),
        batch_size=BENCH.get("batch_size", 64),
        dtype=BENCH.get("dtype", "bf16"),
        repeats=BENCH.get("repeats", 20),
        modes=" ".join(BENCH.get("modes", ["eager"])),
        backward=BENCH.get("backward", "output_grad"),
    resources:
        gpu=GPUS_PER_JOB,
    conda:
        "../../envs/blossom.yaml"
    shell:
        "python -m blossom.cli bench attention --seq-lens {params.seq_lens} --impls {params.impls}"
        " --batch-size {params.batch_size} --dtype {params.dtype} --repeats {params.repeats}"
        " --modes {params.modes} --backward {params.backward}"
        " --out {output.csv} 2>&1 | tee {log}"


rule bench_targets:
    input:
        rules.bench_attention.output.csv,
    output:
        md=f"results/bench/{BENCH_OUT}_targets.md",
        tex=f"results/bench/{BENCH_OUT}_targets.tex",
        csv=f"results/bench/{BENCH_OUT}_targets.csv",
        ratios=f"results/bench/{BENCH_OUT}_targets_ratios.csv",
    log:
        f"results/logs/bench/{BENCH_OUT}_targets.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m blossom.cli bench targets --csv {input} --out {output.md} > {log} 2>&1"
