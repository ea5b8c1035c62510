# Targets, input and param functions of the mechanism rules (mechanism.smk, report.smk):
# the variants that train the circuit heads, their files, the mechanism job's overrides.
from ctsft.layout import FIGURE_MECHANISM, TABLE_MECHANISM
from ctsft.workflow_config import override_value, variant_method_config


def trains_circuit_heads(spec):
    """Whether a method variant trains the circuit heads themselves: its method YAML (with the
    variant's method.* overrides) has kind `heads` and `heads: circuit`, i.e. CT-SFT and its
    relatives, not NearZero or random heads. Decided by kind, as nothing in the workflow names a
    method."""
    overrides = spec["overrides"]
    method = variant_method_config(override_value(overrides, "method"), overrides)
    return method.get("kind") == "heads" and method.get("heads", "circuit") == "circuit"


MECHANISM_VARIANTS = [
    variant
    for variant, (name, k) in VARIANTS.items()
    if k is not None
    and METHODS[name].get("transfer", True)
    and trains_circuit_heads(METHODS[name])
]


def mechanism_files(artifact):
    """`artifact` (mechanism, mechanism_scores) of every pair, CT-SFT variant and seed."""
    return [
        at(
            artifact,
            task=task,
            model=MODEL,
            proxy=proxy,
            target=target,
            variant=variant,
            seed=seed,
        )
        for task, proxy, target in pairs()
        for variant in MECHANISM_VARIANTS
        for seed in SEEDS
    ]


def mechanism_table_files():
    return [at("table", table=TABLE_MECHANISM, format=f) for f in TABLE_FORMATS]


def mechanism_report_files():
    """The mechanism table (every format) and figure, for `all`; none without a CT-SFT variant
    or with `report: {mechanism: false}`."""
    if not MECHANISM_VARIANTS or not config.get("report", {}).get("mechanism", True):
        return []
    return mechanism_table_files() + [at("figure", figure=FIGURE_MECHANISM)]


def mechanism_circuit(wildcards):
    """The circuit of the variant's k."""
    _, k = split_variant(wildcards.variant)
    return at("circuit", **{**wildcards, "k": k})


def overrides_mechanism(wildcards):
    """The pair's coordinates; the discovery seed is the proxy's (cdt.seed, before the step's
    hydra_overrides, which may change it), the record's seed the transfer's."""
    name, k = split_variant(wildcards.variant)
    ov = [f"cdt.seed={PROXY_SEED}"] + _common(wildcards, "mechanism", "mechanism")
    return ov + [
        f"proxy={wildcards.proxy}",
        f"target={wildcards.target}",
        f"seed={wildcards.seed}",
        f"grid.variant={name}",
        f"grid.k='{k}'",
        f"cdt.k={k}",
    ]
