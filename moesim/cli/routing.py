"""``moesim routing``: expert-load statistics for T tokens, top-k of E experts on EP GPUs."""

from __future__ import annotations

import typer

ORDER = 40
MAX_TOKEN_VALUES = 1000
MAX_ROUTED_TOKENS = float(1 << 32)
MAX_EXPERTS = 1 << 12  # 10x the most experts of any MoE built (384)
MAX_MC_SAMPLES = 1_000_000
MAX_MC_DRAWS = 2e7  # samples x tokens: a few seconds of sampling


def _model_experts(name: str) -> tuple[int, int]:
    from moesim.errors import MoesimError

    try:
        from moesim.spec.model import load_model
    except ImportError:
        raise MoesimError(
            "--model needs moesim.spec.model, which is not available; pass --experts and --top-k"
        ) from None
    spec = load_model(name)
    E, k = int(getattr(spec, "num_experts", 1)), int(getattr(spec, "top_k", 1))
    if E <= 1:
        raise MoesimError(
            f"model {name!r} is dense (no routed experts); routing statistics need an MoE model"
        )
    return E, k


def register(app: typer.Typer) -> None:
    @app.command("routing")
    def routing_cmd(
        tokens: str = typer.Option(
            ..., "--tokens", "-t", help="Tokens T in the batch; a comma list for several."
        ),
        experts: int = typer.Option(
            None, "--experts", "-e", help="Routed experts E per MoE layer."
        ),
        top_k: int = typer.Option(None, "--top-k", "-k", help="Experts per token (k distinct)."),
        ep: int = typer.Option(1, "--ep", help="Expert-parallel GPUs G (E + R must divide by G)."),
        routing: str = typer.Option(
            "uniform", "--routing", help="uniform | zipf:S | dirichlet:A | hist:PATH"
        ),
        block_m: int = typer.Option(
            None, "--block-m", help="Grouped-GEMM tile rows; pads each expert's rows."
        ),
        capacity_factor: float = typer.Option(
            None, "--capacity-factor", help="Switch-style capacity C; overflow is dropped."
        ),
        redundant_experts: int = typer.Option(
            0, "--redundant-experts", help="Extra EPLB replica slots R."
        ),
        model: str = typer.Option(None, "--model", help="Take E and k from a model preset."),
        monte_carlo: int = typer.Option(
            0, "--monte-carlo", help="Also run N Monte-Carlo samples and report % errors."
        ),
        chart: str = typer.Option(
            None, "--chart", help="Write the expert-load chart to PATH_STEM.{html,svg,png}."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Expected active experts, EP straggler load, padding, drops and dispatch fan-out."""
        import numpy as np

        from moesim.cli._common import console, fmt, print_json
        from moesim.cost.routing import monte_carlo_stats, parse_routing, routing_stats
        from moesim.cost.routing.stats import STAT_NAMES
        from moesim.errors import MoesimError
        from moesim.spec.limits import (
            MAX_BLOCK_M,
            MAX_CAPACITY_FACTOR,
            MAX_PARALLEL,
            MAX_REDUNDANT_EXPERTS,
            check_int,
            check_real,
        )

        try:
            token_list = [float(t) for t in tokens.split(",") if t.strip()]
        except ValueError:
            raise MoesimError(
                f"--tokens takes numbers separated by commas, got {tokens!r}"
            ) from None
        if not token_list:
            raise MoesimError("--tokens needs at least one value")
        if len(token_list) > MAX_TOKEN_VALUES:
            raise MoesimError(f"--tokens takes at most {MAX_TOKEN_VALUES} values")
        for t in token_list:
            check_real("--tokens", t, 0, MAX_ROUTED_TOKENS)
        for name, value, hi in (
            ("--experts", experts, MAX_EXPERTS),
            ("--top-k", top_k, MAX_EXPERTS),
            ("--ep", ep, MAX_PARALLEL),
            ("--block-m", block_m, MAX_BLOCK_M),
        ):
            if value is not None:
                check_int(name, value, 1, hi)
        check_int("--redundant-experts", redundant_experts, 0, MAX_REDUNDANT_EXPERTS)
        check_int("--monte-carlo", monte_carlo, 0, MAX_MC_SAMPLES)
        if capacity_factor is not None:
            check_real("--capacity-factor", capacity_factor, 0, MAX_CAPACITY_FACTOR, lo_open=True)
        if monte_carlo and monte_carlo * max(token_list) > MAX_MC_DRAWS:
            raise MoesimError(
                f"--monte-carlo {monte_carlo} x {max(token_list):g} tokens is more than "
                f"{MAX_MC_DRAWS:.0e} routing draws; use fewer samples or tokens"
            )
        if chart:
            from moesim.outdir import check_out_file

            check_out_file(chart + ".html", what="--chart")
        if model:
            E_m, k_m = _model_experts(model)
            experts = experts or E_m
            top_k = top_k or k_m
        if experts is None or top_k is None:
            raise MoesimError("give --experts and --top-k (or --model)")
        dist = parse_routing(routing, experts)
        stats = routing_stats(
            np.array(token_list),
            top_k,
            experts,
            ep,
            dist,
            block_m,
            capacity_factor,
            redundant_experts,
        )
        inputs = {
            "experts": experts,
            "top_k": top_k,
            "ep": ep,
            "routing": dist.name,
            "block_m": block_m,
            "capacity_factor": capacity_factor,
            "redundant_experts": redundant_experts,
        }
        rows = []
        for i, T in enumerate(token_list):
            row = {"tokens": T, **inputs, **{n: float(getattr(stats, n)[i]) for n in STAT_NAMES}}
            # padded / routed rows - 1 is an overhead ratio, not a share: named for what it is
            row["padding_overhead"] = row["padding_waste"]
            if monte_carlo:
                if redundant_experts:
                    raise MoesimError(
                        "--monte-carlo with --redundant-experts is not supported; drop one"
                    )
                mc = monte_carlo_stats(
                    int(T), top_k, experts, ep, dist, block_m, capacity_factor, samples=monte_carlo
                )
                row["mc"] = {n: float(getattr(mc, n)) for n in STAT_NAMES}
                row["error_pct"] = {
                    n: (100 * (row[n] - row["mc"][n]) / row["mc"][n] if row["mc"][n] else None)
                    for n in STAT_NAMES
                }
            rows.append(row)
        if chart:
            from moesim.plots import save_chart
            from moesim.plots.routing import expert_load_chart

            written = save_chart(
                expert_load_chart(None, int(token_list[-1]), top_k, experts, ep, dist), chart
            )
            if not as_json:
                console.print("chart: " + ", ".join(map(str, written)))
        if as_json:
            print_json(rows[0] if len(rows) == 1 else rows)
            return
        from rich.table import Table

        table = Table(
            title=f"routing {dist.name}: top-{top_k} of {experts} experts, EP={ep}",
            title_justify="left",
        )
        table.add_column("statistic", style="cyan")
        for row in rows:
            table.add_column(f"T={fmt(row['tokens'])}", justify="right")
        for n in (n if n != "padding_waste" else "padding_overhead" for n in STAT_NAMES):
            cells = []
            for row in rows:
                cell = fmt(row[n])
                if monte_carlo and row["error_pct"].get(n) is not None:
                    cell += f" ({row['error_pct'][n]:+.1f}%)"
                cells.append(cell)
            table.add_row(n, *cells)
        console.print(table)
        console.print(
            "padding_overhead = padded / routed rows - 1 (JSON also keeps it as padding_waste)",
            highlight=False,
        )
        if monte_carlo:
            console.print(f"(in brackets: % error vs {monte_carlo} Monte-Carlo samples)")
