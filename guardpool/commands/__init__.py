"""One module per ``guardpool`` subcommand; see ``guardpool.cli``."""
