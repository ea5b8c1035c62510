# CT-SFT (circuit-targeted supervised fine-tuning) from raw data to the paper's tables.
#
#   snakemake --cores 8                                   # the paper grid (config/config.yaml)
#   snakemake --cores 2 --configfile config/quick.yaml    # the quick offline CPU run
#
# Rules live in workflow/rules/, their steps in src/ctsft/steps/ (one Hydra entry point each).
from snakemake.utils import min_version

from ctsft.workflow_config import validate_config

min_version("9.0")


configfile: "config/config.yaml"


validate_config(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/proxy.smk"
include: "workflow/rules/cdt.smk"
include: "workflow/rules/transfer.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/mechanism.smk"
include: "workflow/rules/report.smk"


wildcard_constraints:
    task=_alternatives(TASKS_RUN),
    model=_alternatives([MODEL]),
    proxy=_alternatives(p for _, p in proxies()),
    target=_alternatives(t for _, _, t in pairs()),
    variant=_alternatives(VARIANTS),
    seed=_alternatives(set(SEEDS) | {PROXY_SEED}),
    k=_alternatives(KS),


# Run on the submit host under a cluster executor: cheap steps, and prepare_model, which may
# download a hub model (compute nodes often have no internet).
localrules:
    all,
    prepare_model,
    tables,
    figures,
    mechanism_report,


rule all:
    default_target: True
    input:
        all_targets() + mechanism_report_files(),
