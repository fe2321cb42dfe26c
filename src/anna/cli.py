"""The `anna` command line. Every stage reads and writes a run directory; see DESIGN.md for the contracts."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from anna.errors import AnnaError


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    import diffusers
    import transformers

    transformers.logging.set_verbosity_error()
    diffusers.logging.set_verbosity_error()


def _settings(model, steps, guidance, height, width):
    from dataclasses import replace

    base = model.defaults
    return replace(
        base,
        **{k: v for k, v in dict(steps=steps, guidance=guidance, height=height, width=width).items() if v is not None},
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="anna")
def cli() -> None:
    """anna: compress a diffusion model (or any PyTorch model) to a size budget with the least loss of quality.

    Models (--model): tiny-sdxl (built in, offline), sdxl (meta device, sizes only), a Hugging Face hub id such as
    stabilityai/sdxl-turbo, or a local diffusers folder.
    """


@cli.command()
@click.option("--model", "-m", "model_spec", required=True, help="tiny-sdxl, sdxl, a hub id or a local diffusers dir.")
@click.option("--component", "-c", default=None, help="unet (default), text_encoder, text_encoder_2 or vae_decoder.")
@click.option("--include", multiple=True, help="Glob of unit names to keep (repeatable).")
@click.option("--exclude", multiple=True, help="Glob of unit names to drop (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect(model_spec: str, component: str | None, include: tuple[str, ...], exclude: tuple[str, ...], as_json: bool):
    """List the units of a component: kind, parameters, FP16 bytes and bytes under every option, with totals."""
    from anna.adapters import load_model
    from anna.artifacts import FORMAT_VERSION
    from anna.inventory import build_inventory
    from anna.options import option_names

    inv = build_inventory(load_model(model_spec), component, include, exclude)
    if as_json:
        click.echo(json.dumps({"format_version": FORMAT_VERSION, **inv.to_json()}, indent=1))
        return
    opts = option_names()
    width = max([len(u.name) for u in inv.units] + [10])
    header = f"{'unit':<{width}}  {'kind':<9} {'params':>12} " + " ".join(f"{o:>16}" for o in opts)
    click.echo(header)
    click.echo("-" * len(header))
    for u in inv.units:
        click.echo(f"{u.name:<{width}}  {u.kind:<9} {u.params:>12,} " + " ".join(f"{u.bytes[o]:>16,}" for o in opts))
    click.echo("-" * len(header))
    sums = {o: inv.base_bytes + sum(u.bytes[o] for u in inv.units) for o in opts}
    click.echo(
        f"{'total (all units in option)':<{width}}  {'':<9} {inv.total_params:>12,} "
        + " ".join(f"{sums[o]:>16,}" for o in opts)
    )
    click.echo(
        f"{'size ratio':<{width}}  {'':<9} {'':>12} "
        + " ".join(f"{sums[o] / inv.total_bytes_fp16:>16.4f}" for o in opts)
    )
    kinds = {k: sum(1 for u in inv.units if u.kind == k) for k in ("conv", "attention", "linear")}
    click.echo(
        f"{inv.model} / {inv.component}: {len(inv.units)} units ({', '.join(f'{v} {k}' for k, v in kinds.items())}); "
        f"{inv.total_params:,} parameters; {inv.total_bytes_fp16:,} bytes in FP16 "
        f"({inv.base_bytes:,} outside units)"
    )


@cli.command()
@click.option("--model", "-m", "model_spec", required=True, help="tiny-sdxl, a hub id or a local diffusers folder.")
@click.option("--prompts", required=True, help="Text file, TSV with a caption column (FILE.tsv:A-B) or hf:DATASET[:N].")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Folder for the PNGs.")
@click.option("--checkpoint", default=None, help="A quantized checkpoint to generate with.")
@click.option("--steps", type=int, default=None, help="Sampling steps (model default when omitted).")
@click.option("--guidance", type=float, default=None, help="Classifier-free guidance scale.")
@click.option("--height", type=int, default=None)
@click.option("--width", type=int, default=None)
@click.option("--seed", type=int, default=0, show_default=True, help="Prompt i uses seed + i.")
def generate(model_spec, prompts, out, checkpoint, steps, guidance, height, width, seed):
    """Generate one PNG per prompt. The same seed gives byte-identical files."""
    from anna.adapters import load_model
    from anna.generate import generate_to_dir
    from anna.prompts import load_prompts

    texts = load_prompts(prompts)
    model = load_model(model_spec)
    model.require_weights("generate")
    if checkpoint:
        from anna.export.checkpoint import load_checkpoint_into

        load_checkpoint_into(model, checkpoint)
    paths = generate_to_dir(model, texts, out, _settings(model, steps, guidance, height, width), seed)
    click.echo(f"wrote {len(paths)} images to {Path(out)}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: AnnaError becomes one line on stderr and exit code 2."""
    _quiet_libraries()
    try:
        cli.main(args=argv, standalone_mode=False)
    except AnnaError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
