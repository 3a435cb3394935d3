"""CLI subcommands, one module each (registered in doodl_ray.cli.COMMANDS)."""
