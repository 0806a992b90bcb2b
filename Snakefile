# blossom: BlossomRec reproducibility workflow. Rules only wire; all logic is in the `blossom` package.
#   snakemake --cores all                                   # default profile (ml-100k, CPU)
#   snakemake --cores all --configfile workflow/config/paper.yaml
from snakemake.utils import min_version

min_version("9.0")


configfile: "workflow/config/default.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "results/index.md",
    default_target: True
