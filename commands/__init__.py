"""The ``cvdvae`` command: one typer app over every package's verbs (``commands.app``), and the
demo that runs the whole pipeline (``commands.demo``). The top layer: it imports the others,
none imports it."""
