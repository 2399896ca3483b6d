"""The subcommands of `agentlab`, one module each (the application layer).

A command module has `HELP` (one line), `add_arguments(parser)` and `main(args) -> exit code`;
`agentlab.cli` builds the parser from the modules listed here, in this order.
"""

COMMANDS = {
    "run": "agentlab.commands.run",
    "list": "agentlab.commands.listing",
    "report": "agentlab.commands.report",
    "bench": "agentlab.commands.bench",
    "fewshot": "agentlab.commands.fewshot",
    "results": "agentlab.commands.results",
    "sweep": "agentlab.commands.sweep",
    "size": "agentlab.commands.size",
    "forget": "agentlab.commands.forget",
}
